"""training/ood.py: the out-of-distribution sets, AUROC, and vae-evaluate's likelihood and
typicality section, on the tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import digit_array

from training import ood


def test_sets_are_28x28_unit_arrays_and_seeded() -> None:
    sets = ood.build_sets(12, seed=3)
    assert {"letters", "strokes", "noise", "photos"} <= set(sets)
    for name, made in sets.items():
        assert made.images.shape == (12, 28, 28) and made.images.dtype == np.float32, name
        assert made.images.min() >= 0.0 and made.images.max() <= 1.0, name
        assert made.images.max() > 0.3, f"{name}: nothing drawn"
        assert made.description
    again = ood.build_sets(12, seed=3)
    for name in sets:
        assert np.array_equal(sets[name].images, again[name].images), name
    assert not np.array_equal(sets["letters"].images, ood.build_sets(12, seed=4)["letters"].images)
    if ood.fashion_file() is None:
        assert "fashion" not in sets  # skipped, with a message; never required
    else:
        assert "Fashion-MNIST" in sets["fashion"].description


def test_photos_fall_back_to_textures_and_say_so(monkeypatch) -> None:
    monkeypatch.setattr(ood, "photo_files", lambda: [])
    made = ood.photos(5, np.random.default_rng(0))
    assert made.images.shape == (5, 28, 28) and "synthetic" in made.description
    assert made.notes and "not photos" in made.notes[0]


def test_letters_without_fonts_use_pillows_own(monkeypatch) -> None:
    monkeypatch.setattr(ood, "font_files", lambda: [])
    made = ood.letters(4, np.random.default_rng(0))
    assert made.images.max() > 0.3 and "fonts-dejavu-core" in made.notes[0]


def test_auroc() -> None:
    assert ood.auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert ood.auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert ood.auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    pairs = (a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean()
    assert ood.auroc(a, b) == pytest.approx(pairs)


def test_prepared_refuses_blanks_and_recentres() -> None:
    off_centre = np.zeros((28, 28), np.float32)
    off_centre[2:8, 2:6] = 1.0
    images, refused = ood.prepared(np.stack([off_centre, np.zeros((28, 28), np.float32)]))
    assert refused == 1 and images.shape == (1, 28, 28)
    rows, cols = np.nonzero(images[0] > 0.5)
    assert 10 <= rows.mean() <= 18 and 10 <= cols.mean() <= 18  # moved to the centre


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_evaluate_likelihood_section(model_dir: Path, tmp_path: Path, kind: str) -> None:
    """A folder without a reference gets one first (from the run's validation split); then
    the test digits and every set, raw and prepared, and the Markdown table."""
    folder = tmp_path / kind
    shutil.copytree(model_dir / kind, folder)
    test = np.stack([np.roll(digit_array(), s, 1) for s in range(-4, 5)])[:, None] / 255.0
    report = ood.evaluate_likelihood(
        folder, test.astype(np.float32), ood_count=6, log_px_k=8, log_px_images=5, progress=False
    )
    assert json.loads(json.dumps(report)) == report  # goes into evaluation.json as is
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["typicality"]["count"] == 500
    assert any("typicality added" in n for n in report["notes"])
    assert report["mnist_test"]["count"] == 9
    assert 0.0 <= report["mnist_test"]["raw"]["typical_share"] <= 1.0
    for name, entry in report["sets"].items():
        assert 0.0 <= entry["raw"]["auroc"] <= 1.0, name
        assert entry["prepared"]["count"] + entry["prepared"]["refused"] == 6
    if kind == "vae":
        lp = report["log_px"]
        assert lp["k"] == 8 and lp["images"] == 5 and lp["of"] == 9
        assert lp["mean_log_px"] >= lp["mean_elbo"] - 5 * lp["sem_log_px"] - 1.0
        assert "log p(x)" in report["table"]
    else:
        assert "log_px" not in report
    table = report["table"].splitlines()
    assert any(line.startswith("| MNIST test digits") for line in table)
    assert sum(line.startswith("| ") for line in table) == len(report["sets"]) + 2
