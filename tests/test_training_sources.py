"""Training on any images (issue #15): image folders, .npz files and IDX files of any size,
resized and converted; the architecture follows the data; vae-train, vae-export and the
service's loader on RGB and non-square models."""

from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.classifier import DigitClassifier, judge_cache_path
from training.config import ModelConfig, TrainConfig
from training.data import (
    FASHION_LABELS,
    DataError,
    Digits,
    convert,
    load_image_folder,
    load_mnist_dir,
    load_npz,
    load_training_data,
)
from training.figures import tile
from training.train import ConfigError, check_architecture, fit_model_to_data

BIN = Path(sys.executable).parent
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SIDE = 48  # the folder's images: 48x48, resized by the runs to 32 and 64
PER_LABEL = 10  # good images per label folder


def run_cli(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / name), *args], capture_output=True, text=True, timeout=300, check=False
    )


def encoded(array: np.ndarray, fmt: str, mode: str | None = None, **options) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, fmt, **options)
    return buffer.getvalue()


def picture(rng: np.random.Generator, label: int, shape=(SIDE, SIDE)) -> np.ndarray:
    """A uint8 RGB image: a disc on a background whose colour tells the label."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - rng.uniform(0.3, 0.7) * h) ** 2 + (xx - rng.uniform(0.3, 0.7) * w) ** 2
    image = np.empty((h, w, 3))
    image[:] = [0.8, 0.3, 0.2] if label == 0 else [0.2, 0.4, 0.8]
    image[disc < (min(h, w) * 0.25) ** 2] = [0.95, 0.95, 0.6]
    image += rng.normal(0, 0.03, image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two label folders of RGB PNG, JPEG and WebP files, plus three files to skip: a corrupt
    PNG, a truncated JPEG and a text file."""
    root = tmp_path_factory.mktemp("pets")
    rng = np.random.default_rng(0)
    for label, name in enumerate(("cats", "dogs")):
        (root / name).mkdir()
        for i in range(PER_LABEL):
            fmt, suffix = [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")][i % 3]
            data = encoded(picture(rng, label), fmt, quality=95)
            (root / name / f"{i:02d}.{suffix}").write_bytes(data)
    good_png = (root / "cats" / "00.png").read_bytes()
    (root / "cats" / "broken.png").write_bytes(good_png[:60] + bytes(200))
    jpeg = encoded(picture(rng, 1), "JPEG")
    (root / "dogs" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "dogs" / "notes.txt").write_text("not an image\n")
    (root / ".DS_Store").write_bytes(b"\0\1junk")  # hidden: ignored, not even counted
    return root


@pytest.fixture(scope="module")
def gray_folder(tmp_path_factory) -> Path:
    """A flat folder (no labels) of 24x40 grayscale PNGs, one with transparency."""
    root = tmp_path_factory.mktemp("gray")
    rng = np.random.default_rng(1)
    for i in range(12):
        gray = picture(rng, i % 2, (24, 40)).mean(axis=2).astype(np.uint8)
        (root / f"{i:02d}.png").write_bytes(encoded(gray, "PNG"))
    la = np.stack([np.full((24, 40), 40, np.uint8), np.full((24, 40), 128, np.uint8)], -1)
    (root / "12.png").write_bytes(encoded(la, "PNG", mode="LA"))
    return root


@pytest.fixture(scope="module")
def some_digits() -> Digits:
    """20 images of the default subset (reading it takes seconds: once)."""
    return load_training_data(None, 20)


# --- image folders ------------------------------------------------------------------------


def test_folder_loader_skips_unreadable_files_and_labels_by_sub_folder(folder, capsys):
    data = load_image_folder(folder)
    assert data.images.shape == (2 * PER_LABEL, 3, SIDE, SIDE)
    assert data.images.dtype == np.float32
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert data.label_names == ["cats", "dogs"] and data.label_count == 2
    assert data.labels is not None and np.bincount(data.labels).tolist() == [PER_LABEL] * 2
    # Shuffled with a fixed seed: not in the folders' (label) order, the same every time.
    assert data.labels.tolist() != sorted(data.labels.tolist())
    again = load_image_folder(folder)
    np.testing.assert_array_equal(again.images, data.images)
    info = data.provenance
    assert info is not None
    assert info["source"] == "images" and info["path"] == str(folder)
    assert info["count"] == 2 * PER_LABEL and info["skipped"] == 3
    assert info["skipped_files"] == ["cats/broken.png", "dogs/cut.jpg", "dogs/notes.txt"]
    assert info["label_names"] == ["cats", "dogs"] and len(info["sha256"]) == 64
    err = capsys.readouterr().err
    assert "skipped 3 of 23 files" in err
    for name in ("cats/broken.png (", "dogs/cut.jpg (", "dogs/notes.txt (not an image"):
        assert name in err
    # Colours survive: the cats' background is red, the dogs' blue.
    corner = data.images[:, :, 0, 0]
    cats, dogs = corner[data.labels == 0], corner[data.labels == 1]
    assert (cats[:, 0] > cats[:, 2]).all() and (dogs[:, 2] > dogs[:, 0]).all()


def test_limit_reads_the_first_images_of_the_same_order(folder):
    full = load_image_folder(folder)
    part = load_training_data(None, 5, images_dir=folder)
    np.testing.assert_array_equal(part.images, full.images[:5])
    assert part.labels is not None and full.labels is not None
    np.testing.assert_array_equal(part.labels, full.labels[:5])


def test_flat_folder_has_no_labels_and_alpha_goes_on_white(gray_folder):
    data = load_image_folder(gray_folder)
    assert data.images.shape == (13, 1, 24, 40)  # grayscale stays 1 channel, non-square
    assert data.labels is None and data.label_names is None and data.label_count == 0
    # The LA image: 40 at half opacity over white = (40 / 255 + 1) / 2.
    flat = [img for img in data.images if np.ptp(img) == 0]
    assert len(flat) == 1
    assert flat[0][0, 0, 0] == pytest.approx((40 / 255) * (128 / 255) + 1 - 128 / 255, abs=1e-6)
    rgb = load_image_folder(gray_folder, channels=3)
    assert rgb.images.shape == (13, 3, 24, 40)
    np.testing.assert_array_equal(rgb.images[:, 0], rgb.images[:, 2])


def test_folder_errors_are_clear(tmp_path, folder):
    with pytest.raises(DataError, match="folder not found"):
        load_image_folder(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_image_folder(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("text")
    (bad / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    with pytest.raises(DataError, match="none of its 2 files is a readable"):
        load_image_folder(bad)
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    rng = np.random.default_rng(0)
    (sizes / "a.png").write_bytes(encoded(picture(rng, 0, (20, 30)), "PNG"))
    (sizes / "b.png").write_bytes(encoded(picture(rng, 0, (30, 30)), "PNG"))
    with pytest.raises(DataError, match=r"differ in size .* pass --image-size"):
        load_image_folder(sizes)
    assert load_image_folder(sizes, image_size=(16, 16)).images.shape == (2, 3, 16, 16)


# --- sizes and channels -------------------------------------------------------------------


def test_image_size_and_channels_convert_any_source(some_digits):
    digits = convert(some_digits, (32, 20), 3)
    assert digits.images.shape == (20, 3, 32, 20)
    np.testing.assert_array_equal(digits.images[:, 0], digits.images[:, 1])
    assert some_digits.images.shape == (20, 1, 28, 28)
    assert convert(some_digits) is some_digits  # nothing asked: the same data
    # A wide image, bright in its middle square and dark at the sides: fitting it to a square
    # keeps the middle (the service's 'fit'); stretching it keeps the sides.
    wide = np.zeros((1, 1, 20, 40), np.float32)
    wide[..., 10:30] = 1.0
    data = Digits(wide, None, "wide")
    fitted = convert(data, (10, 10)).images
    stretched = convert(data, (10, 10), stretch=True).images
    assert fitted.min() > 0.95
    assert stretched[0, 0, :, 0].max() < 0.05 and stretched[0, 0, :, 5].min() > 0.95
    rgb = np.zeros((1, 3, 4, 4), np.float32)
    rgb[:, 1] = 1.0  # pure green: luma 0.587, as Pillow's convert("L")
    assert convert(Digits(rgb, None, "g"), channels=1).images == pytest.approx(0.587)


def test_npz_layouts_labels_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = (rng.random((30, 12, 16, 3)) * 255).astype(np.uint8)
    labels = np.arange(30) % 3
    np.savez(tmp_path / "a.npz", images=nhwc, labels=labels, label_names=["x", "y", "z"])
    data = load_npz(tmp_path / "a.npz")
    assert data.images.shape == (30, 3, 12, 16) and data.label_names == ["x", "y", "z"]
    assert data.labels is not None and data.labels.tolist() != labels.tolist()  # shuffled
    assert data.provenance is not None and data.provenance["source"] == "npz"
    # Each image keeps its label through the shuffle.
    order = [int(np.argmin(np.abs(nhwc / 255 - img.transpose(1, 2, 0)).sum((1, 2, 3))))
             for img in data.images]  # fmt: skip
    assert data.labels.tolist() == labels[order].tolist()
    np.savez(tmp_path / "b.npz", images=rng.random((8, 1, 10, 10)))  # NCHW float in [0, 1]
    b = load_training_data(None, npz=tmp_path / "b.npz", image_size=(5, 5), channels=3)
    assert b.images.shape == (8, 3, 5, 5) and b.labels is None
    np.savez(tmp_path / "c.npz", images=rng.random((8, 10, 10)) * 2)
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):
        load_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", images=rng.random((8, 5, 10, 10)))
    with pytest.raises(DataError, match="C 1 or 3"):
        load_npz(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", pixels=nhwc)
    with pytest.raises(DataError, match="no `images` array"):
        load_npz(tmp_path / "e.npz")
    names = np.array(["a", 1], dtype=object)
    np.savez(tmp_path / "f.npz", images=nhwc, labels=labels, label_names=names)
    with pytest.raises(DataError, match="without pickle"):
        load_npz(tmp_path / "f.npz")
    with pytest.raises(DataError, match="file not found"):
        load_npz(tmp_path / "none.npz")


# --- IDX files ----------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_idx_files_of_another_size_get_a_neutral_name(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 16, 24)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(40) % 12)
    data = load_mnist_dir(tmp_path)
    assert data.images.shape == (40, 1, 16, 24)
    assert data.provenance is not None
    assert data.provenance["name"] == f"IDX train files in {tmp_path}"
    assert data.provenance["official_mnist"] is False and not data.digits
    assert data.label_count == 12  # labels beyond 0..9 are fine
    assert load_training_data(str(tmp_path), image_size=(8, 8)).images.shape == (40, 1, 8, 8)
    with pytest.raises(DataError, match="t10k"):
        load_mnist_dir(tmp_path, "test")


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist: absent")
def test_official_fashion_mnist_files_are_recognised():
    test = load_mnist_dir(FASHION_DIR, "test")
    assert test.provenance is not None
    assert test.provenance["name"] == "Fashion-MNIST test set"
    assert test.provenance["official_fashion_mnist"] is True
    assert test.label_names == FASHION_LABELS and test.label_count == 10
    assert test.label_names[0] == "T-shirt/top" and test.label_names[9] == "Ankle boot"
    assert not test.digits  # so no digit judge, OOD sets or digit-only defaults


# --- the architecture follows the data ----------------------------------------------------


def test_the_model_adapts_to_the_data_and_refuses_what_it_cannot_take():
    config = fit_model_to_data(TrainConfig(), (3, 24, 40))
    assert config.model.input_shape == (3, 24, 40)
    assert config.model.decoder_conv_t_filters == [64, 64, 32, 3]
    check_architecture(config)
    for shape in ((1, 4, 4), (3, 30, 30), (1, 256, 256), (3, 7, 255)):
        check_architecture(fit_model_to_data(TrainConfig(), shape))
    with pytest.raises(ConfigError, match="at most 256x256"):
        check_architecture(fit_model_to_data(TrainConfig(), (3, 300, 300)))
    with pytest.raises(ConfigError, match="total stride"):
        check_architecture(fit_model_to_data(TrainConfig(), (1, 3, 40)))
    big = TrainConfig(model=ModelConfig(z_dim=64))
    with pytest.raises(ConfigError, match="dense layers"):
        check_architecture(fit_model_to_data(big, (3, 256, 256)))
    check_architecture(fit_model_to_data(big, (3, 128, 128)))
    with pytest.raises(ConfigError, match="preparation digit"):
        check_architecture(fit_model_to_data(TrainConfig(preparation="digit"), (3, 28, 28)))


def test_rgb_and_non_square_tiles():
    images = np.random.default_rng(0).random((5, 3, 6, 10)).astype(np.float32)
    grid = tile(images, 3)
    assert grid.shape == (2 * 6 + 2, 3 * 10 + 4, 3)
    np.testing.assert_array_equal(grid[:6, :10], np.round(images[0].transpose(1, 2, 0) * 255))
    assert tile(images[:, :1], 3).shape == (14, 34)


def test_judges_of_other_data_never_share_a_digit_judges_key(tmp_path, some_digits):
    assert [name for name, _ in DigitClassifier().state_dict().items()] == [
        "features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
        "features.8.weight", "features.8.bias", "head.1.weight", "head.1.bias",
    ]  # fmt: skip  # the keys cached digit judges were saved with
    digits = some_digits
    assert judge_cache_path(tmp_path, digits, 4, 0).name.startswith("judge-")
    assert len(judge_cache_path(tmp_path, digits, 4, 0).stem) == len("judge-") + 16
    fashion = Digits(digits.images, digits.labels, "f", {"name": "Fashion-MNIST train set"},
                     label_names=list(FASHION_LABELS))  # fmt: skip
    other = judge_cache_path(tmp_path, fashion, 4, 0)
    assert other.name.startswith("judge-fashion-mnist-train-set-1x28x28-")
    assert other != judge_cache_path(tmp_path, digits, 4, 0)
    rgb = DigitClassifier(3, 2).eval()
    assert rgb(torch.rand(2, 3, 24, 40)).shape == (2, 2)


# --- the real CLIs ------------------------------------------------------------------------
# vae-train runs as the installed command (a subprocess); vae-export and vae-evaluate run
# their main() in this process (the same code, without another torch start-up each).


@pytest.fixture(scope="module")
def rgb_models(tmp_path_factory, folder) -> dict[int, tuple[Path, Path, str]]:
    """{size: (run folder, model folder, vae-train's stderr)}: z_dim 8 VAEs of the folder at
    32x32 and 64x64, one epoch each, exported."""
    from training.export import main as export

    torch.set_num_threads(1)
    made = {}
    for size, val_size in ((32, 10), (64, 6)):
        base = tmp_path_factory.mktemp(f"rgb{size}")
        run, out = base / "run", base / "models" / f"pets{size}"
        result = run_cli(
            "vae-train", "--images", str(folder), "--image-size", str(size), "--z-dim", "8",
            "--epochs", "1", "--val-size", str(val_size), "--threads", "1", "--no-progress",
            "--figures-every", "1", "--out", str(run),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert export([str(run), "--out", str(out)]) == 0
        made[size] = (run, out, result.stderr)
    return made


@pytest.mark.parametrize("size", [32, 64])
def test_train_and_export_rgb_models_from_a_folder(rgb_models, folder, size):
    from service.inference.registry import load_model

    run, out, stderr = rgb_models[size]
    assert "skipped 3 of 23 files" in stderr
    assert f"images of 3x{size}x{size}" in stderr
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["input_shape"] == [3, size, size]
    assert config["model"]["decoder_conv_t_filters"][-1] == 3
    assert config["images_dir"] == str(folder) and config["image_size"] == [size, size]
    assert (run / "figures" / "epoch_0001_samples.png").exists()
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["input"]["shape"] == [3, size, size]
    assert metadata["input"]["preparation"] == "fit"
    assert metadata["label_names"] == ["cats", "dogs"]
    dataset = metadata["training"]["dataset"]
    assert dataset["source"] == "images" and dataset["skipped"] == 3
    val_images = metadata["training"]["val_images"]
    assert val_images == {32: 10, 64: 6}[size]
    points = json.loads((out / "latent_points.json").read_text())
    assert len(points["z"]) == len(points["labels"]) == val_images
    assert len(points["z"][0]) == 8
    plane = points["plane"]
    assert len(plane["origin"]) == 8 and np.array(plane["axes"]).shape == (2, 8)
    model = load_model(out)
    assert model.input_shape == (3, size, size)
    z = model.encode_batch(np.random.default_rng(0).random((2, 3, size, size), np.float32))
    assert z["mu"].shape == (2, 8)
    assert model.decode_batch(z["mu"]).shape == (2, 3, size, size)


def test_rgb_model_evaluates_with_a_judge_of_its_own_labels(rgb_models, tmp_path, capsys):
    from training.evaluate import main as evaluate

    _, out, _ = rgb_models[32]
    cache = tmp_path / "judges"
    assert evaluate([
        str(out), "--samples", "40", "--log-px-k", "4", "--no-progress", "--threads", "1",
        "--classifier-epochs", "1", "--judge-cache", str(cache),
    ]) == 0  # fmt: skip
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["classifier"]["classes"] == 2
    assert len(evaluation["samples_normal"]["class_shares"]) == 2
    assert 0 <= evaluation["latent_knn5_accuracy"] <= 1
    (judge,) = cache.glob("judge-*.pt")
    assert judge.name.startswith("judge-images-in-") and "-3x32x32-" in judge.name
    assert "of real test images confident" in capsys.readouterr().out
    for figure in ("reconstructions.png", "latent_scatter.png", "samples.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gray_non_square_model_trains_exports_and_evaluates(tmp_path, gray_folder):
    from service.inference.registry import load_model
    from training.evaluate import main as evaluate
    from training.export import main as export

    torch.set_num_threads(1)
    run, out = tmp_path / "run", tmp_path / "models" / "strips"
    result = run_cli(
        "vae-train", "--images", str(gray_folder), "--epochs", "1", "--val-size", "4",
        "--threads", "1", "--no-progress", "--figures-every", "0", "--out", str(run),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert export([str(run), "--out", str(out)]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["input"]["shape"] == [1, 24, 40]
    assert metadata["input"]["preparation"] == "fit"
    assert "label_names" not in metadata
    points = json.loads((out / "latent_points.json").read_text())
    assert "labels" not in points and "plane" not in points  # z_dim 2: the plane is z itself
    assert load_model(out).input_shape == (1, 24, 40)
    assert evaluate([
        str(out), "--samples", "40", "--log-px-k", "4", "--no-progress", "--threads", "1",
        "--no-judge-cache",
    ]) == 0  # fmt: skip
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["classifier"] is None and "samples_normal" not in evaluation
    assert any("no labels" in note for note in evaluation["notes"])
    assert evaluation["likelihood"]["sets"] == {}
    assert "made for 1x28x28 MNIST digit models" in evaluation["likelihood"]["table"]
    for figure in ("reconstructions.png", "latent_scatter.png", "samples.png", "manifold.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_refuses_what_it_cannot_train_before_reading(tmp_path, folder, capsys):
    from training.train import main as train_main

    out = str(tmp_path / "r")
    for args, message in [
        (("--image-size", "300"), "at most 256x256"),
        (("--image-size", "2x40"), "total stride"),
        (("--image-size", "256", "--z-dim", "64"), "dense layers"),
        (("--channels", "3", "--preparation", "digit"), "preparation digit"),
    ]:
        assert train_main(["--images", str(folder), *args, "--out", out]) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert "skipped" not in err  # refused before the images were read
    for args, message in [
        (("--image-size", "0"), "expected H or HxW"),
        (("--npz", "x.npz"), "not allowed with argument"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            train_main(["--images", str(folder), *args, "--out", out])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_main(["--images", str(empty), "--out", out]) == 2
    assert "no image files" in capsys.readouterr().err
