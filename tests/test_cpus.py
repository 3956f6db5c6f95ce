"""service.process.cpus: the CPUs the service sizes itself to (affinity capped by a cgroup v1 or
v2 quota), read from a fake root folder, and the workers x threads layout built on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.process import cpus

V2_MOUNT = "41 31 0:38 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n"


@pytest.fixture
def affinity(monkeypatch):
    """Pretend this process may run on `n` CPUs."""

    def set_affinity(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))

    set_affinity(8)
    return set_affinity


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def v2_root(tmp_path: Path, cpu_max: str, cgroup: str = "/") -> Path:
    """A cgroup v2 machine (or container with its own cgroup namespace)."""
    folder = "sys/fs/cgroup" + (cgroup.rstrip("/") if cgroup != "/" else "")
    return write(
        tmp_path,
        {
            "proc/self/cgroup": f"0::{cgroup}\n",
            "proc/self/mountinfo": V2_MOUNT,
            f"{folder}/cpu.max": cpu_max,
        },
    )


def v1_root(tmp_path: Path, quota: str, period: str = "100000") -> Path:
    """A cgroup v1 Docker container without a cgroup namespace: its cgroup is /docker/<id>,
    mounted at /sys/fs/cgroup/cpu,cpuacct (with the usual symlink-free layout)."""
    cgroup = "/docker/0123abcd"
    return write(
        tmp_path,
        {
            "proc/self/cgroup": (
                f"12:pids:{cgroup}\n5:cpu,cpuacct:{cgroup}\n3:cpuset:{cgroup}\n"
                f"1:name=systemd:{cgroup}\n0::/\n"
            ),
            "proc/self/mountinfo": (
                "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
                f"34 30 0:30 {cgroup} /sys/fs/cgroup/cpu,cpuacct ro,nosuid,relatime master:11"
                " - cgroup cgroup rw,cpu,cpuacct\n"
                f"35 30 0:31 {cgroup} /sys/fs/cgroup/cpuset ro,nosuid - cgroup cgroup rw,cpuset\n"
            ),
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": quota + "\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": period + "\n",
            # cpuset is not the cpu controller: never read for a quota
            "sys/fs/cgroup/cpuset/cpu.cfs_quota_us": "100000\n",
            "sys/fs/cgroup/cpuset/cpu.cfs_period_us": "100000\n",
        },
    )


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("200000 100000\n", 2),
        ("400000 100000\n", 4),
        ("max 100000\n", 8),  # no quota: the affinity
        ("150000 100000\n", 2),  # fractional: rounded up
        ("50000 100000\n", 1),  # under one CPU: still 1
        ("1000 1000\n", 1),
    ],
)
def test_cgroup_v2_quota(tmp_path, affinity, cpu_max, expected):
    assert cpus.available_cpus(v2_root(tmp_path, cpu_max)) == expected


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [
        ("300000", "100000", 3),
        ("-1", "100000", 8),  # no quota
        ("250000", "100000", 3),  # fractional: rounded up
        ("10000", "100000", 1),
    ],
)
def test_cgroup_v1_quota(tmp_path, affinity, quota, period, expected):
    assert cpus.available_cpus(v1_root(tmp_path, quota, period)) == expected


def test_no_cgroup_files_means_the_affinity(tmp_path, affinity):
    assert cpus.cgroup_quota_cpus(tmp_path) is None
    assert cpus.available_cpus(tmp_path) == 8
    affinity(3)
    assert cpus.available_cpus(tmp_path) == 3


def test_affinity_smaller_than_the_quota_wins(tmp_path, affinity):
    affinity(2)
    assert cpus.available_cpus(v2_root(tmp_path, "600000 100000")) == 2
    assert cpus.cgroup_quota_cpus(tmp_path) == 6


def test_quota_smaller_than_the_affinity_wins(tmp_path, affinity):
    affinity(64)
    assert cpus.available_cpus(v1_root(tmp_path, "200000")) == 2


def test_nested_cgroup_reads_its_parents_limits(tmp_path, affinity):
    # A pod's cgroup limits 3 CPUs; the process sits in a child cgroup that sets none.
    root = v2_root(tmp_path, "max 100000\n", cgroup="/kubepods/pod1/container")
    write(root, {"sys/fs/cgroup/kubepods/pod1/cpu.max": "300000 100000\n"})
    assert cpus.available_cpus(root) == 3
    # The tightest of them wins, wherever it is on the way up.
    write(root, {"sys/fs/cgroup/kubepods/pod1/container/cpu.max": "100000 100000\n"})
    assert cpus.available_cpus(root) == 1


def test_without_proc_the_usual_mount_points_are_read(tmp_path, affinity):
    write(tmp_path, {"sys/fs/cgroup/cpu.max": "200000 100000\n"})
    assert cpus.available_cpus(tmp_path) == 2
    v1 = tmp_path / "v1"
    quota = "sys/fs/cgroup/cpu/cpu.cfs_"
    write(v1, {quota + "quota_us": "300000", quota + "period_us": "100000"})
    assert cpus.available_cpus(v1) == 3


def test_mount_points_with_escaped_spaces(tmp_path, affinity):
    root = write(
        tmp_path,
        {
            "proc/self/cgroup": "0::/\n",
            "proc/self/mountinfo": "41 31 0:38 / /cg\\040root rw - cgroup2 cgroup2 rw\n",
            "cg root/cpu.max": "200000 100000\n",
        },
    )
    assert cpus.available_cpus(root) == 2


@pytest.mark.parametrize(
    "cpu_max", ["", "garbage\n", "200000\n", "200000 0\n", "-5 100000\n", "0 100000\n"]
)
def test_unreadable_quota_means_no_limit(tmp_path, affinity, cpu_max):
    assert cpus.available_cpus(v2_root(tmp_path, cpu_max)) == 8


def test_malformed_proc_files_are_no_limit(tmp_path, affinity):
    root = write(
        tmp_path,
        {"proc/self/cgroup": "nonsense\n", "proc/self/mountinfo": "also nonsense\n"},
    )
    assert cpus.available_cpus(root) == 8


def test_this_machine():
    found = cpus.available_cpus()
    assert 1 <= found <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("available", "settings", "expected"),
    [
        (4, (0, 0), (4, 1)),  # one worker per CPU, one thread each
        (4, (2, 0), (2, 2)),  # fewer workers: the CPUs divided between them
        (1, (3, 0), (3, 1)),  # more workers than CPUs: still one thread each
        (8, (0, 3), (8, 3)),  # threads as set
        (4, (1, 0), (1, 4)),
        (6, (4, 0), (4, 1)),  # rounded down
        (2, (5, 7), (5, 7)),  # both set: used as they are
    ],
)
def test_layout(monkeypatch, available, settings, expected):
    monkeypatch.setattr(cpus, "available_cpus", lambda root=None: available)
    assert cpus.layout(*settings) == expected
