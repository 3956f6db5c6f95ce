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


# --- self-healing (issue #16) ----------------------------------------------------------------


def wait_for(predicate, timeout: float, step: float = 0.1):
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def metric(base: str, name: str) -> float | None:
    text = httpx.get(base + "/metrics", timeout=10).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def start_workers(model_dir: Path, log_path: Path, **env: str):
    """A 2-worker server with both workers listening: (process, base)."""
    port = free_port()
    with open(log_path, "wb") as out:  # the server keeps its own copy of the descriptor
        process = start(
            model_dir, port, out, VAE_WORKERS=str(WORKERS), VAE_ACCESS_LOG="false", **env
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, log_path, 60)
        assert wait_for(lambda: len(serving_pids(process.pid)) == WORKERS, 60), log_path.read_text()
    except BaseException:
        stop(process)
        raise
    return process, base


def test_restart_policy_backs_off_to_a_cap() -> None:
    from service.process.workers import RestartPolicy

    policy = RestartPolicy()
    assert [policy.delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_a_killed_worker_is_replaced_while_the_other_serves(workers_server) -> None:
    process, base, log = workers_server
    victim, survivor = sorted(serving_pids(process.pid))
    assert metric(base, "vae_worker_restarts_total") == 0
    psutil.Process(victim).kill()  # SIGKILL, as the OOM killer does
    # The survivor answers every new connection meanwhile: the kernel closed the dead socket.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=base, timeout=10, limits=fresh) as client:
        assert [client.get("/readyz").status_code for _ in range(10)] == [200] * 10

    def replaced_set() -> set[int] | None:
        pids = serving_pids(process.pid)
        return pids if len(pids) == WORKERS and victim not in pids else None

    replaced = wait_for(replaced_set, 60)
    assert replaced and survivor in replaced, log.read_text()
    assert process.poll() is None
    text = log.read_text()
    assert f"worker {victim} was killed by SIGKILL; starting a replacement in 0.5 s" in text
    assert wait_for(lambda: "serving, " in log.read_text(), 10), text
    assert wait_for(lambda: metric(base, "vae_workers_live") == WORKERS, 10)
    assert metric(base, "vae_worker_restarts_total") == 1
    assert metric(base, "vae_workers_configured") == WORKERS
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, log.read_text()


@pytest.mark.parametrize("allowed", [0, 1])
def test_restarts_past_the_limit_stop_the_server(model_dir, tmp_path, allowed) -> None:
    log = tmp_path / "server.log"
    process, _ = start_workers(model_dir, log, VAE_MAX_WORKER_RESTARTS=str(allowed))
    try:
        for _ in range(allowed):
            victim = min(serving_pids(process.pid))
            psutil.Process(victim).kill()
            assert wait_for(
                lambda v=victim: (
                    len(pids := serving_pids(process.pid)) == WORKERS and v not in pids
                ),
                60,
            ), log.read_text()
        psutil.Process(min(serving_pids(process.pid))).kill()
        assert process.wait(timeout=30) == 1, log.read_text()
    finally:
        stop(process)
    text = log.read_text()
    assert f"VAE_MAX_WORKER_RESTARTS={allowed}" in text and "stopping the server" in text


def test_a_replacement_that_cannot_load_the_model_stops_the_server(
    fresh_model_dir, tmp_path
) -> None:
    """The model file changed after start: the workers serve what they loaded; the
    replacement refuses the file (sha256) and the server stops with its message, exit 3."""
    log = tmp_path / "server.log"
    process, base = start_workers(fresh_model_dir, log)
    try:
        before = httpx.get(base + "/sample?n=4&seed=3", timeout=10).content
        decoder = fresh_model_dir / "vae" / "decoder.onnx"
        decoder.write_bytes((fresh_model_dir / "ae" / "decoder.onnx").read_bytes())
        assert httpx.get(base + "/sample?n=4&seed=3", timeout=10).content == before
        psutil.Process(min(serving_pids(process.pid))).kill()
        assert process.wait(timeout=90) == 3, log.read_text()
    finally:
        stop(process)
    (line,) = [ln for ln in log.read_text().splitlines() if "could not start" in ln]
    assert "vae/decoder.onnx: sha256 is" in line and line.endswith("stopping the server")


def test_a_stopped_worker_is_killed_and_replaced_after_the_heartbeat_timeout(
    model_dir, tmp_path
) -> None:
    log = tmp_path / "server.log"
    process, base = start_workers(model_dir, log, VAE_WORKER_HEARTBEAT_TIMEOUT="2")
    victim = min(serving_pids(process.pid))
    try:
        psutil.Process(victim).suspend()  # SIGSTOP
        stopped = time.monotonic()
        assert wait_for(lambda: not psutil.pid_exists(victim), 30), log.read_text()
        killed_after = time.monotonic() - stopped
        assert 1.5 < killed_after < 15, killed_after
        assert wait_for(lambda: len(serving_pids(process.pid)) == WORKERS, 60), log.read_text()
        assert f"worker {victim}: no heartbeat for" in log.read_text()
        assert "(by the supervisor: no heartbeat)" in log.read_text()
        assert metric(base, "vae_worker_restarts_total") == 1
    finally:
        with contextlib.suppress(psutil.Error):
            psutil.Process(victim).resume()
        stop(process)


def _get(sock: socket.socket) -> bytes:
    """GET /healthz on a kept-alive socket: the response head, lower-cased."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))
    while len(body) < length:
        body += sock.recv(4096)
    return head.lower()


def test_after_a_restart_the_other_workers_connections_move(workers_server) -> None:
    """Connections that moved to the survivor when a worker died would stay there: once the
    replacement serves, the survivor answers each keep-alive connection's next request with
    `Connection: close`, and the clients' new connections spread over both workers."""
    process, base, log = workers_server
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert b"connection: close" not in _get(sock)
        mine = sock.getsockname()[1]
        owner = next(
            pid
            for pid in serving_pids(process.pid)
            if any(c.raddr and c.raddr.port == mine for c in psutil.Process(pid).net_connections())
        )
        (other,) = serving_pids(process.pid) - {owner}
        psutil.Process(other).kill()
        assert wait_for(lambda: "connections reconnect" in log.read_text(), 60), log.read_text()
        time.sleep(0.3)  # the signal reaches the survivor
        head = _get(sock)
        assert head.startswith(b"http/1.1 200") and b"connection: close" in head
        assert sock.recv(1) == b""  # and it closes the connection after that response
    # A new connection is kept alive as usual.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert b"connection: close" not in _get(sock)
        assert b"connection: close" not in _get(sock)
