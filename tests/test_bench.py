"""The benchmark scripts run and report (bench/): a smoke run with tiny durations.

Nothing here asserts a speed: `make bench` measures, on a quiet machine (BENCHMARKS.md). These
tests prove the scripts work: FLOPs counted from a graph agree with the architecture, and a
quick `run_all` drives real servers with wrk without a single error and renders its tables.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import flops, run_all

REPO = Path(__file__).resolve().parent.parent


def test_flops_from_the_graph_match_the_architecture(model_dir: Path) -> None:
    from training.config import TrainConfig

    for kind in ("vae", "ae"):
        metadata = json.loads((model_dir / kind / "metadata.json").read_text())
        config = TrainConfig.from_dict(metadata["training"]["config"])
        counted = {g: flops.count(model_dir / kind / f"{g}.onnx") for g in ("encoder", "decoder")}
        assert {g: c["macs_per_image"] for g, c in counted.items()} == flops.analytic(config.model)
        for c in counted.values():
            assert c["flops_per_image"] == 2 * c["macs_per_image"] > 0


def test_the_book_models_are_about_7_5_million_multiply_adds_each() -> None:
    macs = flops.analytic()
    assert macs == {"encoder": 7_463_680, "decoder": 7_457_408}


def _run_module(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_the_scripts_run_as_modules_from_the_repository_root(model_dir: Path) -> None:
    """`python -m bench.NAME` and `python -m scripts.soak`, as the Makefile and the docs run
    them (no sys.path preludes; scripts import harness, never tests)."""
    graph = model_dir / "vae" / "decoder.onnx"
    out = _run_module("bench.flops", str(graph))
    assert out.returncode == 0, out.stderr
    counted = json.loads(out.stdout.splitlines()[0])
    assert counted["macs_per_image"] == flops.count(graph)["macs_per_image"]
    for module in ("bench.run_all", "scripts.soak"):
        out = _run_module(module, "--help")
        assert out.returncode == 0 and "usage:" in out.stdout, (module, out.stderr)


def _py_spy() -> str | None:
    return shutil.which("py-spy") or (
        str(Path(sys.executable).parent / "py-spy")
        if (Path(sys.executable).parent / "py-spy").exists()
        else None
    )


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
@pytest.mark.skipif(_py_spy() is None, reason="py-spy is not installed (pip install py-spy)")
def test_a_quick_run_of_every_benchmark_has_no_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    data = run_all.run(quick=True, out_dir=tmp_path, before=None, training=False)
    summary = data["summary"]
    assert summary["errors"] == 0
    for name in ("compute", "http", "peers", "oip_grpc", "curves", "profile", "memory", "summary"):
        assert (tmp_path / f"{name}.json").is_file(), name
    http = data["results"]["http"]
    assert {r["name"] for r in http["results"]} >= {"healthz", "encode", "baseline_sample_png"}
    assert all(r["rps"] > 0 for r in http["results"])
    # 4 of the service's own, then BentoML's (bench/peers/compare.py) where it is set up, then
    # gRPC against REST (bench/oip_grpc.py: the decoder of 16 at concurrency 1 in a quick run)
    grpc_targets = data["results"]["oip_grpc"]["targets"]
    assert len(grpc_targets) == 1 and "grpc_decoder16_raw" in grpc_targets[0]["target"]
    assert len(summary["targets"]) == 4 + len(data["results"]["peers"]["targets"]) + 1
    text = run_all.markdown(data, "pytest")
    assert "### Targets" in text and "/encode" in text and "| graph | batch |" in text
    assert "| grpc_decoder16_raw | decoder16_binary | 1 |" in text
