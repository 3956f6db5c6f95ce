"""How many CPUs this process may use, and how to divide them between workers and threads.

The one place the service sizes itself (the container's entrypoint only starts the server):

- the CPUs the process may run on (its affinity: `taskset`, `docker run --cpuset-cpus`, a
  Kubernetes static CPU policy), capped by
- its CPU quota, if any: cgroup v2 `cpu.max` ("<quota> <period>" or "max <period>"), or cgroup v1
  `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1 = none). This is what `docker run --cpus` and a
  Kubernetes CPU limit set. A fractional quota rounds up (1.5 CPUs -> 2): a worker per started
  CPU keeps the whole quota usable, and the kernel's throttling keeps the total within it.

The process's own cgroup is found from /proc/self/cgroup and the cgroup file systems' mounts in
/proc/self/mountinfo, and every cgroup from it up to the mount's root is read (a limit set on a
parent applies to its children). Without /proc/self/cgroup or mountinfo, the usual mount points
(/sys/fs/cgroup for v2, /sys/fs/cgroup/cpu for v1) are read instead. A missing or unreadable
file means no limit: the answer is then the affinity alone, and never less than 1.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

__all__ = ["available_cpus", "cgroup_quota_cpus", "layout"]

# Where cgroups are mounted when /proc/self/mountinfo cannot tell (v2, then v1's cpu controller).
_DEFAULT_V2 = "sys/fs/cgroup"
_DEFAULT_V1 = ("sys/fs/cgroup/cpu", "sys/fs/cgroup/cpu,cpuacct")


class _Mount(NamedTuple):
    point: str  # where the cgroup file system is mounted, as mountinfo gives it
    root: str  # the cgroup (within the hierarchy) that appears at `point`


def available_cpus(root: Path = Path("/")) -> int:
    """CPUs this process may use: its CPU affinity, capped by its cgroup CPU quota (v1 or v2,
    rounded up), at least 1. `root` is the file system root to read /proc and /sys under
    (tests pass a fake one); the affinity is always this process's own."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_quota_cpus(root)
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def cgroup_quota_cpus(root: Path = Path("/")) -> int | None:
    """The tightest CPU quota of this process's cgroups (v1 and v2), in whole CPUs rounded up
    and at least 1; None when no quota applies or none can be read."""
    found = [cpus for directory in _cgroup_dirs(root) if (cpus := _quota_in(directory))]
    return min(found) if found else None


def layout(workers: int = 0, intra_op_threads: int = 0) -> tuple[int, int]:
    """(worker processes, onnxruntime threads per inference) for the settings VAE_WORKERS and
    VAE_INTRA_OP_THREADS, 0 meaning automatic: one worker per CPU, CPUs / workers threads
    (at least 1). A setting that is not 0 is used as it is."""
    cpus = available_cpus()
    workers = workers or cpus
    return workers, intra_op_threads or max(1, cpus // workers)


def _quota_in(directory: Path) -> int | None:
    """The CPU quota set in one cgroup directory (v2 or v1 files), or None."""
    quota = period = None
    with contextlib.suppress(OSError, ValueError):
        fields = (directory / "cpu.max").read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            quota, period = int(fields[0]), int(fields[1])
    if quota is None:
        with contextlib.suppress(OSError, ValueError):
            quota = int((directory / "cpu.cfs_quota_us").read_text())
            period = int((directory / "cpu.cfs_period_us").read_text())
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None  # -1 (v1) or "max" (v2): no quota
    return max(1, -(-quota // period))  # rounded up, in integers


def _cgroup_dirs(root: Path) -> Iterator[Path]:
    """Every cgroup directory whose CPU quota applies to this process: its own cgroup in each
    hierarchy that has the cpu controller (or the v2 one), then each parent up to the mount."""
    memberships, mounts = _memberships(root), _mounts(root)
    found = False
    for kind, path in memberships or []:
        for mount in (mounts or {}).get(kind, []):
            if path != mount.root and not path.startswith(mount.root.rstrip("/") + "/"):
                continue  # this mount shows another part of the hierarchy
            top = root / mount.point.lstrip("/")
            relative = path[len(mount.root) :].strip("/")
            directory = top / relative if relative else top
            found = True
            while True:
                yield directory
                if directory == top:
                    break
                directory = directory.parent
    if not found:  # no /proc, or cgroups mounted where it does not say: the usual places
        yield root / _DEFAULT_V2
        for default in _DEFAULT_V1:
            yield root / default


def _memberships(root: Path) -> list[tuple[str, str]] | None:
    """("v2" | "v1", cgroup path) for each hierarchy of /proc/self/cgroup that can hold a CPU
    quota, or None if the file cannot be read."""
    try:
        text = (root / "proc/self/cgroup").read_text()
    except OSError:
        return None
    found = []
    for line in text.splitlines():
        # "hierarchy-id:controllers:path"; v2's unified hierarchy is "0::path".
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            found.append(("v2", path))
        elif "cpu" in controllers.split(","):
            found.append(("v1", path))
    return found


def _mounts(root: Path) -> dict[str, list[_Mount]] | None:
    """The cgroup mounts of /proc/self/mountinfo by kind ("v2": cgroup2; "v1": cgroup with the
    cpu controller), or None if the file cannot be read."""
    try:
        text = (root / "proc/self/mountinfo").read_text()
    except OSError:
        return None
    found: dict[str, list[_Mount]] = {}
    for line in text.splitlines():
        # "id parent major:minor root mount-point options [optional...] - type source super"
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        fs_type, super_options = tail[0], tail[2].split(",")
        mount = _Mount(point=_unescape(fields[4]), root=_unescape(fields[3]))
        if fs_type == "cgroup2":
            found.setdefault("v2", []).append(mount)
        elif fs_type == "cgroup" and "cpu" in super_options:
            found.setdefault("v1", []).append(mount)
    return found


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
