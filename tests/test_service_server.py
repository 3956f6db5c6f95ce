"""The real thing: `python -m service` under uvicorn on a free loopback port, driven by httpx."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import free_port, stop, wait_ready

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


def start(model_dir: Path, port: int, log, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        # One process unless a test asks for more (VAE_WORKERS defaults to one per CPU): the
        # tests read this PID's /proc (RSS, threads, open files). tests/test_workers.py: several.
        env={**os.environ, "VAE_MODEL_DIR": str(model_dir), "VAE_WORKERS": "1", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def failed_start(model_dir: Path, log_path: Path) -> str:
    """Start the service on `model_dir`, expect it to exit with an error; its output."""
    with open(log_path, "wb") as log:
        process = start(model_dir, free_port(), log)
        try:
            process.wait(timeout=START_TIMEOUT)
        finally:
            stop(process)
    assert process.returncode not in (0, None)
    return log_path.read_text()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with open(log_path, "wb") as log:
        process = start(model_dir, port, log, VAE_MAX_UPLOAD_BYTES="65536")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, base, log_path, START_TIMEOUT)
            with httpx.Client(base_url=base, timeout=10) as client:
                yield client, log_path
        finally:
            stop(process)


def test_server_answers(server, digit_png) -> None:
    client, _ = server
    r = client.post("/encode", files={"file": ("digit", digit_png, "application/octet-stream")})
    assert r.status_code == 200 and len(r.json()["mu"]) == 2
    r = client.post("/encode?model=ae", content=digit_png, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and "z" in r.json()
    a, b = client.get("/sample?n=9&seed=7"), client.get("/sample?n=9&seed=7")
    assert a.headers["content-type"] == "image/png" and a.content == b.content
    assert client.get("/healthz").json() == {"status": "ok"}
    assert "vae_inference_duration_seconds" in client.get("/metrics").text


def test_server_concurrent_requests(server, digit_png) -> None:
    client, _ = server

    def one(i: int) -> tuple[int, list[float]]:
        r = client.post("/encode", files={"file": (f"{i}.png", digit_png)})
        return r.status_code, r.json()["mu"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(24)))
    assert {status for status, _ in results} == {200}
    assert all(mu == results[0][1] for _, mu in results)


def test_server_refuses_a_big_body_early(server) -> None:
    client, _ = server
    started = time.monotonic()
    r = client.post(
        "/encode", content=b"\x89PNG" + b"\x00" * 1_000_000, headers={"Content-Type": "image/png"}
    )
    assert r.status_code == 413 and "65536" in r.json()["detail"]
    assert time.monotonic() - started < 5


def test_server_request_id_and_access_log(server) -> None:
    client, log_path = server
    r = client.get("/models/vae", headers={"X-Request-ID": "server-test-1"})
    assert r.headers["x-request-id"] == "server-test-1"
    assert r.headers["x-content-type-options"] == "nosniff"
    entries = []
    for _ in range(50):  # the log line is written after the response: poll, bounded
        lines = log_path.read_text().splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        if any(e["request_id"] == "server-test-1" for e in entries):
            break
        time.sleep(0.1)
    entry = next(e for e in entries if e["request_id"] == "server-test-1")
    assert entry["route"] == "/models/{name}" and entry["status"] == 200


def test_broken_model_stops_start_up(fresh_model_dir, tmp_path) -> None:
    path = fresh_model_dir / "vae" / "decoder.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    output = failed_start(fresh_model_dir, tmp_path / "server.log")
    assert "vae/decoder.onnx" in output and "sha256" in output


def test_make_serve_without_models_explains(tmp_path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = Path(sys.executable).parent.parent
    # -o: never (re)install here, whatever the stamp's age: only the serve step runs.
    result = subprocess.run(
        ["make", "-s", "-o", f"{venv}/.serve-installed", "serve", "PORT=1", f"VENV={venv}"],
        cwd=REPO,
        env={**os.environ, "VAE_MODEL_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "make train" in result.stderr
