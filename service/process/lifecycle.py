"""Loading and unloading model versions while the service runs, in every worker at once.

The workers are separate processes (service/process/workers.py), and a load request reaches
one of them. So a change goes through the supervisor, in two phases, one change at a time:

1. `prepare`: the supervisor asks every serving worker to load, check and warm up the new
   versions (in a thread: the worker keeps serving the old ones meanwhile);
2. if every worker answered "ready", `commit`: each swaps them in (one assignment); if any
   failed (a bad file, a wrong shape, a sha256 that does not match), `abort`: each drops what
   it prepared, every worker keeps serving what it served, and the caller gets the failing
   worker's message (which names the file).

The served set (`ModelRegistry.state()`) is written to a state file after each change (and
before the first worker starts); a worker started later, replacing one that died, loads that
set rather than the start-up policy. The supervisor starts no replacement while a change is
under way, and starts no change while a worker is starting, so no worker misses one.

With one process (no supervisor) the same two phases run in the process itself.

Messages (dicts over a duplex multiprocessing Pipe per worker):
    worker -> supervisor: {"op": "load" | "unload", "id", "name", "versions"}  (a request)
                          {"op": "done", "id", "ok", "error", "state"}          (an answer)
    supervisor -> worker: {"op": "prepare" | "commit" | "abort" | "unload", "id", ...}
                          {"op": "result", "id", "ok", "error", "state", "seconds"}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.api.metrics import Metrics
    from service.inference.registry import ModelRegistry, Staged

logger = logging.getLogger("service")

STATE_ENV = "VAE_SERVED_STATE_FILE"  # set by the supervisor for its workers
STARTING_WAIT = 120.0  # seconds a change waits for a starting worker before giving up

# The worker's end of its control pipe, set by workers._worker before uvicorn starts the app.
channel: Connection | None = None


@dataclass
class Outcome:
    """What a load or unload came to."""

    ok: bool
    error: str = ""
    state: dict[str, Any] = field(default_factory=dict)  # the served set afterwards
    seconds: float = 0.0  # from the request to every worker serving the change


# --- the state file -----------------------------------------------------------------------------


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write the served set atomically (a reader sees the old file or the new one)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(state, sort_keys=True))
    os.replace(temporary, path)


def served_state() -> dict[str, Any] | None:
    """The served set a worker must start with (None: the start-up policy)."""
    path = os.environ.get(STATE_ENV)
    if not path:
        return None
    with contextlib.suppress(FileNotFoundError):
        state: dict[str, Any] = json.loads(Path(path).read_text())
        return state
    return None


# --- the worker's side ----------------------------------------------------------------------------


class Lifecycle:
    """One worker's part: load and unload requests from its routes, and the supervisor's
    prepare / commit / abort / unload. Without a supervisor (`channel` None) it runs both
    phases itself."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics | None = None,
        control: Connection | None = None,
        timeout: float = 300.0,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.control = control
        self.timeout = timeout
        self._staged: dict[str, Staged] = {}  # by change id
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._local = asyncio.Lock()  # one change at a time without a supervisor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    # the channel ------------------------------------------------------------------------------

    def attach(self) -> None:
        """Listen to the supervisor on this event loop; tell it the served set."""
        if self.control is None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.control.fileno(), self._readable)
        self._send({"op": "hello", "state": self.registry.state()})

    def detach(self) -> None:
        if self._loop is not None and self.control is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.control.fileno())
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_result({"ok": False, "error": "the worker is stopping"})

    def _send(self, message: dict[str, Any]) -> None:
        if self.control is not None:
            with contextlib.suppress(OSError, ValueError):
                self.control.send(message)

    def _readable(self) -> None:
        assert self.control is not None
        try:
            while self.control.poll():
                self._dispatch(self.control.recv())
        except (EOFError, OSError):  # the supervisor is gone: it takes the worker with it
            self.detach()

    def _dispatch(self, message: dict[str, Any]) -> None:
        op, key = message.get("op"), str(message.get("id"))
        if op == "result":
            waiter = self._waiting.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
        elif op == "prepare":
            work = self._prepare(key, message["name"], message.get("versions"))
            task = asyncio.ensure_future(work)
            self._tasks.add(task)  # held until done (the loop keeps only weak references)
            task.add_done_callback(self._tasks.discard)
        elif op == "commit":
            staged = self._staged.pop(key, None)
            if staged is not None:
                self.registry.commit(staged)
                self._served_changed()
            self._done(key, staged is not None, "" if staged else "nothing prepared")
        elif op == "abort":
            self._staged.pop(key, None)
            self._done(key, True)
        elif op == "unload":
            self.registry.unload(message["name"])
            self._served_changed()
            self._done(key, True)

    def _done(self, key: str, ok: bool, error: str = "") -> None:
        self._send(
            {"op": "done", "id": key, "ok": ok, "error": error, "state": self.registry.state()}
        )

    async def _prepare(self, key: str, name: str, versions: list[str] | None) -> None:
        try:
            self._staged[key] = await asyncio.to_thread(self.registry.prepare, name, versions)
        except Exception as exc:  # ModelLoadError names the file; anything else: its type
            self._done(key, False, _message(exc))
        else:
            self._done(key, True)

    def _served_changed(self) -> None:
        if self.metrics is not None:
            self.metrics.served(self.registry)

    # requests -----------------------------------------------------------------------------------

    async def load(self, name: str, versions: list[str] | None = None) -> Outcome:
        """Load `versions` of `name` (None: its policy's version) in every worker and serve the
        last; on any failure nothing changes anywhere."""
        return await self._change("load", name, versions)

    async def unload(self, name: str) -> Outcome:
        """Stop serving `name` in every worker (requests running on it finish)."""
        return await self._change("unload", name, None)

    async def _change(self, op: str, name: str, versions: list[str] | None) -> Outcome:
        start = time.perf_counter()
        if self.control is None:
            outcome = await self._change_here(op, name, versions)
        else:
            outcome = await self._change_everywhere(op, name, versions)
        outcome.seconds = time.perf_counter() - start
        wanted = f" versions {versions}" if versions else ""
        if outcome.ok:
            logger.info("%s of model %s%s: done in %.3f s", op, name, wanted, outcome.seconds)
        else:
            logger.warning(
                "%s of model %s%s: refused after %.3f s: %s",
                op,
                name,
                wanted,
                outcome.seconds,
                outcome.error,
            )
        if self.metrics is not None:
            self.metrics.lifecycle(op, name, outcome.ok, outcome.seconds)
        return outcome

    async def _change_here(self, op: str, name: str, versions: list[str] | None) -> Outcome:
        async with self._local:
            if op == "unload":
                self.registry.unload(name)
            else:
                try:
                    staged = await asyncio.to_thread(self.registry.prepare, name, versions)
                except Exception as exc:
                    return Outcome(False, _message(exc), self.registry.state())
                self.registry.commit(staged)
            self._served_changed()
            return Outcome(True, "", self.registry.state())

    async def _change_everywhere(self, op: str, name: str, versions: list[str] | None) -> Outcome:
        key = uuid.uuid4().hex
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[key] = waiter
        self._send({"op": op, "id": key, "name": name, "versions": versions})
        # The supervisor's own limits come first: a wait for starting workers, then each phase.
        patience = STARTING_WAIT + 2 * self.timeout + 10
        try:
            answer = await asyncio.wait_for(waiter, patience)
        except TimeoutError:
            self._waiting.pop(key, None)
            return Outcome(False, f"no answer from the supervisor within {patience:g} s")
        ok, error = bool(answer.get("ok")), str(answer.get("error", ""))
        return Outcome(ok, error, answer.get("state", {}))


def _message(exc: BaseException) -> str:
    from service.inference.format import ModelLoadError

    return str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"


# --- the supervisor's side --------------------------------------------------------------------


@dataclass
class Change:
    """A load or unload the supervisor carries out over every worker."""

    id: str
    op: str  # "load" | "unload"
    name: str
    versions: list[str] | None
    origin: int  # the slot whose worker asked (it gets the result)
    received: float = field(default_factory=time.monotonic)
    phase: str = "queued"  # queued -> prepare -> commit
    began: float = 0.0
    pending: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    state: dict[str, Any] | None = None


class Coordinator:
    """The supervisor's part: one change at a time, over every worker serving (see the module
    docstring). `send(slot, message)` reaches a worker; the supervisor tells it which workers
    serve and which are starting."""

    def __init__(self, state_file: Path, timeout: float = 300.0) -> None:
        self.state_file = state_file
        self.timeout = timeout
        self.queue: deque[Change] = deque()
        self.current: Change | None = None
        self.state: dict[str, Any] | None = None
        self.switch_seconds: list[float] = []  # load call to every worker serving, per change

    @property
    def busy(self) -> bool:
        """A change is under way: no replacement worker starts until it ends."""
        return self.current is not None

    def start_state(self, state: dict[str, Any] | None) -> None:
        """The served set before any worker starts (None: let the workers' policy decide and
        take the first worker's)."""
        self.state = state
        if state is not None:
            write_state(self.state_file, state)

    def received(self, slot: int, message: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
        """A worker's message; what to send in return."""
        op = message.get("op")
        if op == "hello":
            if self.state is None:
                self.start_state(message.get("state"))
            return []
        if op in ("load", "unload"):
            versions = message.get("versions")
            self.queue.append(
                Change(str(message["id"]), str(op), str(message["name"]), versions, slot)
            )
            return []
        change = self.current
        if op == "done" and change is not None and message.get("id") == change.id:
            change.pending.discard(slot)
            if not message.get("ok"):
                change.errors.append(str(message.get("error")))
            if change.phase == "commit":
                change.state = message.get("state")
        return []

    def gone(self, slot: int) -> None:
        """A worker died: it no longer holds a change up."""
        if self.current is not None:
            self.current.pending.discard(slot)

    def advance(
        self, serving: list[int], starting: bool, now: float
    ) -> list[tuple[int, dict[str, Any]]]:
        """Move the change under way on; start the next. What to send to whom."""
        change = self.current
        if change is None:
            if not self.queue:
                return []
            change = self.queue[0]
            if starting and now - change.received < STARTING_WAIT:
                return []  # a worker is starting: it would miss the change
            self.queue.popleft()
            if starting:
                return [self._result(change, False, "workers are still starting; try again")]
            return self._begin(change, serving, now)
        if change.pending and now - change.began < self.timeout:
            return []
        if change.pending:
            change.errors.append(
                f"workers in slots {sorted(change.pending)} did not answer within "
                f"{self.timeout:g} s"
            )
            change.pending.clear()
        if change.phase == "prepare":
            if change.errors:
                self.current = None
                aborts = [(slot, {"op": "abort", "id": change.id}) for slot in serving]
                return [*aborts, self._result(change, False, change.errors[0])]
            change.phase, change.pending = "commit", set(serving)
            return [(slot, {"op": "commit", "id": change.id}) for slot in serving]
        # committed (or unloaded) everywhere
        self.current = None
        if change.state is not None:
            self.state = change.state
            write_state(self.state_file, change.state)
        self.switch_seconds.append(now - change.received)
        return [self._result(change, True, "")]

    def _begin(self, change: Change, serving: list[int], now: float) -> list[tuple[int, Any]]:
        self.current, change.began, change.pending = change, now, set(serving)
        message: dict[str, Any]
        if change.op == "unload":
            change.phase = "commit"
            message = {"op": "unload", "id": change.id, "name": change.name}
        else:
            change.phase = "prepare"
            message = {
                "op": "prepare",
                "id": change.id,
                "name": change.name,
                "versions": change.versions,
            }
        return [(slot, message) for slot in serving]

    def _result(self, change: Change, ok: bool, error: str) -> tuple[int, dict[str, Any]]:
        seconds = time.monotonic() - change.received
        return (
            change.origin,
            {
                "op": "result",
                "id": change.id,
                "ok": ok,
                "error": error,
                "state": self.state or {},
                "seconds": seconds,
            },
        )
