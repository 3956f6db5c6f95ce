"""Faults injected into a real server under load, one at a time (RELIABILITY.md, "Faults
under load").

    python -m scripts.chaos                          # every fault (`make chaos`, ~5 minutes)
    python -m scripts.chaos --faults sigkill,burst --json artifacts/chaos.json

For each fault: `python -m service` with 2 workers on a free 127.0.0.1 port, over a private
copy of the models (models/ if it holds exported models, else tiny untrained ones: that needs
torch, the `train` extra), under `--concurrency` clients (asyncio + httpx, each on its own
keep-alive connection, /sample and /encode in turn) for a bounded time, with the fault
injected part-way:

    sigkill            SIGKILL one worker
    sigstop            SIGSTOP one worker for 10 s, then SIGCONT (heartbeat timeout: default)
    sigstop-heartbeat  the same with VAE_WORKER_HEARTBEAT_TIMEOUT=3: the supervisor kills it
    disconnects        clients that hang up mid-response and mid-upload
    burst              10 x VAE_MAX_CONCURRENCY requests at once, on new connections
    metrics-unwritable the Prometheus multiprocess folder made unwritable, then a worker killed
    model-changed      a model file rewritten on disk after start, then a worker killed
    lifecycle          versions change under load, over and over (issue #25): a new version
                       of vae published (copy + rename) and loaded, a broken one refused, the
                       previous one loaded back, ae unloaded and loaded; /sample, /encode and
                       OIP infer throughout. Zero non-2xx, every answer tagged with a version
                       served at that moment, the switch time, the workers' RSS before / after

Every request's outcome is kept with the client port of its connection; a sampler maps the
server side of each connection to the worker process that holds it (psutil), so failures can
be told apart: on the faulty worker's connections, or anywhere else. Writes a JSON result
(--json) and prints a Markdown table: fault, requests sent, succeeded, failed and how,
recovery time, anything lost. Exits 1 when a fault's checks fail. Servers are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from PIL import Image, ImageDraw

from harness.processes import ServerNotReady, free_port, log_tail, process_tree, stop, wait_ready

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2
CONCURRENCY = 32
CLIENT_TIMEOUT = 30.0  # longer than a 10 s SIGSTOP: stalled requests may complete
START_TIMEOUT = 90.0
STOP_SECONDS = 10.0
# Seconds of load per fault in a full run (`make chaos`); the fault comes part-way.
SECONDS = {
    "sigkill": 20.0,
    "sigstop": 20.0,
    "sigstop-heartbeat": 16.0,
    "disconnects": 12.0,
    "burst": 12.0,
    "metrics-unwritable": 14.0,
    "model-changed": 12.0,
    "lifecycle": 90.0,
}
LIFECYCLE_CYCLES = 50  # at most, within the fault's seconds
ADMIN_KEY = "chaos-admin-key"
FAULTS = tuple(SECONDS)


def digit_png() -> bytes:
    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).line([(8, 6), (20, 6), (12, 22)], fill=255, width=3)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# --- requests and their outcomes --------------------------------------------------------------


@dataclass
class Outcome:
    """One request of the load."""

    client: int
    kind: str  # "sample" or "encode"
    t0: float  # seconds since the load started
    t1: float
    status: int | None  # None: no HTTP answer (see error)
    error: str | None
    port: int | None  # client port of the connection that answered
    prev_port: int | None  # the connection this client held when it sent the request
    retry_after: bool = False
    version: str | None = None  # X-Model-Version: the model version that answered

    @property
    def ok(self) -> bool:
        return self.status == 200


def category(outcome: Outcome) -> str:
    """How a request failed, in a few words."""
    if outcome.status is not None:
        if outcome.status == 503:
            return "503 busy" + (" (Retry-After)" if outcome.retry_after else "")
        return f"HTTP {outcome.status}"
    error = outcome.error or ""
    if error.startswith("RemoteProtocolError"):
        return "remote protocol error (server disconnected without a response)"
    if error.startswith(("ReadError", "WriteError")):
        lowered = error.lower()
        if "reset" in lowered or "104" in lowered:
            return "connection reset"
        if "brokenpipe" in lowered or "32" in lowered:
            return "broken pipe"
        return error[:60]
    if error.startswith("ConnectError"):
        return "connection refused"
    if "Timeout" in error:
        return "timeout"
    return error[:60]


def describe(exc: BaseException) -> str:
    """The exception and, where its own message is empty, the one under it (the OS error)."""
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    for _ in range(10):  # down to the OS error (ConnectionResetError, ...), if there is one
        if text or cause is None:
            break
        if str(cause) or (cause.__cause__ or cause.__context__) is None:
            text = f"{type(cause).__name__} {cause}".strip()
        cause = cause.__cause__ or cause.__context__
    return f"{type(exc).__name__}: {text[:120]}"


def client_port(response: httpx.Response) -> int | None:
    with contextlib.suppress(Exception):
        addr = response.extensions["network_stream"].get_extra_info("client_addr")
        return int(addr[1])
    return None


class Load:
    """`concurrency` clients, each with one keep-alive connection, sending /sample and /encode
    in turn until stopped (bounded: at most `max_requests` each)."""

    def __init__(
        self,
        base: str,
        concurrency: int,
        png: bytes,
        max_requests: int = 100_000,
        oip_body: dict | None = None,
    ):
        self.base, self.concurrency, self.png = base, concurrency, png
        self.max_requests = max_requests
        # With an OIP inference body: /sample, /encode and /v2/models/vae-encoder/infer in turn.
        self.kinds = ("sample", "encode", "oip") if oip_body else ("sample", "encode")
        self.oip_body = oip_body
        self.outcomes: list[Outcome] = []
        self.stopped = asyncio.Event()
        self.t_zero = time.monotonic()
        self.ports: dict[int, int | None] = {}  # client -> port of its connection now
        self.connected = 0
        self.ready = asyncio.Event()  # every client has its connection: the clock starts

    def clock(self) -> float:
        return time.monotonic() - self.t_zero

    async def connect(self, http: httpx.AsyncClient, i: int) -> None:
        """Open client `i`'s connection (GET /healthz, not counted), so that every counted
        request goes out on a connection whose port is known."""
        for _ in range(20):
            with contextlib.suppress(httpx.HTTPError):
                r = await http.get("/healthz")
                self.ports[i] = client_port(r)
                return
            await asyncio.sleep(0.1)

    async def client(self, i: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(
            base_url=self.base, timeout=CLIENT_TIMEOUT, limits=limits, trust_env=False
        ) as http:
            await self.connect(http, i)
            self.connected += 1
            if self.connected == self.concurrency:
                self.t_zero = time.monotonic()
                self.ready.set()
            await self.ready.wait()
            for n in range(self.max_requests):
                if self.stopped.is_set():
                    return
                kind = self.kinds[(i + n + 1) % len(self.kinds)]
                prev = self.ports.get(i)
                t0 = self.clock()
                try:
                    if kind == "sample":
                        r = await http.get(f"/sample?n=16&seed={n % 97}")
                    elif kind == "oip":
                        r = await http.post("/v2/models/vae-encoder/infer", json=self.oip_body)
                    else:
                        r = await http.post(
                            "/encode", files={"file": ("d.png", self.png, "image/png")}
                        )
                except httpx.HTTPError as exc:
                    self.ports[i] = None
                    self.outcomes.append(
                        Outcome(i, kind, t0, self.clock(), None, describe(exc), None, prev)
                    )
                    await asyncio.sleep(0.05)  # no hot loop against a server that is gone
                    continue
                port = client_port(r)
                self.ports[i] = port
                self.outcomes.append(
                    Outcome(
                        i,
                        kind,
                        t0,
                        self.clock(),
                        r.status_code,
                        None,
                        port,
                        prev,
                        retry_after="retry-after" in r.headers,
                        version=r.headers.get("x-model-version"),
                    )
                )
                if r.status_code == 503:
                    await asyncio.sleep(0.05)

    async def run(self) -> None:
        await asyncio.gather(*(self.client(i) for i in range(self.concurrency)))


# --- the server and its workers -------------------------------------------------------------


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(supervisor).children():
            with contextlib.suppress(psutil.Error):
                if any("spawn_main" in part for part in child.cmdline()):
                    found.append(child.pid)
    return sorted(found)


def listening(pid: int, port: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            for c in psutil.Process(pid).net_connections("tcp")
        )
    return False


def connections_of(pids: list[int], port: int) -> dict[int, int]:
    """client port -> worker pid, for every connection to `port` the workers hold."""
    owners = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            for c in psutil.Process(pid).net_connections("tcp"):
                if c.laddr and c.laddr.port == port and c.raddr:
                    owners[c.raddr.port] = pid
    return owners


class Owners(threading.Thread):
    """Samples, every `interval` seconds, which worker holds each client connection."""

    def __init__(self, supervisor: int, port: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.supervisor, self.port, self.interval = supervisor, port, interval
        self.owner: dict[int, int] = {}
        self.halt = threading.Event()

    def sample(self) -> dict[int, int]:
        now = connections_of(worker_pids(self.supervisor), self.port)
        self.owner.update(now)
        return now

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.sample()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    models: Path
    metrics_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[int]:
        return worker_pids(self.process.pid)


def start_server(models: Path, workdir: Path, name: str, **env: str) -> Server:
    port = free_port()
    log_path = workdir / f"{name}-server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env={
                **os.environ,
                "VAE_MODEL_DIR": str(models),
                "VAE_WORKERS": str(WORKERS),
                "VAE_ACCESS_LOG": "false",
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, log_path, models)
    try:
        wait_ready(process, server.base, log_path, START_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            pids = server.workers()
            if len(pids) == WORKERS and all(listening(p, port) for p in pids):
                break
            time.sleep(0.1)
        else:
            raise ServerNotReady(f"{WORKERS} workers not listening; log:\n{log_tail(log_path)}")
    except BaseException:
        stop(process)
        raise
    with contextlib.suppress(OSError, IndexError):
        environ = Path(f"/proc/{server.workers()[0]}/environ").read_bytes().split(b"\0")
        for item in environ:
            if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                server.metrics_dir = item.split(b"=", 1)[1].decode()
    return server


def wait_new_worker(server: Server, known: set[int], timeout: float = 60.0) -> int | None:
    """The pid of a worker not in `known` once it listens, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.process.poll() is None:
        for pid in server.workers():
            if pid not in known and listening(pid, server.port):
                return pid
        time.sleep(0.02)
    return None


def answers_readyz(pid: int, port: int, timeout: float = 30.0) -> bool:
    """New connections, GET /readyz on each, until one is answered 200 by worker `pid` (the
    kernel picks the socket: this is the replacement answering on its own socket)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as s:
            s.settimeout(2)
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: chaos\r\n\r\n")
            head = s.recv(4096)
            mine = s.getsockname()[1]
            # The connection is still open (keep-alive): whose is it?
            if head.startswith(b"HTTP/1.1 200") and connections_of([pid], port).get(mine) == pid:
                return True
        time.sleep(0.02)
    return False


def metric_value(base: str, name: str) -> float | None:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        text = httpx.get(base + "/metrics", timeout=5, trust_env=False).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def open_fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).num_fds()
    return total


# --- analysis -------------------------------------------------------------------------------


def per_second(outcomes: list[Outcome], seconds: float) -> list[int]:
    """Requests answered 200 in each second of the load."""
    counts = [0] * (int(seconds) + 2)
    for o in outcomes:
        if o.ok and 0 <= int(o.t1) < len(counts):
            counts[int(o.t1)] += 1
    return counts[: int(seconds) + 1]


def rate(counts: list[int], start: float, end: float) -> float | None:
    chosen = counts[max(0, int(start)) : max(0, int(end))]
    return round(sum(chosen) / len(chosen), 1) if chosen else None


def share(outcomes: list[Outcome], owner: dict[int, int], start: float, end: float) -> dict:
    """Successes per worker pid between `start` and `end` (seconds)."""
    counted: Counter[str] = Counter()
    for o in outcomes:
        if o.ok and start <= o.t1 < end:
            counted[str(owner.get(o.port or -1, "unknown"))] += 1
    return dict(counted)


def exposed(outcomes: list[Outcome], ports: set[int], at: float) -> list[Outcome]:
    """The requests on the connections `ports` (the faulty worker's) that ended after `at`:
    in flight then, or sent on such a connection after it, before the client saw it closed
    (after a failure a client opens a new connection)."""
    return [o for o in outcomes if o.prev_port in ports and o.t1 >= at]


def failures(outcomes: list[Outcome]) -> dict[str, int]:
    return dict(Counter(category(o) for o in outcomes if not o.ok))


def summary(outcomes: list[Outcome]) -> dict:
    return {
        "requests": len(outcomes),
        "succeeded": sum(o.ok for o in outcomes),
        "failed": sum(not o.ok for o in outcomes),
        "failures": failures(outcomes),
    }


# --- the faults -----------------------------------------------------------------------------


@dataclass
class Context:
    server: Server
    load: Load
    owners: Owners
    seconds: float
    workdir: Path
    details: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    recovery_s: float | None = None
    lost: str = "nothing"
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    finish: Callable[[], None] | None = None  # the analysis, once the load has stopped

    async def at(self, second: float) -> None:
        await asyncio.sleep(max(0.0, second - self.load.clock()))


async def kill_and_replace(ctx: Context, fault_at: float) -> tuple[int, int, float, set[int]]:
    """SIGKILL one worker at `fault_at`; wait for the replacement to answer /readyz on its
    own socket. (victim, survivor, time of the kill, the victim's client ports)."""
    await ctx.at(fault_at)
    victim, survivor = ctx.server.workers()[:2]
    ports = {p for p, pid in (await asyncio.to_thread(ctx.owners.sample)).items() if pid == victim}
    t_kill = ctx.load.clock()
    os.kill(victim, signal.SIGKILL)
    replacement = await asyncio.to_thread(wait_new_worker, ctx.server, {victim, survivor})
    t_listen = ctx.load.clock()
    ready = replacement is not None and await asyncio.to_thread(
        answers_readyz, replacement, ctx.server.port
    )
    t_ready = ctx.load.clock()
    ctx.details.update(
        victim=victim,
        survivor=survivor,
        replacement=replacement,
        killed_at_s=round(t_kill, 2),
        victim_connections=len(ports),
        replacement_listening_after_s=round(t_listen - t_kill, 2) if replacement else None,
        replacement_answers_readyz_after_s=round(t_ready - t_kill, 2) if ready else None,
    )
    ctx.recovery_s = round(t_ready - t_kill, 2) if ready else None
    ctx.checks["replacement answers /readyz on its own socket"] = bool(ready)
    return victim, survivor, t_kill, ports


def judge_kill(ctx: Context, victim: int, t_kill: float, ports: set[int]) -> None:
    """Failures only among the requests exposed on the killed worker's connections."""
    outcomes = ctx.load.outcomes
    on_victim = exposed(outcomes, ports, t_kill)
    exposed_ids = {id(o) for o in on_victim}
    outside = [o for o in outcomes if not o.ok and id(o) not in exposed_ids]
    survivors = [o for o in outcomes if o.prev_port is not None and o.prev_port not in ports]
    ctx.details.update(
        in_flight_on_victim=sum(o.t0 <= t_kill for o in on_victim),
        in_flight_on_victim_failed=sum(o.t0 <= t_kill and not o.ok for o in on_victim),
        sent_on_victim_after_kill=sum(o.t0 > t_kill for o in on_victim),
        sent_on_victim_after_kill_failed=sum(o.t0 > t_kill and not o.ok for o in on_victim),
        exposed_on_victim=len(on_victim),
        failed_on_victim=sum(not o.ok for o in on_victim),
        failed_elsewhere=len(outside),
        failed_elsewhere_how=failures(outside),
        failed_elsewhere_examples=[
            {
                "client": o.client,
                "t0": round(o.t0, 3),
                "t1": round(o.t1, 3),
                "error": o.error,
                "prev_port": o.prev_port,
                "owner": ctx.owners.owner.get(o.prev_port or -1),
            }
            for o in outside[:10]
        ],
        failed_on_victim_how=failures([o for o in on_victim if not o.ok]),
        survivor_connection_requests=len(survivors),
        survivor_connection_failures=sum(not o.ok for o in survivors),
    )
    ctx.checks["every request on the surviving worker's connections succeeded"] = not any(
        not o.ok for o in survivors
    )
    ctx.checks["failures only among requests on the killed worker's connections"] = not outside


def throughput(ctx: Context, t_fault: float) -> None:
    counts = per_second(ctx.load.outcomes, ctx.seconds)
    back = (ctx.details.get("replacement_answers_readyz_after_s") or 0) + t_fault
    ctx.details.update(
        ok_per_second=counts,
        rps_before=rate(counts, 1, t_fault),
        rps_after_recovery=rate(counts, back + 1, ctx.seconds),
        share_before=share(ctx.load.outcomes, ctx.owners.owner, 1, t_fault),
        share_after_recovery=share(ctx.load.outcomes, ctx.owners.owner, back + 1, ctx.seconds),
    )


async def fault_sigkill(ctx: Context) -> None:
    fault_at = min(5.0, ctx.seconds / 3)
    victim, _, t_kill, ports = await kill_and_replace(ctx, fault_at)
    await ctx.at(ctx.seconds)
    ctx.load.stopped.set()

    def finish() -> None:
        judge_kill(ctx, victim, t_kill, ports)
        throughput(ctx, t_kill)
        ctx.lost = (
            f"the {ctx.details['failed_on_victim']} requests in flight on the killed worker's "
            "connections (the client saw the errors)"
        )

    ctx.finish = finish


async def probe_new_connections(base: str, until: Callable[[], bool], timeout: float = 1.0):
    """GET /healthz on a new connection every 0.2 s until `until()`: (answered, timed out)."""
    answered = timed_out = 0
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, limits=limits, trust_env=False) as http:
        while not until():
            try:
                r = await http.get("/healthz", timeout=timeout)
                answered += r.status_code == 200
            except httpx.TimeoutException:
                timed_out += 1
            except httpx.HTTPError:
                timed_out += 1
            await asyncio.sleep(0.2)
    return answered, timed_out


async def fault_sigstop(ctx: Context, heartbeat: bool = False) -> None:
    """SIGSTOP one worker for STOP_SECONDS, then SIGCONT. With `heartbeat` (the server runs
    with a short VAE_WORKER_HEARTBEAT_TIMEOUT) the supervisor is expected to kill and replace
    it first; without, to leave it alone."""
    fault_at = min(4.0, ctx.seconds / 4)
    await ctx.at(fault_at)
    victim, survivor = ctx.server.workers()[:2]
    ports = {p for p, pid in (await asyncio.to_thread(ctx.owners.sample)).items() if pid == victim}
    t_stop = ctx.load.clock()
    os.kill(victim, signal.SIGSTOP)
    ctx.cleanup.append(lambda: _signal(victim, signal.SIGCONT))
    stop_for = min(STOP_SECONDS, ctx.seconds - fault_at - 2)
    watch: dict[str, Any] = {}

    async def replaced() -> None:
        """When the victim died, and when a replacement answered /readyz on its socket."""
        while ctx.load.clock() < t_stop + stop_for + 30:
            if not _alive(victim):
                watch["died"] = ctx.load.clock()
                break
            await asyncio.sleep(0.05)
        else:
            return
        pid = await asyncio.to_thread(wait_new_worker, ctx.server, {victim, survivor}, 30)
        if pid is not None and await asyncio.to_thread(answers_readyz, pid, ctx.server.port):
            watch["replacement"], watch["ready"] = pid, ctx.load.clock()

    watcher = asyncio.create_task(replaced()) if heartbeat else None
    answered, timed_out = await probe_new_connections(
        ctx.server.base, lambda: ctx.load.clock() > t_stop + stop_for - 1
    )
    await ctx.at(t_stop + stop_for)
    _signal(victim, signal.SIGCONT)
    t_cont = ctx.load.clock()
    if watcher is not None:
        await watcher
    await ctx.at(ctx.seconds)
    ctx.load.stopped.set()

    def finish() -> None:
        outcomes = ctx.load.outcomes
        hit = exposed(outcomes, ports, t_stop)
        stalled = [o for o in hit if o.t1 - o.t0 > 2.0]
        survivors = [o for o in outcomes if o.prev_port is not None and o.prev_port not in ports]
        during = [o for o in survivors if t_stop <= o.t0 < t_stop + stop_for]
        last_stalled = max((o.t1 for o in stalled), default=t_cont)
        ctx.details.update(
            victim=victim,
            stopped_at_s=round(t_stop, 2),
            stopped_for_s=round(t_cont - t_stop, 2),
            victim_connections=len(ports),
            requests_on_victim_connections=len(hit),
            stalled=len(stalled),
            stalled_failed=sum(not o.ok for o in stalled),
            stalled_failed_how=failures([o for o in stalled if not o.ok]),
            stalled_failed_examples=[
                {"t0": round(o.t0, 3), "t1": round(o.t1, 3), "error": o.error}
                for o in stalled
                if not o.ok
            ][:10],
            max_latency_s=round(max((o.t1 - o.t0 for o in outcomes), default=0), 2),
            new_connections_during_stop={"answered": answered, "timed_out_1s": timed_out},
            survivor_requests_during_stop=len(during),
            survivor_failures=sum(not o.ok for o in survivors),
            victim_alive_after=_alive(victim),
            worker_restarts=metric_value(ctx.server.base, "vae_worker_restarts_total"),
            ok_per_second=per_second(outcomes, ctx.seconds),
        )
        ctx.checks["every request on the other worker's connections succeeded"] = not any(
            not o.ok for o in survivors
        )
        if heartbeat:
            died, ready = watch.get("died"), watch.get("ready")
            ctx.details.update(
                killed_by_supervisor_after_s=round(died - t_stop, 2) if died else None,
                replacement=watch.get("replacement"),
                replacement_answers_readyz_after_stop_s=round(ready - t_stop, 2) if ready else None,
            )
            ctx.checks["the supervisor killed the stopped worker"] = died is not None
            ctx.checks["replacement answers /readyz on its own socket"] = ready is not None
            ctx.recovery_s = round(ready - t_stop, 2) if ready else None
            ctx.lost = (
                f"the {sum(not o.ok for o in hit)} requests stalled on its connections, failed "
                "when the supervisor killed it"
            )
        else:
            ctx.recovery_s = round(max(0.0, last_stalled - t_cont), 2)
            ctx.checks["stalled requests completed after SIGCONT"] = all(o.ok for o in stalled)
            ctx.checks["the supervisor left the stopped worker alone"] = _alive(victim)
            ctx.lost = (
                f"nothing; {len(stalled)} requests on its connections waited ~{stop_for:g} s, "
                f"and {timed_out} of {answered + timed_out} new connections (probes) timed out"
            )

    ctx.finish = finish


def _alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and not _zombie(pid)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    return False


async def fault_sigstop_heartbeat(ctx: Context) -> None:
    await fault_sigstop(ctx, heartbeat=True)


async def rude_client(base: str, port: int, png: bytes, mode: str) -> None:
    if mode == "stream":  # reads the first bytes of a big PNG, then hangs up
        async with (
            httpx.AsyncClient(base_url=base, timeout=10, trust_env=False) as http,
            http.stream("GET", "/sample?n=64&scale=4&seed=1") as r,
        ):
            async for _ in r.aiter_raw():
                break
        return
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if mode == "upload":  # half an upload, then gone
            writer.write(
                b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                + f"Content-Length: {len(png)}\r\n\r\n".encode()
                + png[: len(png) // 2]
            )
        else:  # a whole request, and gone before the answer
            writer.write(b"GET /sample?n=64&scale=4&seed=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
    finally:
        writer.transport.abort()  # RST, not a polite FIN


async def fault_disconnects(ctx: Context) -> None:
    start, end = min(3.0, ctx.seconds / 4), min(ctx.seconds - 3, 9.0)
    await ctx.at(start)
    pids = ctx.server.workers()
    fds_before = open_fds(pids)
    sent: Counter[str] = Counter()

    async def rude(i: int) -> None:
        modes = ("stream", "upload", "abort")
        n = 0
        while ctx.load.clock() < end and n < 1000:
            mode = modes[(i + n) % 3]
            with contextlib.suppress(httpx.HTTPError, OSError):
                await rude_client(ctx.server.base, ctx.server.port, ctx.load.png, mode)
            sent[mode] += 1
            n += 1
            await asyncio.sleep(0.02)

    await asyncio.gather(*(rude(i) for i in range(8)))
    await ctx.at(ctx.seconds)
    ctx.load.stopped.set()

    def finish() -> None:
        time.sleep(1.0)
        fds_after = open_fds(pids)
        log = ctx.server.log()
        ctx.details.update(
            rude_requests=dict(sent),
            open_fds_before=fds_before,
            open_fds_after=fds_after,
            tracebacks_in_log=log.count("Traceback"),
            same_workers=ctx.server.workers() == pids,
            worker_restarts=metric_value(ctx.server.base, "vae_worker_restarts_total"),
        )
        ctx.checks["no load request failed"] = all(o.ok for o in ctx.load.outcomes)
        ctx.checks["no traceback in the server log"] = ctx.details["tracebacks_in_log"] == 0
        ctx.checks["the same workers serve"] = bool(ctx.details["same_workers"])
        ctx.checks["open descriptors back (within 8)"] = fds_after <= fds_before + 8
        ctx.recovery_s = 0.0
        ctx.lost = f"nothing ({sum(sent.values())} rude requests)"

    ctx.finish = finish


async def fault_burst(ctx: Context) -> None:
    limit = int(ctx.server.extra.get("max_concurrency", 64))
    count = 10 * limit
    await ctx.at(min(4.0, ctx.seconds / 3))
    t_burst = ctx.load.clock()
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    probe_times: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=ctx.server.base, trust_env=False) as http:
            while not done.is_set():
                t = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):
                    r = await http.get("/readyz", timeout=10)
                    if r.status_code == 200:
                        probe_times.append(time.monotonic() - t)
                await asyncio.sleep(0.1)

    async def one(http: httpx.AsyncClient, k: int) -> tuple[str, float]:
        t = time.monotonic()
        try:
            r = await http.get(f"/sample?n=16&seed={k % 97}")
        except httpx.HTTPError as exc:
            return describe(exc).split(":")[0], time.monotonic() - t
        kind = str(r.status_code)
        if r.status_code == 503 and "retry-after" not in r.headers:
            kind = "503 without Retry-After"
        return kind, time.monotonic() - t

    prober = asyncio.create_task(probe())
    async with httpx.AsyncClient(
        base_url=ctx.server.base, timeout=CLIENT_TIMEOUT, limits=limits, trust_env=False
    ) as http:
        answers = await asyncio.gather(*(one(http, k) for k in range(count)))
    t_end = ctx.load.clock()
    done.set()
    await prober
    await ctx.at(ctx.seconds)
    ctx.load.stopped.set()

    def finish() -> None:
        kinds = Counter(kind for kind, _ in answers)
        refused = [s for kind, s in answers if kind == "503"]
        busy = [o for o in ctx.load.outcomes if o.status == 503]
        last_busy = max((o.t1 for o in busy), default=t_burst)
        ctx.details.update(
            burst_requests=count,
            burst_answers=dict(kinds),
            burst_seconds=round(t_end - t_burst, 2),
            slowest_503_s=round(max(refused, default=0), 3),
            probe_max_s=round(max(probe_times, default=0), 3),
            probes=len(probe_times),
            load_503=len(busy),
        )
        ctx.checks["burst answered only 200 or 503 with Retry-After"] = set(kinds) <= {
            "200",
            "503",
        }
        ctx.checks["load saw only 200 or 503"] = all(
            o.status in (200, 503) for o in ctx.load.outcomes
        )
        ctx.checks["probes answered during the burst"] = len(probe_times) > 0
        ctx.recovery_s = round(max(0.0, last_busy - t_end), 2)
        ctx.lost = (
            f"nothing: {kinds.get('503', 0)} of {count} burst requests refused at once "
            "with 503 + Retry-After, to retry"
        )
        # The load's own 503s are counted with the load (failed, and how).

    ctx.finish = finish


def make_unwritable(directory: str) -> Callable[[], None]:
    """Make `directory` refuse new files; return how to undo it. As root, mode bits do not
    stop writes: the immutable attribute does (ext4, xfs, btrfs...)."""
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", directory], check=True)

        def undo() -> None:
            subprocess.run(["chattr", "-i", directory], check=False)

        return undo
    mode = os.stat(directory).st_mode & 0o777
    os.chmod(directory, 0o500)
    return lambda: os.chmod(directory, mode)


async def fault_metrics_unwritable(ctx: Context) -> None:
    directory = ctx.server.metrics_dir
    if directory is None:
        raise RuntimeError("the server's PROMETHEUS_MULTIPROC_DIR was not found")
    await ctx.at(min(3.0, ctx.seconds / 4))
    ctx.cleanup.append(make_unwritable(directory))
    try:
        Path(directory, ".chaos").touch()
        Path(directory, ".chaos").unlink()
        refuses = False
    except OSError:
        refuses = True
    ctx.details["folder_refuses_new_files"] = refuses
    ctx.checks["the folder refuses new files"] = refuses
    scrapes: Counter[str] = Counter()
    scrape_failures: list[tuple[float, float]] = []
    stop_scraping = asyncio.Event()

    async def scrape() -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=ctx.server.base, limits=limits, trust_env=False
        ) as http:
            while not stop_scraping.is_set():
                t0 = ctx.load.clock()
                try:
                    r = await http.get("/metrics", timeout=10)
                    scrapes[str(r.status_code)] += 1
                    if r.status_code != 200:
                        scrape_failures.append((t0, ctx.load.clock()))
                except httpx.HTTPError as exc:
                    scrapes[type(exc).__name__] += 1
                    scrape_failures.append((t0, ctx.load.clock()))
                await asyncio.sleep(0.3)

    scraper = asyncio.create_task(scrape())
    victim, _, t_kill, ports = await kill_and_replace(ctx, min(6.0, ctx.seconds / 2))
    await ctx.at(ctx.seconds)
    stop_scraping.set()
    await scraper
    ctx.load.stopped.set()

    def finish() -> None:
        judge_kill(ctx, victim, t_kill, ports)
        log = ctx.server.log()
        fell_back = "is not writable" in log
        ctx.details.update(
            metrics_scrapes=dict(scrapes),
            replacement_fell_back=fell_back,
            worker_restarts=metric_value(ctx.server.base, "vae_worker_restarts_total"),
        )
        # A scrape on a new connection the kernel gave the killed worker just then fails
        # like any request in flight on it; every other one must be a 200.
        on_victim = [f for f in scrape_failures if f[0] <= t_kill + 0.1 and f[1] >= t_kill]
        ctx.details["metrics_scrapes_in_flight_on_the_killed_worker"] = len(on_victim)
        ctx.checks["every /metrics scrape answered 200 (one may be on the killed worker)"] = (
            len(scrape_failures) == len(on_victim) <= 1
        )
        ctx.checks["the replacement served without the folder"] = fell_back and bool(
            ctx.checks.get("replacement answers /readyz on its own socket")
        )
        ctx.lost = (
            "the requests in flight on the killed worker; the replacement's counts are its own "
            "(missing from the other worker's /metrics) until the folder is writable and the "
            "server restarts"
        )

    ctx.finish = finish


def served_digests(base: str, png: bytes, rounds: int = 6) -> set[str]:
    """SHA-256 of a seeded /sample and an /encode, over new connections (both workers)."""
    seen = set()
    for _ in range(rounds):
        with httpx.Client(base_url=base, timeout=30, trust_env=False) as http:
            a = http.get("/sample?n=9&seed=7").content
            b = http.post("/encode", files={"file": ("d.png", png, "image/png")}).content
            seen.add(hashlib.sha256(a + b).hexdigest())
    return seen


async def fault_model_changed(ctx: Context) -> None:
    png = ctx.load.png
    before = await asyncio.to_thread(served_digests, ctx.server.base, png)
    await ctx.at(min(2.0, ctx.seconds / 5))
    target = ctx.server.models / "vae" / "decoder.onnx"
    other = ctx.server.models / "ae" / "decoder.onnx"
    # A valid ONNX graph, but not the one metadata.json's sha256 names.
    data = other.read_bytes() if other.is_file() else target.read_bytes() + b"\0"
    target.write_bytes(data)
    after = await asyncio.to_thread(served_digests, ctx.server.base, png)
    ctx.checks["the served model did not change"] = after == before and len(before) == 1
    await ctx.at(min(5.0, ctx.seconds / 2))
    victim = ctx.server.workers()[0]
    t_kill = ctx.load.clock()
    os.kill(victim, signal.SIGKILL)
    status = await asyncio.to_thread(_wait_exit, ctx.server.process, 60)
    t_exit = ctx.load.clock()
    ctx.load.stopped.set()
    log = ctx.server.log()
    refused = [line for line in log.splitlines() if "could not start" in line]
    fresh_status, fresh_message = await asyncio.to_thread(fresh_start, ctx.server.models, ctx)
    ctx.details.update(
        served_digests_before=sorted(before),
        served_digests_after=sorted(after),
        killed_at_s=round(t_kill, 2),
        server_exit_status=status,
        server_stopped_after_s=round(t_exit - t_kill, 2),
        supervisor_message=refused[0][:300] if refused else None,
        fresh_start_status=fresh_status,
        fresh_start_message=fresh_message,
    )
    ctx.checks["the replacement refused the changed file (sha256)"] = bool(
        refused and "sha256" in refused[0]
    )
    ctx.checks["the server stopped with STARTUP_FAILURE (3)"] = status == 3
    ctx.checks["a fresh start refuses it too"] = fresh_status not in (0, None) and (
        "sha256" in (fresh_message or "")
    )
    ctx.recovery_s = None

    def finish() -> None:
        after_exit = [o for o in ctx.load.outcomes if not o.ok and o.t0 >= t_exit - 0.5]
        ctx.details.update(failures_once_stopping=failures(after_exit))
        ctx.lost = (
            "by design the server stops (exit 3, the loader's sha256 message): the requests in "
            "flight on the killed worker, and new ones until the orchestrator's restart, which "
            "refuses the file too"
        )

    ctx.finish = finish


# --- lifecycle: versions changing under load ---------------------------------------------------


def versioned_layout(models: Path) -> None:
    """vae's files into vae/1/ (a model with version folders); the other models stay flat."""
    flat = models / "vae"
    first = models / ".vae-1"
    os.rename(flat, first)
    flat.mkdir()
    os.rename(first, flat / "1")


def publish(models: Path, version: int, broken: bool = False) -> None:
    """A new version of vae (vae/1's files, hard-linked) the safe way: complete elsewhere on
    the same filesystem, then renamed into place. `broken`: decoder.onnx cut short."""
    staging = models / ".staging" / str(version)
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(exist_ok=True)
    shutil.copytree(models / "vae" / "1", staging, copy_function=os.link)
    if broken:
        onnx = staging / "decoder.onnx"
        data = onnx.read_bytes()
        onnx.unlink()  # a new file, not the hard link's
        onnx.write_bytes(data[: len(data) // 2])
    os.rename(staging, models / "vae" / str(version))


def oip_encoder_body(models: Path) -> dict:
    """An OIP infer body for vae-encoder: one zero image of vae's input shape."""
    meta = json.loads((models / "vae" / "1" / "metadata.json").read_text())
    shape = [1, *meta["input"]["shape"]]
    data = [0.0] * (shape[1] * shape[2] * shape[3])
    return {
        "inputs": [
            {"name": meta["encoder"]["input"], "datatype": "FP32", "shape": shape, "data": data}
        ]
    }


def workers_rss_mb(server: Server) -> dict[int, float]:
    rss = {}
    for pid in server.workers():
        with contextlib.suppress(psutil.Error):
            rss[pid] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    return rss


@dataclass
class Change:
    op: str
    model: str
    version: str | None
    t0: float
    t1: float
    status: int
    seconds: float | None  # the server's: from the request to every worker serving it
    error: str | None


class Changes:
    """The load / unload calls of the lifecycle fault, and which vae version was served when."""

    def __init__(self, ctx: Context, http: httpx.AsyncClient) -> None:
        self.ctx, self.http = ctx, http
        self.done: list[Change] = []
        self.windows: list[tuple[float, float, str, str]] = []  # t0, t1, old, new (vae)
        self.served = "1"

    async def call(self, op: str, model: str, version: str | None = None) -> Change:
        body = {"parameters": {"version": version}} if version else {}
        t0 = self.ctx.load.clock()
        r = await self.http.post(f"/v2/repository/models/{model}/{op}", json=body)
        t1 = self.ctx.load.clock()
        answer = r.json() if r.headers.get("content-type") == "application/json" else {}
        change = Change(
            op, model, version, t0, t1, r.status_code, answer.get("seconds"), answer.get("error")
        )
        self.done.append(change)
        if model == "vae" and r.status_code == 200 and answer.get("served"):
            self.windows.append((t0, t1, self.served, answer["served"]))
            self.served = answer["served"]
        return change

    def allowed(self, t0: float, t1: float) -> set[str]:
        """The vae versions served at some moment between t0 and t1 (a change counts as both
        its old and new version from its call to its answer)."""
        served = "1"
        allowed = set()
        for w0, w1, old, new in self.windows:
            if w1 < t0:
                served = new
            elif w0 <= t1:
                allowed |= {old, new}
        return allowed | {served}


async def probe_versions(base: str, rounds: int = 4) -> set[str]:
    """X-Model-Version of /sample answers on new connections (so every worker answers)."""
    seen = set()
    for _ in range(rounds):
        async with httpx.AsyncClient(base_url=base, timeout=30, trust_env=False) as http:
            r = await http.get("/sample?n=1&seed=1")
            seen.add(r.headers.get("x-model-version") or f"HTTP {r.status_code}")
    return seen


async def poll_ready(base: str, stop_at: asyncio.Event, answers: list[int]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10, trust_env=False) as http:
        while not stop_at.is_set():
            try:
                answers.append((await http.get("/readyz")).status_code)
            except httpx.HTTPError:
                answers.append(0)
            await asyncio.sleep(0.25)


async def fault_lifecycle(ctx: Context) -> None:
    server, models = ctx.server, ctx.server.models
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    has_ae = (models / "ae").is_dir()
    await ctx.at(1.0)
    rss_before = workers_rss_mb(server)
    readiness: list[int] = []
    stop_polling = asyncio.Event()
    poller = asyncio.create_task(poll_ready(server.base, stop_polling, readiness))
    probes_wrong: list[tuple[str, list[str]]] = []
    cycles, good = 0, 1
    rss_by_cycle = {0: round(sum(rss_before.values()), 1)}  # all workers, MB, every 10 cycles
    async with httpx.AsyncClient(
        base_url=server.base, timeout=120, headers=admin, trust_env=False
    ) as http:
        changes = Changes(ctx, http)
        while cycles < LIFECYCLE_CYCLES and ctx.load.clock() < ctx.seconds - 3:
            good += 1
            await asyncio.to_thread(publish, models, good)
            await changes.call("load", "vae", str(good))
            seen = await probe_versions(server.base)
            if seen != {str(good)}:
                probes_wrong.append((str(good), sorted(seen)))
            await asyncio.to_thread(publish, models, 1000 + good, True)
            await changes.call("load", "vae", str(1000 + good))
            shutil.rmtree(models / "vae" / str(1000 + good))
            await changes.call("load", "vae", str(good - 1))  # roll back
            if has_ae:
                await changes.call("unload", "ae")
                await changes.call("load", "ae")
            cycles += 1
            if cycles % 10 == 0:
                rss_by_cycle[cycles] = round(sum(workers_rss_mb(server).values()), 1)
    stop_polling.set()
    await poller
    await asyncio.sleep(0.5)
    rss_after = workers_rss_mb(server)
    ctx.load.stopped.set()
    ctx.recovery_s = None
    done = changes.done
    good_loads = [
        c
        for c in done
        if c.op == "load" and c.model == "vae" and c.version and int(c.version) < 1000
    ]
    refused = [c for c in done if c.version and int(c.version) >= 1000]
    switch = sorted(c.seconds for c in good_loads if c.seconds is not None)

    def finish() -> None:
        outcomes = ctx.load.outcomes
        untagged = [o for o in outcomes if o.ok and o.version is None]
        mismatched = [
            (o.kind, o.version, sorted(changes.allowed(o.t0, o.t1)))
            for o in outcomes
            if o.ok and o.version is not None and o.version not in changes.allowed(o.t0, o.t1)
        ]
        ctx.details.update(
            cycles=cycles,
            changes=len(done),
            switch_s_median=switch[len(switch) // 2] if switch else None,
            switch_s_max=switch[-1] if switch else None,
            rss_mb_before=rss_before,
            rss_mb_after=rss_after,
            rss_mb_by_cycle=rss_by_cycle,
            readyz_not_200=sum(code != 200 for code in readiness),
            readyz_polls=len(readiness),
            answers_by_version=dict(Counter(o.version for o in outcomes if o.ok)),
            answers_by_kind=dict(Counter(o.kind for o in outcomes if o.ok)),
            mismatched_tags=mismatched[:5],
            untagged=len(untagged),
            probes_wrong=probes_wrong[:5],
            refusal_example=refused[0].error[:300] if refused and refused[0].error else None,
        )
        before, after = sum(rss_before.values()), sum(rss_after.values())
        ctx.details["rss_mb_growth_per_cycle"] = (
            round((after - before) / cycles, 2) if cycles else None
        )
        ctx.checks["zero non-2xx answers"] = all(o.ok for o in outcomes) and bool(outcomes)
        ctx.checks["every answer tagged with a version served then"] = not mismatched and (
            not untagged
        )
        ctx.checks["every good load 200, every worker serving it after"] = (
            all(c.status == 200 for c in done if c not in refused) and not probes_wrong
        )
        ctx.checks["every broken version refused with 400 naming the file"] = bool(refused) and all(
            c.status == 400 and "decoder.onnx" in (c.error or "") for c in refused
        )
        ctx.checks["/readyz 200 throughout"] = bool(readiness) and all(
            code == 200 for code in readiness
        )
        # Measured over 50 cycles (RELIABILITY.md): a few MB in the first cycles, then flat.
        growth = ctx.details["rss_mb_growth_per_cycle"]
        ctx.checks["workers' RSS grows < 2 MB per cycle"] = growth is not None and growth < 2
        ctx.lost = "nothing" if ctx.checks["zero non-2xx answers"] else "see failures"

    ctx.finish = finish


def _wait_exit(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def fresh_start(models: Path, ctx: Context) -> tuple[int | None, str | None]:
    """Start a new server on the changed folder: its exit status and the loader's message."""
    log_path = ctx.workdir / "fresh-start.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(free_port())],
            cwd=REPO,
            env={**os.environ, "VAE_MODEL_DIR": str(models), "VAE_WORKERS": str(WORKERS)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            status = _wait_exit(process, START_TIMEOUT)
        finally:
            stop(process)
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if "sha256" in line]
    return status, (lines[0][:300] if lines else None)


INJECT: dict[str, Callable[[Context], Awaitable[None]]] = {
    "sigkill": fault_sigkill,
    "sigstop": fault_sigstop,
    "sigstop-heartbeat": fault_sigstop_heartbeat,
    "disconnects": fault_disconnects,
    "burst": fault_burst,
    "metrics-unwritable": fault_metrics_unwritable,
    "model-changed": fault_model_changed,
    "lifecycle": fault_lifecycle,
}
ENV = {
    "sigstop-heartbeat": {"VAE_WORKER_HEARTBEAT_TIMEOUT": "3"},
    "lifecycle": {"VAE_ADMIN_KEYS": ADMIN_KEY},
}
# Changes to the private copy of the models before the server starts.
PREPARE: dict[str, Callable[[Path], None]] = {"lifecycle": versioned_layout}
DESCRIPTION = {
    "sigkill": "SIGKILL one worker",
    "sigstop": "SIGSTOP one worker for 10 s, then SIGCONT",
    "sigstop-heartbeat": "SIGSTOP one worker, VAE_WORKER_HEARTBEAT_TIMEOUT=3",
    "disconnects": "clients hang up mid-response and mid-upload (8 rude clients)",
    "burst": "10 x VAE_MAX_CONCURRENCY requests at once",
    "metrics-unwritable": "Prometheus multiprocess folder made unwritable, then a worker killed",
    "model-changed": "a model file rewritten on disk after start, then a worker killed",
    "lifecycle": "versions published, loaded, refused (broken), rolled back; a model unloaded "
    "and loaded",
}


async def _run(ctx: Context, name: str) -> None:
    load_task = asyncio.create_task(ctx.load.run())
    await asyncio.wait_for(ctx.load.ready.wait(), timeout=60)
    try:
        await asyncio.wait_for(INJECT[name](ctx), timeout=ctx.seconds + 120)
    finally:
        ctx.load.stopped.set()
        await asyncio.wait_for(load_task, timeout=CLIENT_TIMEOUT + 10)


def run_fault(
    name: str,
    models: Path,
    workdir: Path,
    seconds: float | None = None,
    concurrency: int = CONCURRENCY,
) -> dict:
    """Start a server over a private copy of `models`, load it, inject fault `name`; the
    result (JSON-ready)."""
    seconds = seconds or SECONDS[name]
    copy = workdir / f"{name}-models"
    shutil.copytree(models, copy)
    if name in PREPARE:
        PREPARE[name](copy)
    server = start_server(copy, workdir, name, **ENV.get(name, {}))
    server.extra["max_concurrency"] = int(os.environ.get("VAE_MAX_CONCURRENCY", "64"))
    owners = Owners(server.process.pid, server.port)
    oip = oip_encoder_body(copy) if name == "lifecycle" else None
    load = Load(server.base, concurrency, digit_png(), oip_body=oip)
    ctx = Context(server, load, owners, seconds, workdir)
    started = time.monotonic()
    try:
        owners.start()
        asyncio.run(_run(ctx, name))
        owners.halt.set()
        if ctx.finish is not None:
            ctx.finish()
    finally:
        owners.halt.set()
        for undo in reversed(ctx.cleanup):
            with contextlib.suppress(Exception):
                undo()
        tree = process_tree(server.process.pid)
        exit_status = stop(server.process)
    result = {
        "fault": name,
        "description": DESCRIPTION[name],
        "seconds": seconds,
        "concurrency": concurrency,
        **summary(ctx.load.outcomes),
        "recovery_s": ctx.recovery_s,
        "lost": ctx.lost,
        "checks": ctx.checks,
        "passed": all(ctx.checks.values()),
        "details": ctx.details,
        "server_processes": len(tree),
        "server_exit_status": exit_status,
        "wall_s": round(time.monotonic() - started, 1),
        "log_tail": log_tail(server.log_path, 15),
    }
    return result


# --- report ---------------------------------------------------------------------------------


def table(results: list[dict]) -> str:
    rows = [
        "| Fault | Requests sent | Succeeded | Failed, and how | Recovery | Lost |",
        "| --- | ---: | ---: | --- | --- | --- |",
    ]
    for r in results:
        how = ", ".join(f"{n} {kind}" for kind, n in sorted(r["failures"].items())) or "-"
        recovery = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.2f} s"
        mark = "" if r["passed"] else " (**checks failed**)"
        rows.append(
            f"| {r['description']}{mark} | {r['requests']} | {r['succeeded']} | "
            f"{r['failed']}{': ' + how if r['failed'] else ''} | {recovery} | {r['lost']} |"
        )
    return "\n".join(rows)


def model_dir_or_tiny(requested: str | None, scratch: Path) -> Path:
    if requested:
        return Path(requested)
    shipped = REPO / "models"
    if (shipped / "vae" / "metadata.json").is_file():
        return shipped
    from harness.models import export_tiny_models  # torch: the train extra

    return export_tiny_models(scratch / "tiny")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.chaos", description=__doc__)
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, in order")
    parser.add_argument("--seconds", type=float, help="seconds of load per fault (default: each")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--models", help="model folder (default: models/ or tiny models)")
    parser.add_argument("--json", default="artifacts/chaos.json", help="where to write results")
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in INJECT]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="vae-chaos-") as scratch:
        workdir = Path(scratch)
        models = model_dir_or_tiny(args.models, workdir)
        for name in faults:
            print(f"chaos: {name} ({DESCRIPTION[name]}) ...", file=sys.stderr, flush=True)
            result = run_fault(name, models, workdir, args.seconds, args.concurrency)
            results.append(result)
            print(
                f"chaos: {name}: {result['succeeded']}/{result['requests']} ok, checks "
                f"{'passed' if result['passed'] else 'FAILED: ' + str(result['checks'])}",
                file=sys.stderr,
                flush=True,
            )
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "models": str(models),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "results": results,
    }
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str))
        print(f"chaos: results in {path}", file=sys.stderr)
    print(table(results))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
