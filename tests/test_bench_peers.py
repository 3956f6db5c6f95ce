"""The benchmark's peers and cost curves (bench/peers/, bench/curves.py).

Every peer must answer what the service answers: on the same seed a PNG grid of the same size
and pixels, on the same upload the same mu and log_var, on the same OIP request the same
tensors. Those tests start real servers on loopback (tiny models) and need each peer's own
environment (.venv-bentoml/, .venv-<peer>/: `python -m bench.peers.bentoml_env`, `python -m
bench.peers.envs`, or `make bench`, set them up; never `make test`): without it they skip.
The rest (ratios, the best settings, the targets, saturation, the generated tables, a server
stopped as its whole session) runs everywhere on made-up rows or plain processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from bench import curves, run_all
from bench.common import ROOT, service_server
from bench.peers import bentoml_env, compare, envs, servers
from harness.processes import process_tree, session_processes, stop

needs_bentoml = pytest.mark.skipif(
    not bentoml_env.ready(),
    reason="BentoML's environment .venv-bentoml/ is not set up "
    "(python -m bench.peers.bentoml_env, or make bench, makes it)",
)


@pytest.fixture(scope="module")
def service_payloads(model_dir: Path, digit_png: bytes) -> dict:
    reqs = compare.requests(digit_png)[compare.SERVICE_LABEL]
    with service_server(model_dir, env={"VAE_WORKERS": "1"}) as server:
        return compare.payloads(server.url, reqs, seed=3)


@needs_bentoml
@pytest.mark.parametrize(
    "config",
    [
        {"VAE_BENTO_WORKERS": "1", "VAE_BENTO_ORT_THREADS": "1"},
        compare.BENTOML_CONFIGS["batching"] | {"VAE_BENTO_WORKERS": "1"},
    ],
    ids=["one-service", "batching"],
)
def test_bentoml_answers_the_services_payloads(
    model_dir: Path, digit_png: bytes, service_payloads: dict, config: dict, tmp_path: Path
) -> None:
    cli = bentoml_env.bentoml_cli()
    reqs = compare.requests(digit_png)["bentoml"]
    with compare.bentoml_server(cli, model_dir, config, tmp_path / "bentoml.log") as peer:
        theirs = compare.payloads(peer.url, reqs, seed=3)
    check = compare.compare_payloads(service_payloads, theirs)
    assert check["same"], check
    side = int(np.ceil(np.sqrt(compare.SAMPLE_N)))
    assert theirs["sample"].shape == (side * 30 - 2, side * 30 - 2)  # 28 px cells, 2 px gaps
    assert theirs["encode"]["model"] == service_payloads["encode"]["model"]
    assert len(theirs["encode"]["mu"]) == len(theirs["encode"]["log_var"]) == 2


def test_a_different_grid_or_encoding_is_caught() -> None:
    grid = np.zeros((118, 118), np.uint8)
    enc = {"model": "vae", "mu": [0.1, 0.2], "log_var": [-1.0, -2.0]}
    ours = {"sample": grid, "encode": enc}
    assert compare.compare_payloads(ours, {"sample": grid.copy(), "encode": dict(enc)})["same"]
    other = grid.copy()
    other[5, 5] = 9
    assert not compare.compare_payloads(ours, {"sample": other, "encode": enc})["same"]
    assert compare.compare_payloads(ours, {"sample": other}, pixels=False)["same"]
    assert not compare.compare_payloads(ours, {"sample": grid[:60], "encode": enc})["same"]
    moved = {**enc, "mu": [0.1, 0.21]}
    assert not compare.compare_payloads(ours, {"sample": grid, "encode": moved})["same"]


def _row(server: str, case: str, c: int, rps: float, p99: float) -> dict:
    return {
        "server": server,
        "case": case,
        "concurrency": c,
        "rps": rps,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "server_cpu_ms_per_request": 1.0,
        "server_cpu_share": 0.9,
        "requests": int(rps * 5),
        "errors": {"status": 0},
    }


def _peers_data() -> dict:
    rows = []
    for c, scale in ((1, 0.5), (32, 1.0)):
        rows += [
            _row("service", "sample", c, 450 * scale, 20),
            _row("service", "encode", c, 2000 * scale, 10),
            _row("bentoml-default", "sample", c, 100 * scale, 90),
            _row("bentoml-default", "encode", c, 900 * scale, 40),
            _row("bentoml-w2_ort1_nolog", "sample", c, 300 * scale, 30),
            _row("bentoml-w2_ort1_nolog", "encode", c, 500 * scale, 50),
            _row("bentoml-w2_ort1_nolog_async", "sample", c, 250 * scale, 15),
            _row("bentoml-w2_ort1_nolog_async", "encode", c, 700 * scale, 30),
            _row("eager-pytorch", "sample", c, 180 * scale, 60),
        ]
    names = ["default", "w2_ort1_nolog", "w2_ort1_nolog_async"]
    data = {
        "duration_s": 5.0,
        "results": rows,
        "ratios": compare.ratios(rows),
        "bentoml_best": compare.best_configs(rows),
        "bentoml_version": "1.4.40",
        "bentoml_settings": {n: compare.settings_text(compare.BENTOML_CONFIGS[n]) for n in names},
        "requests": {
            kind: {case: f"{r.method} {r.path}" for case, r in by_case.items()}
            for kind, by_case in compare.requests(b"png").items()
        },
        "payloads_differ": [],
    }
    data["targets"] = compare.targets(data)
    return data


def test_the_best_bentoml_settings_are_chosen_per_request_and_never_the_defaults() -> None:
    data = _peers_data()
    # the defaults have the most encode req/s here, but the best is among the tuned settings
    assert data["bentoml_best"] == {"sample": "w2_ort1_nolog", "encode": "w2_ort1_nolog_async"}
    ratio = {(r["peer"], r["case"], r["concurrency"]): r["ratio"] for r in data["ratios"]}
    assert ratio[("bentoml-w2_ort1_nolog", "sample", 32)] == 1.5
    assert ratio[("eager-pytorch", "sample", 32)] == 2.5
    assert ("eager-pytorch", "encode", 32) not in ratio
    by_name = {t["target"]: t for t in data["targets"]}
    assert len(by_name) == 3
    sample, encode, p99 = by_name.values()
    assert not sample["holds"] and "1.5x" in sample["measured"]  # 450 vs 300
    assert encode["holds"] and "2.9x" in encode["measured"]  # 2,000 vs 700
    assert "workers=2" in sample["detail"] and "async APIs on" in encode["detail"]
    assert p99["holds"]  # sample at c=1 and 32: 20 ms against 30; encode: 10 against 30
    assert "sample c=32: 20.0 vs 30.0 ms" in p99["measured"]


def test_no_bentoml_run_no_bentoml_targets() -> None:
    rows = [_row("service", "sample", 32, 450, 20), _row("eager-pytorch", "sample", 32, 180, 60)]
    data = {"ratios": compare.ratios(rows), "bentoml_best": compare.best_configs(rows)}
    assert data["bentoml_best"] == {}
    assert compare.targets(data) == []


def test_saturation_is_the_first_concurrency_near_the_best_rate() -> None:
    rows = [
        {"concurrency": c, "rps": rps, "server_cpu_share": share}
        for c, rps, share in ((1, 200, 0.4), (2, 390, 0.8), (4, 440, 0.95), (8, 450, 0.97))
    ]
    sat = curves.saturation(rows)
    assert sat == {"concurrency": 4, "rps": 440, "best_rps": 450, "server_cpu_share": 0.95}
    assert curves.saturation([]) is None


def _curves_data() -> dict:
    sizes = [
        {
            **_row("service", kind, 32, rps, 50),
            "kind": kind,
            "images": n,
            "images_per_s": rps * n,
            "server_cpu_ms_per_image": 1.0 / n,
        }
        for kind in ("sample", "encode_batch")
        for n, rps in ((1, 2000), (16, 450), (64, 110), (256, 27))
    ]
    conc = [
        {**_row("service", "sample", c, min(450, 230 * c), 5 * c), "images_per_s": 0}
        for c in curves.CONCURRENCY
    ]
    return {
        "duration_s": 3.0,
        "size_concurrency": 32,
        "sizes": sizes,
        "concurrency": conc,
        "saturation": curves.saturation(conc),
        "quiet_machine": True,
    }


def test_the_curves_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    data = _curves_data()
    assert curves.plot(data, tmp_path / "curves.png") == "curves.png"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_generated_tables_show_peers_and_curves() -> None:
    text = run_all.peers_markdown(_peers_data())
    assert "BentoML `w2_ort1_nolog` (**best**)" in text and "`POST /sample`" in text
    assert "| eager PyTorch (bench/baseline_torch_app.py) | `GET /sample?n=16` | 32 |" in text
    curves_data = {**_curves_data(), "plot": "curves.png"}
    text = run_all.curves_markdown(curves_data)
    assert "at concurrency 2, with the server using 90% of the CPUs" in text
    assert "![cost curves](bench/results/curves.png)" in text


# --- issue #27: the other serving stacks --------------------------------------------------------


@pytest.fixture(scope="module")
def service_oip(model_dir: Path, digit_png: bytes) -> dict:
    z_dim = json.loads((model_dir / "vae" / "metadata.json").read_text())["z_dim"]
    reqs = servers.oip_requests("vae", z_dim, digit_png)
    with service_server(model_dir, env={"VAE_WORKERS": "1"}) as server:
        return compare.oip_payloads(server.url, reqs)


# One cheap setting per peer (one process or instance, one onnxruntime thread), batching where
# the peer batches by default.
SMOKE = {
    "litserve": "w2_ort1_nolog_batch16",
    "rayserve": "r2_ort1_nolog_batch16",
    "torchserve": "w1_ort1_nolog",
    "pytriton": "i1_ort1",
    "mlserver": "w2_ort1",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(servers.PEERS))
def test_each_peer_answers_the_services_payloads(
    name: str,
    model_dir: Path,
    digit_png: bytes,
    service_payloads: dict,
    service_oip: dict,
    tmp_path: Path,
) -> None:
    peer = servers.PEERS[name]
    if not peer.env.ready():
        pytest.skip(f"{peer.title}'s environment is not set up (python -m bench.peers.envs {name})")
    config = peer.configs[SMOKE[name]]
    with servers.server(peer, peer.env.python(), model_dir, config, tmp_path / "peer.log") as srv:
        if peer.kind == "rest":
            reqs = servers.rest_requests(name, digit_png)
            theirs = compare.when_answering(lambda: compare.payloads(srv.url, reqs, seed=3), 120)
            check = compare.compare_payloads(service_payloads, theirs)
        else:
            z_dim = json.loads((model_dir / "vae" / "metadata.json").read_text())["z_dim"]
            every = servers.oip_requests("vae", z_dim, digit_png)
            reqs = {case: every[case] for case in peer.oip_cases}
            theirs = compare.when_answering(lambda: compare.oip_payloads(srv.url, reqs), 120)
            check = servers.compare_oip(service_oip, theirs)
        session = srv.pid
        assert len(process_tree(session)) >= 1
    assert check["same"], check
    assert session_processes(session) == []  # nothing of it outlives the stop


def test_oip_responses_are_read_as_json_and_as_binary() -> None:
    mu = np.array([[0.5, -1.25]], np.float32)
    body = {"outputs": [{"name": "mu", "shape": [1, 2], "datatype": "FP32", "data": [0.5, -1.25]}]}
    as_json = servers.decode_oip(json.dumps(body).encode(), None)
    head = json.dumps(
        {
            "outputs": [
                {
                    "name": "mu",
                    "shape": [1, 2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    ).encode()
    as_binary = servers.decode_oip(head + mu.tobytes(), str(len(head)))
    assert np.array_equal(as_json["mu"], mu) and np.array_equal(as_binary["mu"], mu)
    ours = {"decoder16_json": {"image": np.zeros((2, 1, 2, 2), np.float32)}}
    assert servers.compare_oip(
        ours, {"decoder16_json": {"image": ours["decoder16_json"]["image"]}}
    )["same"]
    moved = {"decoder16_json": {"image": np.full((2, 1, 2, 2), 1e-3, np.float32)}}
    assert not servers.compare_oip(ours, moved)["same"]
    assert not servers.compare_oip(
        ours, {"decoder16_json": {"other": moved["decoder16_json"]["image"]}}
    )["same"]
    assert not servers.compare_oip(ours, {})["same"]  # nothing answered: not the same


def test_every_peer_has_a_pinned_environment_kept_out_of_git() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    clean = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "rm -rf" in line)
    for name, env in envs.ENVS.items():
        assert name in servers.PEERS
        lines = [x for x in env.requirements.read_text().splitlines() if x and x[0] not in "#-"]
        assert lines and all("==" in x for x in lines), name  # every package pinned
        assert any(x.startswith(("onnxruntime==", "numpy==", "pillow==")) for x in lines)
        assert f".venv-{name}/" in ignored and f".venv-{name}" in clean
        assert env.venv == ROOT / f".venv-{name}"


def _peer_rows() -> list[dict]:
    def row(server: str, case: str, c: int, rps: float, p50: float, p99: float, over: float):
        return {
            **_row(server, case, c, rps, p99),
            "p50_ms": p50,
            "overhead_ms_per_request": over,
        }

    return [
        row("service", "sample", 1, 300, 3.0, 5.0, 0.4),
        row("service", "sample", 32, 500, 60, 80, 0.5),
        row("litserve-default", "sample", 1, 150, 6.0, 9.0, 3.0),
        row("litserve-default", "sample", 32, 200, 150, 200, 3.0),
        row("litserve-w2_ort1_nolog", "sample", 1, 200, 4.0, 4.5, 1.5),
        row("litserve-w2_ort1_nolog", "sample", 32, 450, 70, 90, 0.9),
        row("pytriton-i2_ort1", "decoder16_binary", 32, 700, 40, 50, 0.6),
        row("service", "decoder16_binary", 32, 600, 50, 60, 0.2),
    ]


def test_issue_27_targets_compare_with_each_peers_best_setting() -> None:
    rows = _peer_rows()
    best = compare.peers_best(rows)
    assert best == {
        "litserve": {"sample": "litserve-w2_ort1_nolog"},
        "pytriton": {"decoder16_binary": "pytriton-i2_ort1"},
    }
    memory = {
        "service": {"rss_mb": 300.0},
        "litserve-default": {"rss_mb": 250.0},  # the smallest, but not litserve's best
        "litserve-w2_ort1_nolog": {"rss_mb": 280.0},
    }
    data = {"results": rows, "peers_best": best, "memory": memory, "inprocess_ms": {}}
    targets = compare.peer_targets(data)
    assert len(targets) == 5
    faster, cheaper, lowest, twice, rss = targets
    assert (
        not faster["holds"]
        and "decoder16_binary vs pytriton-i2_ort1: 600 vs 700" in faster["measured"]
    )
    assert (
        not cheaper["holds"]
        and "sample vs litserve-w2_ort1_nolog: 0.50 vs 0.90" in cheaper["measured"]
    )
    assert "1 of 2 hold" in cheaper["measured"]  # 0.2 <= half of 0.6 holds
    assert not lowest["holds"] and "litserve-w2_ort1_nolog 4.5" in lowest["measured"]
    assert twice["holds"]  # 5.0 <= 2 x 3.0
    assert not rss["holds"] and "vs litserve-w2_ort1_nolog 280 MB" in rss["measured"]
    assert "any setting: litserve-default 250 MB" in rss["measured"]


def test_a_server_in_its_own_session_is_measured_and_stopped_whole(tmp_path: Path) -> None:
    # The launcher starts a child that leaves its tree (sh exits, sleep is reparented), as Ray's
    # actors and TorchServe's Java front end do.
    code = "import subprocess, time; subprocess.run(['sh', '-c', 'sleep 300 &']); time.sleep(300)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(session_processes(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        orphans = [p.pid for p in session_processes(proc.pid) if p.pid != proc.pid]
        assert orphans and all(p in process_tree(proc.pid) for p in orphans)
        assert not any(p in psutil.Process(proc.pid).children(recursive=True) for p in orphans)
    finally:
        stop(proc, timeout=5, session=True)
    assert session_processes(proc.pid) == []
