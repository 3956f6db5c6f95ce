"""Several worker processes (service/process/workers.py): each serves, /metrics adds them up,
SIGTERM drains and exits 0, a port in use or a broken model stops start-up with a non-zero
status."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import wait_ready
from test_service_server import free_port, start, stop

WORKERS = 2


def children(pid: int) -> list[int]:
    """The worker processes: the supervisor's direct children."""
    return [child.pid for child in psutil.Process(pid).children()]


@pytest.fixture
def workers_server(model_dir: Path, tmp_path: Path):
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = start(model_dir, port, out, VAE_WORKERS=str(WORKERS), VAE_ACCESS_LOG="false")
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(process, base, log, 60)
            # Both workers listen once ready; the first one ready answered the probe above.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(serving_pids(process.pid)) < WORKERS:
                time.sleep(0.1)
            yield process, base, log
        finally:
            stop(process)


def serving_pids(parent: int) -> set[int]:
    """Children of the supervisor that have a listening TCP socket."""
    pids = set()
    for pid in children(parent):
        with contextlib.suppress(OSError):
            inodes = {
                link.split("[")[1].rstrip("]")
                for fd in Path(f"/proc/{pid}/fd").iterdir()
                if (link := str(fd.readlink())).startswith("socket:")
            }
            listening = {
                line.split()[9]
                for name in ("tcp", "tcp6")
                for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
                if line.split()[3] == "0A"  # LISTEN
            }
            if inodes & listening:
                pids.add(pid)
    return pids


def test_every_worker_serves_and_metrics_add_up(workers_server, digit_png) -> None:
    process, base, _ = workers_server
    assert len(serving_pids(process.pid)) == WORKERS
    count = 40
    # New connections each time: the kernel spreads them over the workers' sockets.
    for i in range(count):
        r = httpx.post(base + "/encode", files={"file": ("d.png", digit_png, "image/png")})
        assert r.status_code == 200, r.text
        assert httpx.get(base + f"/sample?n=2&seed={i}").status_code == 200
    text = httpx.get(base + "/metrics").text
    encodes = re.search(
        r'vae_http_requests_total\{method="POST",route="/encode",status="200"\} (\S+)', text
    )
    assert encodes and float(encodes.group(1)) == count, text[:2000]
    assert re.search(r"^vae_models_loaded 2\.0$", text, re.M), "gauge: max over the workers"


def test_sigterm_drains_every_worker_and_exits_0(workers_server) -> None:
    process, _, log = workers_server
    kids = serving_pids(process.pid)
    assert len(kids) == WORKERS
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, log.read_text()
    for pid in kids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    assert "Finished server process" in log.read_text()


def test_port_in_use_is_a_clean_error(model_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = tmp_path / "server.log"
        with open(log, "wb") as out:
            process = start(model_dir, port, out, VAE_WORKERS=str(WORKERS))
            try:
                assert process.wait(timeout=30) == 1
            finally:
                stop(process)
    assert "cannot listen on 127.0.0.1" in log.read_text()


def test_a_broken_model_stops_every_worker(fresh_model_dir: Path, tmp_path: Path) -> None:
    (fresh_model_dir / "vae" / "decoder.onnx").write_bytes(b"not onnx")
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = start(fresh_model_dir, free_port(), out, VAE_WORKERS=str(WORKERS))
        try:
            status = process.wait(timeout=60)
        finally:
            stop(process)
    assert status != 0
    assert "decoder.onnx" in log.read_text()
