"""Several uvicorn worker processes on one port, each with its own listening socket.

Why not uvicorn's own `--workers`: its workers share one listening socket, and whichever
process wakes first accepts every connection waiting (uvloop accepts in a loop). A burst of
keep-alive connections (a load balancer's pool, a benchmark's 32 clients) then often lands on
one worker while the other idles, and such runs do about half the requests/s (BENCHMARKS.md,
"What changed in the service, and why", 1). Here each
worker binds its own socket with SO_REUSEPORT, and the kernel spreads new connections evenly
over the workers' sockets. A worker only listens once its models are loaded (uvicorn calls
listen() after the lifespan start-up), so no connection waits on a worker still starting.

The parent only supervises: it reserves the port (bound, not listening, so a port in use fails
once, here, and port 0 picks one port for all), starts the workers, forwards SIGTERM / SIGINT
to each once (they drain as a single uvicorn would), and exits 0 when all of them have exited
cleanly. If a worker dies on its own (a model that fails to load, a crash), the parent stops
the others and exits non-zero: the orchestrator restarts the whole server, as it would a
single-process one. /metrics is aggregated over the workers (prometheus_client's
multiprocess mode, in a temporary folder the parent removes at exit).
"""

from __future__ import annotations

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
from typing import Any

APP = "service.app:create_app"
STARTUP_FAILURE = 3  # uvicorn's exit status when the app's start-up fails
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PR_SET_PDEATHSIG = 1

logger = logging.getLogger("service")


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


def _worker(host: str, port: int, options: dict[str, Any]) -> None:
    """One worker process: its own SO_REUSEPORT socket, one uvicorn server."""
    # uvicorn re-raises the SIGTERM it drained on: exit 0, like the single-process server.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only; it forwards it once
    _die_with_parent()
    from service.inference.sessions import limit_malloc_arenas

    limit_malloc_arenas()
    import uvicorn

    sock = _socket(host, port)  # bound here; uvicorn listens once the models are loaded
    server = uvicorn.Server(uvicorn.Config(APP, factory=True, **options))
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def serve(workers: int, host: str, port: int, options: dict[str, Any]) -> int:
    """Run `workers` uvicorn processes on host:port until SIGTERM / SIGINT; the exit status."""
    try:
        holder = _socket(host, port)  # reserves the port for our workers (same user)
    except OSError as exc:
        print(f"vae-serve: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    port = holder.getsockname()[1]
    metrics_dir = tempfile.mkdtemp(prefix="vae-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir  # read by prometheus_client as workers import it
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(host, port, options), name=f"vae-worker-{i}")
        for i in range(workers)
    ]
    stopping: list[int] = []

    def stop(signum: int, frame: object = None) -> None:
        if stopping:
            return
        stopping.append(signum)
        for process in processes:
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for process in processes:
            process.start()
        print(
            f"vae-serve: {workers} worker processes on http://{host}:{port} "
            f"(pids {', '.join(str(p.pid) for p in processes)})",
            file=sys.stderr,
            flush=True,
        )
        while any(p.is_alive() for p in processes):
            for process in processes:
                process.join(timeout=0.2)
                if process.exitcode is not None and process.exitcode != 0 and not stopping:
                    # A worker that stops by itself stops the server.
                    status = process.exitcode if process.exitcode > 0 else 1
                    print(
                        f"vae-serve: worker {process.pid} exited with {process.exitcode}; "
                        "stopping the others",
                        file=sys.stderr,
                        flush=True,
                    )
                    stop(signal.SIGTERM)
        if not status:
            # Asked to stop: a worker that drained exits 0; one stopped by the signal before
            # its server was running is clean too.
            clean = {0, *(-s for s in stopping)}
            status = next(
                (c if c > 0 else 1 for c in (p.exitcode for p in processes) if c not in clean), 0
            )
    finally:
        stop(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process in processes:
            if process.pid is not None:
                process.join(timeout=max(0.0, deadline - time.monotonic()))
                if process.is_alive():
                    process.kill()
        for s, handler in previous.items():
            signal.signal(s, handler)
        holder.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status
