"""Faults under load (scripts/chaos.py, RELIABILITY.md "Faults under load"): the SIGKILL fault
for a few seconds with its healing claims, and the two fixes the chaos run led to (a client
hanging up mid-upload is no error; a request that arrives while the server is stalled is not
reset by the keep-alive timer)."""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest
from conftest import wait_ready
from test_service_server import START_TIMEOUT, free_port, start, stop

from scripts import chaos

pytestmark = pytest.mark.slow
CLIENT_SAW = {
    "connection reset",
    "remote protocol error (server disconnected without a response)",
    "broken pipe",
}


def test_sigkill_under_load_heals(model_dir, tmp_path) -> None:
    """32 clients, /sample and /encode, 8 s; one of 2 workers SIGKILLed part-way. Every request
    on the other connections succeeds, the failures are requests on the killed worker's
    connections (and at most those), and the replacement answers /readyz on its own socket."""
    result = chaos.run_fault("sigkill", model_dir, tmp_path, seconds=8, concurrency=32)
    details = result["details"]
    print(json.dumps({k: v for k, v in result.items() if k != "log_tail"}, indent=1))
    assert result["passed"], result["checks"]
    assert details["victim_connections"] > 0 and details["survivor_connection_requests"] > 0
    assert details["survivor_connection_failures"] == 0
    assert details["failed_elsewhere"] == 0
    assert result["failed"] == details["failed_on_victim"] <= details["exposed_on_victim"]
    assert set(result["failures"]) <= CLIENT_SAW, result["failures"]
    assert result["succeeded"] > 100
    assert result["recovery_s"] is not None and result["recovery_s"] < 60
    assert details["replacement"] not in (details["victim"], details["survivor"])
    assert result["server_exit_status"] == 0
    assert "was killed by SIGKILL; starting a replacement" in result["log_tail"]


def test_table_lists_each_fault() -> None:
    row = {
        "description": "SIGKILL one worker",
        "requests": 10,
        "succeeded": 8,
        "failed": 2,
        "failures": {"connection reset": 2},
        "recovery_s": 1.234,
        "lost": "2 in flight",
        "passed": True,
    }
    text = chaos.table([row, {**row, "failed": 0, "failures": {}, "recovery_s": None}])
    lines = text.splitlines()
    assert lines[0].startswith("| Fault | Requests sent | Succeeded | Failed, and how |")
    assert lines[2] == (
        "| SIGKILL one worker | 10 | 8 | 2: 2 connection reset | 1.23 s | 2 in flight |"
    )
    assert lines[3] == "| SIGKILL one worker | 10 | 8 | 0 | - | 2 in flight |"


@pytest.fixture
def one_worker(model_dir, tmp_path):
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = start(model_dir, port, log, VAE_ACCESS_LOG="true")
    try:
        wait_ready(process, f"http://127.0.0.1:{port}", log_path, START_TIMEOUT)
        yield process, port, log_path
    finally:
        stop(process)


def request(port: int, head: bytes, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head)
    return sock


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.lower().split(b"\r\n")
    length = next(int(ln.split(b":")[1]) for ln in lines if ln.startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1])


def test_a_client_hanging_up_mid_upload_is_not_an_error(one_worker, digit_png) -> None:
    process, port, log_path = one_worker
    for _ in range(3):
        sock = request(
            port,
            b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(digit_png)}\r\n\r\n".encode()
            + digit_png[:40],
        )
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and log_path.read_text().count('"status":499') < 3:
        time.sleep(0.1)
    text = log_path.read_text()
    assert text.count('"status":499') == 3, text[-2000:]
    assert "Traceback" not in text and "unhandled error" not in text
    assert process.poll() is None


def test_a_request_sent_while_the_server_is_stalled_is_answered(one_worker) -> None:
    """The keep-alive timeout (5 s) passes while the process is stopped, with the next request
    already sent on the idle connection: after SIGCONT it is answered, not reset. (Stopped while
    idle, uvloop reads before it runs timers; stopped while busy, it runs the expired keep-alive
    timer first: the case service/process/http_protocol.py's second look covers, seen under
    load by scripts/chaos.py's "sigstop" fault: 3 of 15 stalled requests reset before it, none
    after.)"""
    process, port, _ = one_worker
    sock = request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=30)
    assert read_status(sock) == 200
    process.send_signal(signal.SIGSTOP)
    try:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(6.5)  # past uvicorn's keep-alive timeout of 5 s
    finally:
        process.send_signal(signal.SIGCONT)
    assert read_status(sock) == 200
    sock.close()
