"""Several uvicorn worker processes on one port, each with its own listening socket, kept alive.

Why not uvicorn's own `--workers`: its workers share one listening socket, and whichever
process wakes first accepts every connection waiting (uvloop accepts in a loop). A burst of
keep-alive connections (a load balancer's pool, a benchmark's 32 clients) then often lands on
one worker while the other idles: measured on 2 cores, /encode at 32 connections ran at
~1,000 requests/s in such runs against ~1,750 when the connections were spread. Here each
worker binds its own socket with SO_REUSEPORT, and the kernel spreads new connections evenly
over the workers' sockets. A worker only listens once its models are loaded (uvicorn calls
listen() after the lifespan start-up), so no connection waits on a worker still starting.

The parent only supervises: it reserves the port (bound, not listening, so a port in use fails
once, here, and port 0 picks one port for all), starts the workers, forwards SIGTERM / SIGINT
to each once (they drain as a single uvicorn would), and exits 0 when all of them have exited
cleanly.

Self-healing (RELIABILITY.md, "Worker faults"). A worker that exits on its own (OOM kill,
crash, kill -9) is replaced on a fresh SO_REUSEPORT socket of its own while the others keep
serving: the kernel closes the dead worker's socket, so new connections only reach the
listening ones, and the replacement takes its share again once its models are loaded (the
others then close each keep-alive connection after its next response, SHED_SIGNAL, so that the
clients that moved to them reconnect and spread over every socket again).
Restarts back off (0.5 s doubling to 10 s); more than VAE_MAX_WORKER_RESTARTS of them within
VAE_WORKER_RESTART_WINDOW seconds stop the server with exit status 1, for the orchestrator to
take over. A worker that cannot load its models (uvicorn's start-up failure, exit status
STARTUP_FAILURE, at start-up or as a replacement) stops the server with the loader's message:
a replacement cannot do better than the one that failed. Each worker beats a heartbeat into
shared memory from its event loop; one whose loop has not run for VAE_WORKER_HEARTBEAT_TIMEOUT
seconds (stopped, deadlocked) is killed and replaced.

/metrics is aggregated over the workers (prometheus_client's multiprocess mode, in a temporary
folder the parent removes at exit); the supervisor writes its own two series there,
vae_worker_restarts_total and vae_workers_live (plus vae_workers_configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.process.lifecycle import STATE_ENV, Coordinator

if TYPE_CHECKING:
    from service.process.settings import Settings

APP = "service.app:create_app"
STARTUP_FAILURE = 3  # uvicorn's exit status when the app's start-up fails
RESTART_LIMIT_EXIT = 1  # too many restarts within the window
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
HEARTBEAT_INTERVAL = 0.25  # seconds between a worker's heartbeats
# Sent by the supervisor to the workers already serving once a replacement serves: they close
# each keep-alive connection after its next response, and the clients' reconnections spread
# over every worker again.
SHED_SIGNAL = signal.SIGUSR1
_POLL = 0.1  # the supervisor's loop, seconds
_PR_SET_PDEATHSIG = 1

logger = logging.getLogger("service")


@dataclass(frozen=True)
class RestartPolicy:
    """When the supervisor replaces a worker that died, and when it gives up."""

    max_restarts: int = 5  # within `window` seconds; one more stops the server (0: never)
    window: float = 60.0
    heartbeat_timeout: float = 30.0  # 0: no heartbeat check
    backoff_start: float = 0.5
    backoff_cap: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RestartPolicy:
        return cls(
            max_restarts=settings.max_worker_restarts,
            window=settings.worker_restart_window,
            heartbeat_timeout=settings.worker_heartbeat_timeout,
        )

    def delay(self, recent: int) -> float:
        """Seconds before the `recent`-th restart within the window (1, 2, ...)."""
        return float(min(self.backoff_cap, self.backoff_start * 2 ** max(0, recent - 1)))


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker if the supervisor dies (even by SIGKILL), never orphan it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _writable(directory: str) -> bool:
    """Whether a new file can be created in `directory` (root ignores mode bits, so try it)."""
    try:
        fd, path = tempfile.mkstemp(dir=directory, prefix=".probe-")
    except OSError:
        return False
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)
    return True


class _FirstError(logging.Handler):
    """Keeps the first ERROR logged by the service or uvicorn: the loader's message
    ("cannot start: ...") when a worker's start-up fails."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.message is None or record.name == "service":
            with contextlib.suppress(Exception):
                text = record.getMessage()
                if self.message is None or text.startswith("cannot start"):
                    self.message = text


def _worker(
    host: str,
    port: int,
    options: dict[str, Any],
    slot: int,
    beats: Any,
    report: Connection,
    control: Connection,
) -> None:
    """One worker process: its own SO_REUSEPORT socket, one uvicorn server, a heartbeat, and
    its end of the control pipe (model loads: service/process/lifecycle.py)."""
    # uvicorn re-raises the SIGTERM it drained on: exit 0, like the single-process server.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(SHED_SIGNAL, signal.SIG_IGN)  # until the server can act on it
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only; it forwards it once
    _die_with_parent()
    from service.inference.sessions import limit_malloc_arenas

    limit_malloc_arenas()
    from service.process import lifecycle

    lifecycle.channel = control  # the app's lifespan finds it there
    directory = os.environ.get(METRICS_DIR_ENV)
    if directory and not _writable(directory):
        # Serving beats metrics: this worker's counts stay its own (missing from the others'
        # /metrics) rather than the worker failing on its first metric.
        os.environ.pop(METRICS_DIR_ENV)
        print(
            f"vae-serve: worker {os.getpid()}: {directory} is not writable; this worker's "
            "metrics are its own, missing from the other workers' /metrics",
            file=sys.stderr,
            flush=True,
        )
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, plus a heartbeat from the event loop once it serves (listens)."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(SHED_SIGNAL, self.shed)
                self._heartbeat = loop.create_task(self.beat())

        def shed(self) -> None:
            """Have every keep-alive connection reconnect after its current or next response
            (http_protocol.py, `shed`), so that the kernel spreads them over every worker."""
            for connection in list(self.server_state.connections):
                shed = getattr(connection, "shed", None)
                if shed is not None:
                    shed()

        async def beat(self) -> None:
            while True:
                beats[slot] = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes
                await asyncio.sleep(HEARTBEAT_INTERVAL)

    sock = _socket(host, port)  # bound here; uvicorn listens once the models are loaded
    server = Server(uvicorn.Config(APP, factory=True, **options))
    errors = _FirstError()
    for name in ("service", "uvicorn.error"):  # after Config: it configures logging
        logging.getLogger(name).addHandler(errors)
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:
        if server.started or exc.code in (0, None):
            raise
    if not server.started:
        with contextlib.suppress(OSError):
            report.send(errors.message or "the worker's start-up failed (see its log above)")
        sys.exit(STARTUP_FAILURE)


def _how(exitcode: int) -> str:
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-exitcode).name}"
        return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class _SupervisorMetrics:
    """The supervisor's series, written into the workers' multiprocess folder, so that every
    worker's /metrics includes them."""

    def __init__(self, configured: int) -> None:
        self.restarts: Any = None
        self.live: Any = None
        with contextlib.suppress(Exception):  # metrics never stop the server
            from prometheus_client import Counter, Gauge, values

            if not getattr(values.ValueClass, "_multiprocess", False):
                # Imported before PROMETHEUS_MULTIPROC_DIR was set: choose again.
                values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
            self.restarts = Counter(
                "vae_worker_restarts",
                "worker processes the supervisor started to replace ones that exited",
                registry=None,
            )
            self.live = Gauge(
                "vae_workers_live",
                "worker processes serving (listening, heartbeat current)",
                registry=None,
                multiprocess_mode="max",
            )
            configured_gauge = Gauge(
                "vae_workers_configured",
                "worker processes the supervisor keeps running (VAE_WORKERS)",
                registry=None,
                multiprocess_mode="max",
            )
            configured_gauge.set(configured)
            self.live.set(0)

    def restarted(self) -> None:
        if self.restarts is not None:
            with contextlib.suppress(Exception):
                self.restarts.inc()

    def serving(self, count: int) -> None:
        if self.live is not None:
            with contextlib.suppress(Exception):
                self.live.set(count)


@dataclass
class _Slot:
    """One worker position: the process in it now, or the time its replacement is due."""

    index: int
    process: BaseProcess | None = None
    report: Connection | None = None
    control: Connection | None = None  # the supervisor's end of the worker's control pipe
    started_at: float = 0.0
    serving: bool = False
    killed_for_heartbeat: bool = False
    died_at: float | None = None
    replacing: int | None = None  # the pid this one replaces
    restart_at: float | None = None


def _say(message: str) -> None:
    print(f"vae-serve: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """The parent process: starts the workers, then reacts to one event at a time, each with a
    method of its own: a worker starting to serve (`serving`), a heartbeat gone quiet
    (`heartbeat`), a worker's death (`death`), a replacement due (`start`), SIGTERM / SIGINT
    (`drain`). `run` is the loop that notices them."""

    def __init__(
        self,
        workers: int,
        host: str,
        port: int,
        options: dict[str, Any],
        policy: RestartPolicy,
        metrics_dir: str,
        coordinator: Coordinator,
    ) -> None:
        self.workers, self.host, self.port, self.options = workers, host, port, options
        self.coordinator = coordinator
        self.policy = policy
        self.metrics_dir = metrics_dir
        self.metrics = _SupervisorMetrics(workers)
        self.context = multiprocessing.get_context("spawn")
        self.beats = self.context.RawArray(ctypes.c_double, workers)  # time.monotonic()
        self.slots = [_Slot(i) for i in range(workers)]
        self.restarts: deque[float] = deque()  # when each restart within the window happened
        self.stopping: list[int] = []  # the signal asked to stop with, once asked
        self.stopped_codes: list[int] = []  # exit statuses of the workers that exited since
        self.status = 0

    # --- state ------------------------------------------------------------------------------

    def alive(self) -> list[BaseProcess]:
        return [s.process for s in self.slots if s.process is not None and s.process.is_alive()]

    def serving_count(self) -> int:
        return sum(s.serving for s in self.slots)

    # --- events -----------------------------------------------------------------------------

    def start(self, slot: _Slot) -> None:
        """A worker process into `slot` (at start-up, or replacing one that died)."""
        self.beats[slot.index] = 0.0
        receiver, sender = self.context.Pipe(duplex=False)
        control, theirs = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=_worker,
            args=(self.host, self.port, self.options, slot.index, self.beats, sender, theirs),
            name=f"vae-worker-{slot.index}",
        )
        slot.started_at = time.monotonic()
        process.start()
        sender.close()
        theirs.close()
        slot.process, slot.report, slot.serving = process, receiver, False
        slot.control = control
        slot.killed_for_heartbeat, slot.restart_at = False, None

    def serving(self, slot: _Slot, now: float) -> None:
        """A worker's first heartbeat: it listens. A replacement has the others rebalance."""
        slot.serving = True
        self.metrics.serving(self.serving_count())
        if slot.replacing is None or slot.died_at is None or slot.process is None:
            return
        _say(
            f"worker {slot.process.pid} (replacing {slot.replacing}) serving, "
            f"{now - slot.died_at:.1f} s after the exit; "
            f"{self.serving_count()} of {self.workers} workers serving; the others' "
            "keep-alive connections reconnect after their next response"
        )
        for other in self.slots:  # SHED_SIGNAL: they close keep-alive connections
            pid = other.process.pid if other.process is not None else None
            if other is not slot and other.serving and pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, SHED_SIGNAL)

    def heartbeat(self, slot: _Slot, now: float, checked_since: float) -> None:
        """A serving worker whose heartbeat is older than the timeout is killed (and then
        replaced, as any death)."""
        process, policy = slot.process, self.policy
        beat = self.beats[slot.index]
        if (
            process is None
            or process.pid is None
            or policy.heartbeat_timeout <= 0
            or self.stopping
            or slot.killed_for_heartbeat
            or now - max(beat, checked_since) <= policy.heartbeat_timeout
        ):
            return
        _say(
            f"worker {process.pid}: no heartbeat for {now - beat:.1f} s "
            f"(VAE_WORKER_HEARTBEAT_TIMEOUT={policy.heartbeat_timeout:g}): killing it"
        )
        slot.killed_for_heartbeat = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)

    def death(self, slot: _Slot, process: BaseProcess, now: float) -> None:
        """A worker's process is gone: record it, then schedule its replacement, or stop the
        server (a start-up failure; too many restarts)."""
        code = process.exitcode if process.exitcode is not None else 1
        pid = process.pid
        served = slot.serving
        message = self._startup_message(slot)
        for connection in (slot.report, slot.control):
            if connection is not None:
                connection.close()
        slot.process, slot.report, slot.serving, slot.died_at = None, None, False, now
        slot.control = None
        self.coordinator.gone(slot.index)
        self.metrics.serving(self.serving_count())
        with contextlib.suppress(Exception):  # the folder may be unwritable: never fatal
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        if self.stopping:
            self.stopped_codes.append(code)
            return
        if code == STARTUP_FAILURE and not served:
            _say(
                f"worker {pid} could not start: {message or 'see its log above'}; "
                "stopping the server"
            )
            self.status = STARTUP_FAILURE
            self.drain(signal.SIGTERM)
            return
        how = _how(code)
        if slot.killed_for_heartbeat:
            how += " (by the supervisor: no heartbeat)"
        self._schedule_restart(slot, pid, how, now)

    def reload(self, now: float) -> None:
        """Model loads and unloads (service/process/lifecycle.py): pass on what the workers
        said, and what the change under way sends next."""
        for slot in self.slots:
            control = slot.control
            with contextlib.suppress(EOFError, OSError):
                while control is not None and control.poll():
                    self._tell(self.coordinator.received(slot.index, control.recv()))
        serving = [s.index for s in self.slots if s.serving]
        starting = any(s.process is not None and not s.serving for s in self.slots)
        self._tell(self.coordinator.advance(serving, starting, now))

    def _tell(self, messages: list[tuple[int, dict[str, Any]]]) -> None:
        for index, message in messages:
            control = self.slots[index].control
            if control is not None:
                with contextlib.suppress(OSError, ValueError):
                    control.send(message)

    def drain(self, signum: int, frame: object = None) -> None:
        """SIGTERM / SIGINT (or a fatal event): forward the signal to every worker, once; each
        drains as a single uvicorn would."""
        if self.stopping:
            return
        self.stopping.append(signum)
        for process in self.alive():
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    # --- helpers of the events ----------------------------------------------------------------

    def _startup_message(self, slot: _Slot) -> str | None:
        with contextlib.suppress(OSError, EOFError):
            if slot.report is not None and slot.report.poll():
                return str(slot.report.recv())
        return None

    def _schedule_restart(self, slot: _Slot, pid: int | None, how: str, now: float) -> None:
        policy, restarts = self.policy, self.restarts
        while restarts and now - restarts[0] > policy.window:
            restarts.popleft()
        if len(restarts) >= policy.max_restarts:
            _say(
                f"worker {pid} {how}; {len(restarts)} restarts within "
                f"{policy.window:g} s already (VAE_MAX_WORKER_RESTARTS={policy.max_restarts}, "
                f"VAE_WORKER_RESTART_WINDOW={policy.window:g}): stopping the server"
            )
            self.status = RESTART_LIMIT_EXIT
            self.drain(signal.SIGTERM)
            return
        restarts.append(now)
        delay = policy.delay(len(restarts))
        slot.restart_at, slot.replacing = now + delay, pid
        _say(
            f"worker {pid} {how}; starting a replacement in {delay:g} s "
            f"(restart {len(restarts)} of {policy.max_restarts} allowed within "
            f"{policy.window:g} s); {self.serving_count()} of {self.workers} workers serving"
        )

    def _check(self, slot: _Slot, now: float, checked_since: float) -> None:
        """One slot, once per turn of the loop: which event, if any, it has."""
        process = slot.process
        if process is None:
            # Not while a model load is under way: the replacement reads the served set after.
            due = slot.restart_at is not None and now >= slot.restart_at
            if due and not self.stopping and not self.coordinator.busy:
                self.start(slot)
                self.metrics.restarted()
            return
        if not process.is_alive():
            process.join()
            self.death(slot, process, now)
        elif not slot.serving:
            if self.beats[slot.index] >= slot.started_at:
                self.serving(slot, now)
        else:
            self.heartbeat(slot, now, checked_since)

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        """Start every worker, then supervise until stopped; the exit status."""
        for slot in self.slots:
            self.start(slot)
        _say(
            f"{self.workers} worker processes on http://{self.host}:{self.port} "
            f"(pids {', '.join(str(s.process.pid) for s in self.slots if s.process)})"
        )
        last = checked_since = time.monotonic()
        while not (self.stopping and all(slot.process is None for slot in self.slots)):
            waitables: list[Any] = [p.sentinel for p in self.alive()]
            waitables += [s.control for s in self.slots if s.control is not None]
            if waitables:
                wait(waitables, timeout=_POLL)
            else:
                time.sleep(_POLL)
            now = time.monotonic()
            if now - last > 1.0:
                # The supervisor itself did not run (suspended, starved): heartbeats that
                # look old now are not the workers' fault.
                checked_since = now
            last = now
            for slot in self.slots:
                self._check(slot, now, checked_since)
            self.reload(now)
        if not self.status:
            # Asked to stop: a worker that drained exits 0; one stopped by the signal before
            # its server was running is clean too.
            clean = {0, *(-s for s in self.stopping)}
            codes = self.stopped_codes
            self.status = next((c if c > 0 else 1 for c in codes if c not in clean), 0)
        return self.status

    def close(self) -> None:
        """Stop what still runs: SIGTERM, then SIGKILL after 5 s."""
        self.drain(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for slot in self.slots:
            process = slot.process
            if process is not None and process.pid is not None:
                process.join(timeout=max(0.0, deadline - time.monotonic()))
                if process.is_alive():
                    process.kill()
                    process.join(timeout=5)
            for connection in (slot.report, slot.control):
                if connection is not None:
                    connection.close()


def serve(
    workers: int,
    host: str,
    port: int,
    options: dict[str, Any],
    policy: RestartPolicy | None = None,
    served: dict[str, Any] | None = None,
    load_timeout: float = 300.0,
) -> int:
    """Run `workers` uvicorn processes on host:port until SIGTERM / SIGINT; the exit status.
    `served`: the served set every worker starts with (None: each worker's version policy)."""
    try:
        holder = _socket(host, port)  # reserves the port for our workers (same user)
    except OSError as exc:
        print(f"vae-serve: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    port = holder.getsockname()[1]
    metrics_dir = tempfile.mkdtemp(prefix="vae-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir  # read by prometheus_client as workers import it
    state_dir = tempfile.mkdtemp(prefix="vae-served-")
    state_file = Path(state_dir) / "served.json"
    os.environ[STATE_ENV] = str(state_file)  # the served set a worker starts with
    coordinator = Coordinator(state_file, load_timeout)
    coordinator.start_state(served)
    supervisor = Supervisor(
        workers, host, port, options, policy or RestartPolicy(), metrics_dir, coordinator
    )
    previous = {s: signal.signal(s, supervisor.drain) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return supervisor.run()
    finally:
        supervisor.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
        holder.close()
        with contextlib.suppress(OSError):
            os.chmod(metrics_dir, 0o700)  # in case someone made it read-only
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)
