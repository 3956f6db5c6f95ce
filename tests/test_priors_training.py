"""Fitted priors, the training side: the mixture fit (training/prior.py), `vae-prior` on an
exported folder, vae-evaluate's prior figures, and the prior's density as a /score signal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from service.inference import scoring
from service.inference.format import Typicality, read_metadata
from service.inference.prior import load_prior
from training.prior import choose_mixture, fit_prior

BIN = Path(sys.executable).parent
CENTRES = np.array([[-6.0, 0.0], [6.0, 0.0], [0.0, 6.0], [0.0, -6.0]])


def clusters(n_each: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four tight 2-D clusters, one per label, `n_each[label]` points each."""
    rng = np.random.default_rng(seed)
    pairs = zip(CENTRES, n_each, strict=True)
    z = np.concatenate([c + 0.5 * rng.standard_normal((n, 2)) for c, n in pairs])
    labels = np.repeat(np.arange(len(n_each)), n_each)
    return z, labels


def test_the_number_of_components_is_chosen_on_the_validation_split() -> None:
    """Four clusters: K = 4 explains the validation points as well as any larger K, much
    better than fewer, so the smallest K within the margin of the best is 4."""
    train, _ = clusters([300] * 4, seed=0)
    val, _ = clusters([100] * 4, seed=1)
    choice = choose_mixture(train, val, (1, 2, 4, 8, 16), progress=False)
    assert list(choice.validation) == [1, 2, 4, 8, 16]
    assert choice.components == 4
    best = max(choice.validation.values())
    assert choice.validation[4] >= best - 0.02 and choice.validation[2] < best - 0.5
    assert np.allclose(np.sort(choice.mixture.means[:, 0]), np.sort(CENTRES[:, 0]), atol=0.3)
    assert "K = 4" in choice.describe(0.02)


def test_a_fit_without_labels_has_no_per_label_mixtures() -> None:
    train, _ = clusters([200] * 4, seed=0)
    val, _ = clusters([50] * 4, seed=1)
    fit = fit_prior(train, val, candidates=(1, 4), progress=False)
    assert not fit.prior.per_label and fit.classes == {}


def test_each_label_gets_its_own_mixture_and_its_share() -> None:
    counts = [400, 200, 100, 300]
    train, labels = clusters(counts, seed=0)
    val, val_labels = clusters([50, 50, 50, 50], seed=1)
    fit = fit_prior(train, val, labels, val_labels, candidates=(1, 2, 4), progress=False)
    prior = fit.prior
    assert prior.labels == (0, 1, 2, 3)
    assert prior.shares == pytest.approx([c / sum(counts) for c in counts])
    assert fit.overall.components == 4
    rng = np.random.default_rng(0)
    for label, centre in enumerate(CENTRES):
        # One cluster per label: K = 1 is as good as more on its validation points.
        assert fit.classes[label].components == 1
        z = prior.sample(200, rng, label=label)
        assert np.abs(z.mean(0) - centre).max() < 0.2
    # The overall mixture's density is high at the clusters, low between them.
    inside, between = prior.log_density(CENTRES), prior.log_density(np.zeros((1, 2)))
    assert inside.min() > between.max() + 10


def run(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / name), *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_vae_prior_refits_an_exported_folder_and_the_service_loads_it(fresh_model_dir) -> None:
    """`vae-prior` on a tiny exported VAE (its data: the offline subset its config names):
    writes prior.npz and metadata `prior` (sha256, K chosen on the validation split, per-label
    fits, posterior draws by default, the default prior), keeps the default on a refit unless
    told, and refreshes a typicality reference that uses the density; the service's loader
    reads the folder."""
    from service.inference.registry import load_model

    folder = fresh_model_dir / "vae"
    result = run("vae-prior", str(folder), "--components", "1,2", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "K = " in result.stdout
    metadata = read_metadata(folder)
    spec = metadata.prior
    assert spec is not None and spec.file == "prior.npz" and spec.per_label
    assert spec.fitted_on == "posterior_sample" and spec.default == "normal"
    assert spec.components in (1, 2) and "validation split" in spec.how_chosen
    prior = load_prior(folder / spec.file, metadata.z_dim, spec.sha256)
    assert prior.labels == tuple(range(10)) and sum(prior.shares) == pytest.approx(1.0)
    model = load_model(folder)
    assert getattr(model, "prior", prior) is not None  # Model.prior where the registry has it

    # A refit keeps the folder's default unless --default says otherwise; with a reference
    # that uses the density, the reference is recomputed against the new prior.
    edited = run("vae-prior", str(folder), "--components", "1", "--default", "fitted",
                 "--fit-on", "mu", "--no-progress")  # fmt: skip
    assert edited.returncode == 0, edited.stderr
    again = read_metadata(folder).prior
    assert again is not None and again.default == "fitted" and again.components == 1
    assert again.fitted_on == "mu" and again.sha256 != spec.sha256
    from training.typicality import add_typicality, validation_split

    val = validation_split(read_metadata(folder).training)
    add_typicality(folder, val.images, val.source, k=2, score="log_px_kl_and_prior")
    reference = read_metadata(folder).typicality
    assert reference is not None and reference.score == "log_px_kl_and_prior"
    kept = run("vae-prior", str(folder), "--components", "2", "--no-progress")
    assert kept.returncode == 0, kept.stderr
    refit = read_metadata(folder)
    assert refit.prior is not None and refit.prior.default == "fitted"
    assert refit.typicality is not None
    assert refit.typicality.components["log_prior"] != reference.components["log_prior"]

    # --only-default changes the default alone: the same file, the reason recorded.
    only = run("vae-prior", str(folder), "--only-default", "--default", "normal",
               "--reason", "the book's figure")  # fmt: skip
    assert only.returncode == 0, only.stderr
    changed = read_metadata(folder).prior
    assert changed is not None and changed.default == "normal"
    assert changed.sha256 == refit.prior.sha256
    assert changed.how_chosen.endswith("default prior 'normal': the book's figure")
    assert changed.how_chosen.count("default prior") == 1

    missing = run("vae-prior", str(fresh_model_dir / "nothing"))
    assert missing.returncode == 2 and "metadata.json" in missing.stderr


def test_the_ae_gets_the_fitted_prior_by_default(fresh_model_dir) -> None:
    folder = fresh_model_dir / "ae"
    result = run("vae-prior", str(folder), "--components", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    spec = read_metadata(folder).prior
    assert spec is not None and spec.default == "fitted" and spec.fitted_on == "z"


def test_evaluate_reports_each_prior_the_floor_and_memorisation(fresh_model_dir, monkeypatch):
    """vae-evaluate on a folder with a fitted prior: the judge's figures for its samples, for
    per-label sampling (overall and per label), the Frechet floor of real held-out images, the
    memorisation check against the reconstructions, and the per-label figure."""
    import training.classifier
    import training.evaluate
    from training.classifier import DigitClassifier
    from training.prior import fit_and_store, run_split

    def untrained_judge(digits, epochs, seed, cache_dir, progress=True):
        torch.manual_seed(0)
        return DigitClassifier().eval()

    monkeypatch.setattr(training.classifier, "load_or_train_classifier", untrained_judge)
    folder = fresh_model_dir / "ae"
    train, val = run_split(read_metadata(folder).training)
    fit_and_store(folder, train, val, candidates=(1, 2), progress=False)
    result = training.evaluate.evaluate(folder, None, samples=200, progress=False,
                                        likelihood=False)  # fmt: skip
    for key in ("samples_normal", "samples_fitted"):
        assert 0 <= result[key]["confident_share"] <= 1 and result[key]["count"] == 200
    by_label = result["samples_by_label"]
    assert by_label["labels"] == list(range(10)) and by_label["per_label_count"] == 20
    assert len(by_label["read_as_asked_by_label"]) == 10
    assert by_label["read_as_asked"] == pytest.approx(np.mean(by_label["read_as_asked_by_label"]))
    assert result["heldout_frechet_distance"]["images"] == 500
    memo = result["memorisation"]
    assert set(memo) >= {"test_reconstructions", "samples_normal", "samples_fitted"}
    assert memo["samples_fitted"]["median"] > 0
    assert memo["samples_fitted"]["median_over_reconstructions"] == pytest.approx(
        memo["samples_fitted"]["median"] / memo["test_reconstructions"]["median"]
    )
    metadata = read_metadata(folder)
    assert {"samples_by_label.png", "samples_fitted.png"} <= set(metadata.figures)
    assert (folder / "samples_by_label.png").read_bytes()[:4] == b"\x89PNG"
    assert metadata.evaluation is not None and "samples_by_label" in metadata.evaluation
    table = training.evaluate.prior_table(result)
    assert "| fitted |" in table and "per label" in table
    assert "fitted-prior samples" in training.evaluate.summary_line("ae", result)


def test_nearest_distances_match_brute_force() -> None:
    from training.evaluate import nearest_distances

    rng = np.random.default_rng(0)
    queries, reference = rng.random((7, 1, 4, 4)), rng.random((23, 1, 4, 4))
    expected = np.sqrt(
        ((queries.reshape(7, 1, -1) - reference.reshape(1, 23, -1)) ** 2).sum(2)
    ).min(1)
    np.testing.assert_allclose(nearest_distances(queries, reference, chunk=5), expected, 1e-5)


def test_the_prior_density_joins_the_typicality_score() -> None:
    """log_px_kl_and_prior is the lowest of three percentiles: an image whose encoding the
    prior finds unlikely is atypical however well it is reconstructed."""
    rng = np.random.default_rng(0)
    held_out = {
        "iwae_log_px": rng.normal(-100, 5, 400),
        "kl": rng.normal(10, 1, 400),
        "log_prior": rng.normal(-3, 1, 400),
    }
    record = scoring.typicality_record(held_out, "log_px_kl_and_prior", "held out", k=4, seed=0)
    reference = Typicality.model_validate(record)
    assert set(reference.components or {}) == {"iwae_log_px", "kl", "log_prior"}
    image = {"iwae_log_px": np.array([-95.0, -95.0]), "kl": np.array([11.0, 11.0]),
             "log_prior": np.array([-2.5, -12.0])}  # fmt: skip
    scores, parts = scoring.reference_scores(reference, image)
    assert parts is not None and scores[0] >= reference.threshold > scores[1]
    assert scores[1] == parts["log_prior"][1] == 0.0
    with pytest.raises(ValueError, match="needs components"):
        Typicality.model_validate({**record, "components": {"iwae_log_px": [0, 1], "kl": [0, 1]}})
    assert scoring.score_name("vae", prior=True) == "log_px_kl_and_prior"
    assert scoring.score_name("ae", prior=True) == "neg_mse_and_prior"
    assert scoring.score_name("ae") == "neg_mse"


def test_scores_carry_the_prior_log_density(model_dir) -> None:
    from service.inference.registry import load_model

    model = load_model(model_dir / "vae")
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    plain = scoring.score_images(model, x, 2, np.random.default_rng(0))
    assert plain.log_prior is None and "log_prior" not in scoring.component_values(plain)
    prior = fit_prior(np.random.default_rng(1).standard_normal((300, 2)),
                      np.random.default_rng(2).standard_normal((100, 2)), candidates=(1,),
                      progress=False).prior  # fmt: skip
    scored = scoring.score_images(model, x, 2, np.random.default_rng(0), prior=prior)
    assert scored.log_prior is not None
    np.testing.assert_allclose(scored.log_prior, prior.log_density(scored.codes["mu"]))
    assert set(scoring.component_values(scored)) == {"neg_mse", "iwae_log_px", "kl", "log_prior"}


@pytest.mark.skipif(
    not hasattr(__import__("service.inference.model").inference.model.Model, "prior"),
    reason="the registry does not load fitted priors on this branch (Model.prior)",
)
@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_score_answers_the_prior_density_and_a_verdict_that_uses_it(fresh_model_dir, kind):
    """POST /score on a folder fitted by vae-prior: `log_prior` is the prior's density of the
    image's encoding (as /encode gives it); with the combined typicality score the verdict
    lists the density's percentile among its parts."""
    from conftest import digit_array, make_client, png_bytes

    from training.prior import fit_and_store, fitted_prior, run_split
    from training.typicality import add_typicality

    folder = fresh_model_dir / kind
    train, val = run_split(read_metadata(folder).training)
    fit_and_store(folder, train, val, candidates=(1,), progress=False)
    score = scoring.score_name(kind, prior=True)
    add_typicality(folder, val.images[:60], "60 held-out digits", k=4, score=score)
    prior = fitted_prior(folder)
    assert prior is not None
    digit = png_bytes(digit_array())
    with make_client(fresh_model_dir) as client:
        body = client.post(f"/score?model={kind}&k=4&seed=0", files={"file": digit}).json()
        code = client.post(f"/encode?model={kind}", files={"file": digit}).json()
    mean = np.array([code["mu" if kind == "vae" else "z"]])
    assert body["log_prior"] == pytest.approx(float(prior.log_density(mean)[0]), rel=1e-5)
    verdict = body["typicality"]
    assert verdict["score_name"] == score and "log_prior" in verdict["components"]
    assert verdict["score"] == pytest.approx(min(verdict["components"].values()))
