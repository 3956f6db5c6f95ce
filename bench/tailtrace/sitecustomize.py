"""Loaded by every Python process of a traced server (bench/tail.py puts this folder first on
PYTHONPATH): with VAE_TAIL_TRACE=<folder>, each process records, in CLOCK_MONOTONIC ns (one
clock for every process on the machine, the client's too):

  requests   per HTTP request reaching the ASGI app: its start and the end of its response body,
             and the CPU time of the loop's thread in between (the work, when it runs inline)
  gc         each garbage collection: start, end, generation
  loop       event-loop lag: a 2 ms timer that woke up more than 1 ms late (start, lateness)
  log        a log line's write (logging.StreamHandler.emit: the access log) over 1 ms
  metric     a write into the multiprocess metrics files (mmap) over 1 ms

and writes them as JSON lines to <folder>/<pid>.jsonl when it exits (atexit). Nothing here
changes what the server does; the hooks cost a few microseconds per request.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import time

FOLDER = os.environ.get("VAE_TAIL_TRACE")


def _install() -> None:
    assert FOLDER
    records: list[tuple] = []
    now = time.monotonic_ns
    gc_start = [0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_start[0] = now()
        else:
            records.append(("gc", gc_start[0], now(), info.get("generation")))

    gc.callbacks.append(on_gc)

    def dump() -> None:
        """Append what was recorded since the last dump."""
        taken = records[:]
        del records[: len(taken)]
        with open(os.path.join(FOLDER, f"{os.getpid()}.jsonl"), "a") as f:
            for r in taken:
                f.write(json.dumps(r) + "\n")

    atexit.register(dump)

    import signal

    def on_term(signum: int, frame: object) -> None:
        dump()

    # uvicorn replaces SIGTERM's handler; SIGUSR2 dumps on demand (bench/tail.py sends it).
    signal.signal(signal.SIGUSR2, on_term)

    def wrap(app):  # type: ignore[no-untyped-def]
        lag_started = [False]

        async def lag() -> None:
            import asyncio

            while True:
                t0 = now()
                await asyncio.sleep(0.002)
                late = now() - t0 - 2_000_000
                if late > 1_000_000:
                    records.append(("loop", t0, late))

        async def traced(scope, receive, send):  # type: ignore[no-untyped-def]
            if not lag_started[0] and os.environ.get("VAE_TAIL_LOOP") == "1":
                import asyncio

                lag_started[0] = True
                asyncio.get_running_loop().create_task(lag())
            if scope["type"] != "http":
                return await app(scope, receive, send)
            start = now()
            cpu = time.thread_time_ns()  # the event loop's thread: where small work runs

            async def sending(message):  # type: ignore[no-untyped-def]
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    spent = time.thread_time_ns() - cpu
                    records.append(("req", start, now(), scope["path"], spent))

            return await app(scope, receive, sending)

        return traced

    def timed(owner: type, name: str, kind: str) -> None:
        """Record calls of owner.name that take over 1 ms (a blocked write)."""
        original = getattr(owner, name)

        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            t0 = now()
            try:
                return original(*args, **kwargs)
            finally:
                spent = now() - t0
                if spent > 1_000_000:
                    records.append((kind, t0, spent))

        setattr(owner, name, call)

    import logging

    timed(logging.StreamHandler, "emit", "log")  # the access log's line (and any other)
    try:
        from prometheus_client.mmap_dict import MmapedDict

        timed(MmapedDict, "write_value", "metric")  # the multiprocess metrics files (mmap)
    except ImportError:
        pass

    try:
        import service.app as service_app
    except ImportError:
        return
    create_app = service_app.create_app

    def create_traced(*args, **kwargs):  # type: ignore[no-untyped-def]
        return wrap(create_app(*args, **kwargs))

    service_app.create_app = create_traced  # type: ignore[assignment]


if FOLDER:
    _install()
