"""Where the slow requests at concurrency 1 come from: a trace of every request, both sides.

    python -m bench.tail                                  # /sample?n=16, 30 s, c=1
    python -m bench.tail --seconds 60 --burst 1 --env VAE_WORKERS=1 --label one-worker

One real server (`python -m service`, its defaults unless --env) on a loopback port, every
Python process of it traced by bench/tailtrace/sitecustomize.py (each request's time inside the
ASGI app, every garbage collection, with --loop the event loop's lateness), and one keep-alive
client connection here sending the request back to back, each send and receive stamped. Both
use CLOCK_MONOTONIC, so each client request is matched with the server's record of it:

  client latency = server time (in the app: routing, work, response) + outside time (the
  kernel's loopback, uvicorn's parsing and writing, the process waiting for a CPU, the client)

For the slow requests (over --slow x the median, default 2) the report says which part grew and
what overlapped them (a gc, a loop lag); the spacing of the slow requests shows a period if
there is one. --burst S first drives S seconds at concurrency 32 with wrk (as bench/http_load.py
warms up before its concurrency-1 rows), --wrk runs wrk at c=1 for the same time after the trace
(its p50/p99 for comparison). The other work on the machine is recorded (others' CPU share).
Writes bench/results/NAME.json (default tail.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE, ROOT, model_dir, other_cpu_share, service_server, write_result
from bench.loadgen import Request, run_wrk
from harness.processes import process_tree

TRACE_PATH = ROOT / "bench" / "tailtrace"


def client_run(port: int, path: str, seconds: float) -> list[tuple[int, int]]:
    """(send, receive) CLOCK_MONOTONIC ns of each GET `path`, one keep-alive connection."""
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    out = []
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    deadline = time.monotonic() + seconds
    buf = b""
    try:
        while time.monotonic() < deadline:
            t0 = time.monotonic_ns()
            sock.sendall(head)
            while b"\r\n\r\n" not in buf:
                buf += sock.recv(65536)
            header, buf = buf.split(b"\r\n\r\n", 1)
            length = next(
                int(line.split(b":", 1)[1])
                for line in header.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(buf) < length:
                buf += sock.recv(65536)
            buf = buf[length:]
            out.append((t0, time.monotonic_ns()))
    finally:
        sock.close()
    return out


def inprocess_run(seconds: float, slow: float) -> dict:
    """The same work as /sample?n=16 (z, decoder at 16, PNG grid; one onnxruntime thread) in a
    loop in this process, each iteration timed: the tail the machine gives any process now,
    without HTTP, uvicorn or the service around it (the control for the server's tail)."""
    from bench.peers import work

    models, _ = model_dir()
    graphs = work.Graphs(models / "vae", threads=1)
    for _ in range(50):
        work.sample_png(graphs, 16)
    lat = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.monotonic_ns()
        work.sample_png(graphs, 16)
        lat.append((time.monotonic_ns() - t0) / 1e6)
    p50 = statistics.median(lat)
    return {
        "iterations": len(lat),
        "p50_ms": round(p50, 3),
        "p99_ms": round(sorted(lat)[int(0.99 * (len(lat) - 1))], 3),
        "max_ms": round(max(lat), 3),
        "slow_share": round(sum(1 for x in lat if x > slow * p50) / len(lat), 4),
    }


def read_trace(folder: Path) -> dict[str, list]:
    records: dict[str, list] = {"req": [], "gc": [], "loop": [], "log": [], "metric": []}
    for f in folder.glob("*.jsonl"):
        pid = int(f.stem)
        for line in f.read_text().splitlines():
            r = json.loads(line)
            records[r[0]].append([*r[1:], pid])
    for rows in records.values():
        rows.sort()
    return records


def analyse(client: list[tuple[int, int]], trace: dict[str, list], slow: float) -> dict:
    """Match client requests with the server's, split each latency, describe the slow ones."""
    import bisect

    reqs = [r for r in trace["req"] if r[2] != "/readyz"]
    starts = [r[0] for r in reqs]
    lat = [(b - a) / 1e6 for a, b in client]
    p50 = statistics.median(lat)
    p99 = sorted(lat)[int(0.99 * (len(lat) - 1))]
    t_begin = client[0][0]
    rows: list[dict[str, Any]] = []
    for (a, b), ms in zip(client, lat, strict=True):
        i = bisect.bisect_left(starts, a)
        server = reqs[i] if i < len(reqs) and reqs[i][0] <= b else None
        server_ms = (server[1] - server[0]) / 1e6 if server else None
        cpu_ms = server[3] / 1e6 if server else None
        pid = server[4] if server else None
        rows.append(
            {
                "t_s": (a - t_begin) / 1e9,
                "ms": ms,
                "server_ms": server_ms,
                "cpu_ms": cpu_ms,
                "a": a,
                "b": b,
                "pid": pid,
            }
        )
    server_all = [r["server_ms"] for r in rows if r["server_ms"] is not None]
    server_p50 = statistics.median(server_all) if server_all else 0.0
    slow_rows = [r for r in rows if r["ms"] > slow * p50]
    for r in slow_rows:
        r["outside_ms"] = r["ms"] - r["server_ms"] if r["server_ms"] is not None else None
        r["gc"] = [
            {"gen": g[2], "ms": (g[1] - g[0]) / 1e6}
            for g in trace["gc"]
            if g[0] < r["b"] and g[1] > r["a"] and g[3] == r["pid"]
        ]
        for kind in ("log", "metric"):
            r[f"{kind}_ms"] = [
                x[1] / 1e6
                for x in trace[kind]
                if x[2] == r["pid"] and r["a"] - 20e6 <= x[0] <= r["b"]
            ]
        r["loop_lag_ms"] = [
            lag[1] / 1e6
            for lag in trace["loop"]
            if r["a"] <= lag[0] + lag[1] and lag[0] <= r["b"] and lag[2] == r["pid"]
        ]
    gaps = [b["t_s"] - a["t_s"] for a, b in itertools.pairwise(slow_rows)]
    in_server = sum(
        1 for r in slow_rows if r["server_ms"] is not None and r["server_ms"] > slow * server_p50
    )
    with_gc = sum(1 for r in slow_rows if r["gc"])
    cpu_all = [r["cpu_ms"] for r in rows if r["cpu_ms"] is not None]
    cpu_p50 = statistics.median(cpu_all) if cpu_all else 0.0
    # Slow in the app but with the usual CPU time: the process waited for a CPU (descheduled)
    waited = sum(
        1
        for r in slow_rows
        if r["server_ms"] is not None
        and r["server_ms"] > slow * server_p50
        and r["cpu_ms"] is not None
        and r["cpu_ms"] <= slow * cpu_p50
    )
    gcs = trace["gc"]
    return {
        "requests": len(lat),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(max(lat), 3),
        "server_p50_ms": round(server_p50, 3) if server_p50 else None,
        "slow_threshold_ms": round(slow * p50, 3),
        "slow": len(slow_rows),
        "slow_share": round(len(slow_rows) / len(lat), 4),
        "slow_with_long_server_time": in_server,
        "cpu_p50_ms": round(cpu_p50, 3),
        "slow_in_app_with_usual_cpu": waited,
        "slow_with_gc": with_gc,
        "gc_count": len(gcs),
        "gc_by_generation": {
            str(g): sum(1 for x in gcs if x[2] == g) for g in sorted({x[2] for x in gcs})
        },
        "gc_max_ms": round(max(((x[1] - x[0]) / 1e6 for x in gcs), default=0), 3),
        "loop_lags": len(trace["loop"]),
        "slow_writes": {
            kind: {
                "count": len(trace[kind]),
                "max_ms": round(max((x[1] / 1e6 for x in trace[kind]), default=0), 3),
                "total_ms": round(sum(x[1] / 1e6 for x in trace[kind]), 3),
            }
            for kind in ("log", "metric")
        },
        "slow_after_a_slow_write": sum(1 for r in slow_rows if r["log_ms"] or r["metric_ms"]),
        "slow_gap_s_median": round(statistics.median(gaps), 3) if gaps else None,
        "slow_in_first_second": sum(1 for r in slow_rows if r["t_s"] < 1.0),
        "slowest": [
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k not in "ab"}
            for r in sorted(slow_rows, key=lambda r: -r["ms"])[:15]
        ],
        "slow_times_s": [round(r["t_s"], 3) for r in slow_rows][:400],
        "slow_ms": [round(r["ms"], 2) for r in slow_rows][:400],
        "slow_server_ms": [
            round(r["server_ms"], 2) if r["server_ms"] is not None else None
            for r in slow_rows[:400]
        ],
    }


def run(
    seconds: float,
    path: str,
    env: dict[str, str],
    burst: float,
    wrk: bool,
    slow: float,
    loop: bool,
) -> dict:
    models, _ = model_dir()
    folder = Path(tempfile.mkdtemp(prefix="vae-tail-", dir=CACHE if CACHE.is_dir() else None))
    trace_env = {
        "VAE_TAIL_TRACE": str(folder),
        "VAE_TAIL_LOOP": "1" if loop else "0",
        "PYTHONPATH": os.pathsep.join([str(TRACE_PATH), str(ROOT)]),
        **env,
    }
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with service_server(models, env=trace_env, log=logs / "tail.log") as server:
        req = Request(path)
        if burst > 0:
            run_wrk(server.url, [req], 32, burst, server.pid, "burst")
        before = time.perf_counter()
        others_before = other_cpu_share(0.2)
        client = client_run(server.port, path, seconds)
        wall = time.perf_counter() - before
        wrk_row = (
            run_wrk(server.url, [req], 1, seconds, server.pid, "wrk").as_dict() if wrk else None
        )
        others_after = other_cpu_share(0.2)
        for pid in process_tree(server.pid):
            os.kill(pid, signal.SIGUSR2)
        time.sleep(1.0)
    data = analyse(client, read_trace(folder), slow)
    data |= {
        "path": path,
        "seconds": round(wall, 1),
        "server_env": env,
        "burst_s": burst,
        "others_cpu_share": [round(others_before, 2), round(others_after, 2)],
        "wrk_c1": {k: wrk_row[k] for k in ("rps", "p50_ms", "p99_ms", "max_ms", "other_cpu_share")}
        if wrk_row
        else None,
        "trace_folder": str(folder),
    }
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--path", default="/sample?n=16")
    p.add_argument("--env", nargs="*", default=[], help="server settings, KEY=VALUE")
    p.add_argument("--burst", type=float, default=0.0, help="seconds at c=32 (wrk) first")
    p.add_argument("--wrk", action="store_true", help="also wrk at c=1 for --seconds after")
    p.add_argument("--slow", type=float, default=2.0, help="slow: over this x the median")
    p.add_argument("--loop", action="store_true", help="also trace the event loop's lateness")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the server and client at this niceness (e.g. -10: ahead of the machine's "
        "other work, close to a quiet machine as the scheduler sees it; needs root)",
    )
    p.add_argument(
        "--inprocess",
        type=float,
        default=0.0,
        help="also time the same work in a loop in this process for this many seconds (the "
        "control: the tail without any server)",
    )
    p.add_argument("--label", default="")
    p.add_argument("--out", default="tail")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    if args.nice:
        os.nice(args.nice)  # inherited by the server and wrk
    data = run(args.seconds, args.path, env, args.burst, args.wrk, args.slow, args.loop)
    if args.inprocess:
        data["inprocess"] = inprocess_run(args.inprocess, args.slow)
    data["label"] = args.label
    data["nice"] = args.nice
    write_result(args.out, data, args.out_dir)
    summary = {k: v for k, v in data.items() if not k.startswith("slow_") and k != "slowest"}
    print(json.dumps(summary, indent=1))
    print("slowest:", file=sys.stderr)
    for r in data["slowest"]:
        print(f"  {r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
