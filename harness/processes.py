"""Ports, server processes and their resource use, for bench/, scripts/ and tests/.

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port)], ...)
    try:
        wait_ready(process, f"http://127.0.0.1:{port}", log_path, timeout=30)
        ... rss_mb(process.pid), cpu_seconds(process.pid) ...
    finally:
        stop(process)

A server here is a process tree: with VAE_WORKERS > 1 a supervisor, its worker processes and
multiprocessing's resource tracker. Memory and CPU figures are summed over the tree by default,
read through psutil; processes that exit while they are read are left out. A server started in a
session of its own (Popen(start_new_session=True): the benchmark's peers) is every process of
that session, tree or not: some serving stacks' processes leave the tree (Ray's actors, a Java
front end whose launcher exited) and outlive their parent. Memory is in MB
(10^6 bytes).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

__all__ = [
    "MB",
    "ServerNotReady",
    "cpu_seconds",
    "free_port",
    "log_tail",
    "peak_rss_mb",
    "process_tree",
    "pss_mb",
    "rss_mb",
    "session_processes",
    "stop",
    "wait_ready",
]

MB = 1e6
LOG_TAIL_LINES = 100
# Loopback servers only: never through an HTTP proxy that the environment may name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerNotReady(RuntimeError):
    """A started server exited, or did not answer 200 in time; the message ends with the tail
    of its log."""


# --- ports and servers ------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on right now (bound on 127.0.0.1:0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log_path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a server's log ('' without one, or when it cannot be read)."""
    if log_path is None:
        return ""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _status(url: str, timeout: float) -> int | None:
    """The HTTP status of GET `url`, or None when nothing answered (refused, reset, timed out)."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, http.client.HTTPException):
        return None


def wait_ready(
    process: subprocess.Popen,
    base_url: str,
    log_path: Path | None = None,
    timeout: float = 60.0,
    *,
    path: str = "/readyz",
    interval: float = 0.1,
    name: str = "server",
) -> None:
    """Poll GET `base_url` + `path` until it answers 200 (a 503 or no answer: try again).

    Raises ServerNotReady, with the tail of `log_path` (the server's output), as soon as
    `process` exits, or after `timeout` seconds; the loop is bounded in count and in time. The
    process is left running on a timeout: stopping it is the caller's (`stop`).
    """
    url = base_url.rstrip("/") + path
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        if process.poll() is not None:
            raise ServerNotReady(
                _with_log(f"{name} exited with {process.returncode} before it was ready", log_path)
            )
        if _status(url, timeout=1.0) == 200:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    raise ServerNotReady(_with_log(f"{name} not ready in {timeout:g} s", log_path))


def _with_log(message: str, log_path: Path | None) -> str:
    tail = log_tail(log_path)
    if log_path is None:
        return message
    return f"{message}; the end of {log_path}:\n{tail}" if tail else f"{message} ({log_path})"


def stop(
    process: subprocess.Popen | int, timeout: float = 10.0, session: bool = False
) -> int | None:
    """Stop a process this code started, and every process it started, by PID.

    SIGTERM to the process (a server's supervisor stops its own workers), up to `timeout`
    seconds for it to exit, then SIGKILL. Either way, its descendants still running after it
    are stopped too: SIGKILL at once where it had to be killed (it first, so that it cannot
    replace them); otherwise SIGTERM, the rest of `timeout` (at least 1 s), then SIGKILL. A
    process that has already exited is left as it is. Pass the Popen when there is one: the
    process is then reaped through it, so that its `returncode` is right.

    `session`: the process was started as a session leader (start_new_session=True); every
    process still in that session afterwards is stopped as well (SIGTERM, then SIGKILL), even
    where the leader had already exited.

    Returns the exit status: `returncode` for a Popen (negative: the signal), the status for a
    bare PID that is this process's child, else None (not a child, or already gone).
    """
    popen, pid = (
        (process, process.pid) if isinstance(process, subprocess.Popen) else (None, process)
    )
    if session:
        status = _stop(popen, pid, timeout)
        strays = session_processes(pid)
        _signal(strays, signal.SIGTERM)
        strays = _wait_gone(strays, timeout)
        _signal(strays, signal.SIGKILL)
        _wait_gone(strays, timeout)
        return status
    return _stop(popen, pid, timeout)


def _stop(popen: subprocess.Popen | None, pid: int, timeout: float) -> int | None:
    if popen is not None and popen.poll() is not None:
        return popen.returncode
    try:
        root = psutil.Process(pid)
        family = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return popen.poll() if popen is not None else None
    deadline = time.monotonic() + timeout

    _signal([root], signal.SIGTERM)
    status, exited = _wait(popen, root, timeout)
    if exited:
        strays = _running(family)
        _signal(strays, signal.SIGTERM)
        strays = _wait_gone(strays, max(1.0, deadline - time.monotonic()))
    else:
        with contextlib.suppress(psutil.Error):
            family = _union(family, root.children(recursive=True))
        _signal([root], signal.SIGKILL)
        status, _ = _wait(popen, root, timeout, kill=True)
        strays = _running(family)
    _signal(strays, signal.SIGKILL)
    _wait_gone(strays, timeout)
    return status


def _wait(
    popen: subprocess.Popen | None, root: psutil.Process, timeout: float, kill: bool = False
) -> tuple[int | None, bool]:
    """(exit status, exited) of the process being stopped, after up to `timeout` seconds.
    After SIGKILL (`kill`), one that still has not exited raises TimeoutExpired."""
    try:
        if popen is not None:
            return popen.wait(timeout=timeout), True
        return root.wait(timeout=timeout), True
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        if kill:
            raise
        return None, False


def _signal(procs: list[psutil.Process], signum: int) -> None:
    """Send `signum` to each of `procs` still running (psutil checks each is the same process,
    not a new one with a reused PID)."""
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.send_signal(signum)


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `procs` that have not exited (a zombie has: its memory and sockets are freed)."""
    running = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                running.append(p)
    return running


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` seconds for `procs` to exit; those still running."""
    deadline = time.monotonic() + timeout
    procs = _running(procs)
    while procs and time.monotonic() < deadline:
        time.sleep(0.05)
        procs = _running(procs)
    return procs


def _union(a: list[psutil.Process], b: list[psutil.Process]) -> list[psutil.Process]:
    seen = {p.pid for p in a}
    return a + [p for p in b if p.pid not in seen]


# --- process trees and their resources ----------------------------------------------------------


def session_processes(sid: int) -> list[psutil.Process]:
    """Every running process (zombies left out) whose session id is `sid`."""
    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def _processes(pid: int, tree: bool = True) -> list[psutil.Process]:
    """`pid` first, then (`tree`) its descendants and, where `pid` leads a session, every other
    process of that session; [] when `pid` is gone."""
    try:
        root = psutil.Process(pid)
        if not tree:
            return [root]
        family = root.children(recursive=True)
        with contextlib.suppress(OSError):
            if os.getsid(pid) == pid:
                family = _union(family, [p for p in session_processes(pid) if p.pid != pid])
        return [root, *family]
    except psutil.NoSuchProcess:
        return []


def process_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants, `pid` first ([] when `pid` is gone)."""
    return [p.pid for p in _processes(pid)]


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU seconds of `pid` (all its threads) and (`tree`) its live descendants;
    not those of children that have already exited."""
    total = 0.0
    for p in _processes(pid, tree):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def rss_mb(pid: int, tree: bool = True) -> float:
    """Resident memory of `pid` and (`tree`) its descendants, in MB (10^6 bytes). Shared pages
    (the libraries every worker maps) count once per process: see pss_mb."""
    total = 0
    for p in _processes(pid, tree):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total / MB


def pss_mb(pid: int) -> float:
    """Proportional set size of `pid` and its descendants, in MB: each shared page split
    between the processes that map it, so shared libraries count once in all, unlike RSS.
    Falls back to rss_mb(pid) where PSS cannot be read (not Linux, or not permitted)."""
    total = 0
    for p in _processes(pid):
        try:
            total += p.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
        except (psutil.AccessDenied, AttributeError):
            return rss_mb(pid)
    return total / MB


def peak_rss_mb(pid: int, tree: bool = True) -> float:
    """Peak resident memory (VmHWM, /proc/PID/status: Linux only) of `pid` and (`tree`) its
    live descendants, each process's own peak summed, in MB; processes without one count 0."""
    total = 0
    for p in _processes(pid, tree):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total / MB
