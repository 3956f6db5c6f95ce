"""Where a request's CPU goes: py-spy samples the server (every worker) under wrk load.

    python -m bench.profile_service                         # /encode and /sample?n=16
    python -m bench.profile_service --only encode --seconds 5

For each endpoint: the server's CPU ms per request (from /proc, as in http_load.py) split
into parts by py-spy's stack samples (each stack counted once, in the first matching part of
PARTS below: inference, image decoding, preprocessing, PNG encoding, multipart parsing, JSON,
middleware, thread-pool hand-off, FastAPI/Starlette, uvicorn + event loop). py-spy takes some
CPU itself (it reads the server's memory, it does not stop it: --nonblocking), so the
throughput measured while profiling is a little lower than http_load's; the split is what
counts. The raw stacks (collapsed format) are kept in bench/results/profile_<case>.txt for
flame graphs (e.g. https://www.speedscope.app).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import CACHE, RESULTS, model_dir, service_server, warn_if_busy, write_result
from bench.http_load import cases
from bench.loadgen import run_wrk

# (part, substrings of a frame "function (file:line)"). A sample goes to the part of the
# innermost frame that matches one (frames matching none, such as numpy's or Pillow's, are
# passed over: Pillow under open_image is image decoding, under imaging/png.py PNG encoding).
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("inference (onnxruntime)", ("onnxruntime",)),
    ("image decoding (Pillow)", ("open_image (",)),
    ("preprocessing (MNIST-style)", ("service/imaging/prepare.py", "to_model_pixels (")),
    ("PNG encoding", ("service/imaging/png.py", "to_unit_pixels (")),
    ("multipart parsing", ("python_multipart", "formparsers.py")),
    ("pydantic validation + JSON", ("json/", "pydantic", "jsonable_encoder", "render (")),
    (
        "middleware (request id, access log, metrics, limits)",
        (
            "service/api/middleware.py",
            "service/api/metrics.py",
            "prometheus_client",
            "logging/",
            "uuid",
        ),
    ),
    # Every other frame in service/api/: routes, dependencies, uploads, responses.
    ("handlers (service/api/)", ("service/api/",)),
    ("thread-pool hand-off (anyio)", ("anyio/", "concurrent/futures", "queue.py", "threading.py")),
    ("FastAPI/Starlette (routing, dependencies)", ("fastapi/", "starlette/")),
    ("uvicorn + event loop (HTTP, sockets)", ("uvicorn/", "httptools", "asyncio/", "uvloop")),
]
OTHER = "other"
# Threads parked waiting for work are not CPU: py-spy --nonblocking can catch them waking up.
IDLE_LEAVES = ("Condition.wait (", "Queue.get (", "Event.wait (", "_recv (", "select (")


def part_of(stack: str) -> str | None:
    frames = stack.split(";")
    if frames[-1].startswith(IDLE_LEAVES):
        return None
    for frame in reversed(frames):
        for name, keys in PARTS:
            if any(k in frame for k in keys):
                return name
    return OTHER


def classify(stacks: dict[str, int]) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for stack, n in stacks.items():
        part = part_of(stack)
        if part is not None:
            counts[part] += n
    return dict(counts)


def read_collapsed(path: Path) -> dict[str, int]:
    stacks: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            # py-spy's first frame is the thread ("process 123:..."); the rest are frames
            stacks[stack] = stacks.get(stack, 0) + int(n)
    return stacks


def profile_case(
    name: str,
    seconds: float,
    concurrency: int,
    env: dict[str, str] | None,
    rate: int,
    out_dir: Path | None = None,
) -> dict:
    models, _ = model_dir()
    request = cases()[name]
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    out_txt = out_dir / f"profile_{name}.txt"
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with service_server(models, env=env, log=logs / "profile.log") as server:
        run_wrk(server.url, [request], concurrency, 1.0, server.pid, name)  # warm up
        spy = subprocess.Popen(
            [
                shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(server.pid),
                "--subprocesses",
                "--nonblocking",
                "--rate",
                str(rate),
                "--duration",
                str(max(1, round(seconds))),
                "--format",
                "raw",
                "--output",
                str(out_txt),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)  # py-spy attaching
        result = run_wrk(server.url, [request], concurrency, seconds, server.pid, name)
        _, err = spy.communicate(timeout=seconds + 30)
        if spy.returncode != 0 or not out_txt.exists():
            raise RuntimeError(f"py-spy failed: {err.decode()}")
    stacks = read_collapsed(out_txt)
    parts = classify(stacks)
    total = sum(parts.values()) or 1
    per_request = result.server_cpu_ms_per_request
    split = {
        part: {
            "samples": n,
            "share": round(n / total, 4),
            "ms_per_request": round(per_request * n / total, 4),
        }
        for part, n in sorted(parts.items(), key=lambda kv: -kv[1])
    }
    print(
        f"{name}: c={concurrency} {result.rps:.0f} req/s while profiled, "
        f"server CPU {per_request:.3f} ms/request, {total} samples"
    )
    for part, row in split.items():
        print(f"  {row['ms_per_request']:7.3f} ms  {100 * row['share']:5.1f}%  {part}")
    return {
        "case": name,
        "concurrency": concurrency,
        "rps_while_profiled": result.rps,
        "server_cpu_ms_per_request": per_request,
        "client_cpu_share": result.client_cpu_share,
        "errors": result.error_count,
        "samples": total,
        "parts": split,
        "stacks_file": out_txt.name,
    }


def run(
    only: list[str] | None = None,
    seconds: float = 6.0,
    concurrency: int = 32,
    env: dict[str, str] | None = None,
    rate: int = 200,
    out_dir: Path | None = None,
) -> dict:
    quiet = warn_if_busy()
    names = only or ["encode", "sample_png"]
    profiles = [profile_case(n, seconds, concurrency, env, rate, out_dir) for n in names]
    data = {
        "quiet_machine": quiet,
        "server_env": env or {},
        "sampler": f"py-spy record --subprocesses --nonblocking --rate {rate}",
        "profiles": profiles,
    }
    write_result("profile", data, out_dir)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=list(cases()))
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--env", nargs="*", default=[], help="server settings, KEY=VALUE")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    run(args.only, args.seconds, args.concurrency, env, args.rate, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
