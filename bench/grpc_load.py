"""A closed-loop load generator for unary gRPC calls: wrk's role (bench/loadgen.py) for gRPC.

    python -m bench.grpc_load ADDRESS /package.Service/Method REQUEST_FILE \\
        --concurrency 32 --duration 3

REQUEST_FILE holds one serialized request message, sent as it is (no protobuf work here); the
replies are taken as bytes, never parsed. `concurrency` loops on `concurrency` channels, each
its own HTTP/2 connection (as wrk's connections), on grpc.aio in one process. Prints one JSON
line: requests, seconds, latency percentiles, errors by status code. Python is slower than wrk:
its CPU time is measured and reported beside the server's (`run_grpc`), and the server's CPU
per request does not depend on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import CLK_TCK, machine_busy_seconds
from bench.loadgen import LoadResult
from harness.processes import cpu_seconds


async def _load(address: str, method: str, body: bytes, concurrency: int, duration: float) -> dict:
    import grpc

    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(concurrency)
    ]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter()
    deadline = start + duration

    async def loop(channel: grpc.aio.Channel) -> None:
        call = channel.unary_unary(method)  # bytes in, bytes out
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                await call(body, timeout=30)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)

    for channel in channels:
        await channel.channel_ready()
    await asyncio.gather(*(loop(c) for c in channels))
    seconds = time.perf_counter() - start
    for channel in channels:
        await channel.close()
    latencies.sort()

    def percentile(p: float) -> float:
        if not latencies:
            return 0.0
        return 1000 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]

    return {
        "requests": len(latencies),
        "seconds": seconds,
        "p50_ms": percentile(50),
        "p90_ms": percentile(90),
        "p99_ms": percentile(99),
        "max_ms": 1000 * latencies[-1] if latencies else 0.0,
        "mean_ms": 1000 * sum(latencies) / len(latencies) if latencies else 0.0,
        "errors": errors,
    }


def run_grpc(
    address: str,
    method: str,
    body: bytes,
    concurrency: int,
    duration: float,
    server_pid: int,
    name: str,
    tmp: Path,
) -> LoadResult:
    """Drive `method` with `body` at `concurrency` for `duration` seconds from a process of its
    own; the figures as bench.loadgen.run_wrk reports them (server CPU per request included)."""
    request_file = tmp / f"{name}.bin"
    request_file.write_bytes(body)
    argv = [sys.executable, "-m", "bench.grpc_load", address, method, str(request_file)]
    argv += ["--concurrency", str(concurrency), "--duration", str(duration)]
    server_before = cpu_seconds(server_pid)
    busy_before = machine_busy_seconds()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    server_cpu = cpu_seconds(server_pid) - server_before
    busy = machine_busy_seconds() - busy_before
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"bench.grpc_load failed: {stderr[-2000:]}")
    data = json.loads(stdout.strip().splitlines()[-1])
    # The client's start-up (imports, connections) is in its CPU time but not in `seconds`.
    client_cpu = rusage.ru_utime + rusage.ru_stime
    cores = os.cpu_count() or 1
    count, seconds = data["requests"], data["seconds"]
    return LoadResult(
        name=name,
        concurrency=concurrency,
        requests=count,
        seconds=round(seconds, 3),
        rps=round(count / seconds, 1) if seconds else 0.0,
        p50_ms=round(data["p50_ms"], 3),
        p90_ms=round(data["p90_ms"], 3),
        p99_ms=round(data["p99_ms"], 3),
        max_ms=round(data["max_ms"], 3),
        mean_ms=round(data["mean_ms"], 3),
        errors=data["errors"],
        server_cpu_s=round(server_cpu, 2),
        client_cpu_s=round(client_cpu, 2),
        server_cpu_share=round(server_cpu / wall / cores, 3),
        client_cpu_share=round(client_cpu / wall / cores, 3),
        server_cpu_ms_per_request=round(1000 * server_cpu / count, 3) if count else 0.0,
        other_cpu_share=round(max(0.0, busy - server_cpu - client_cpu) / wall / cores, 3),
        extra={"wall_s": round(wall, 3), "clk_tck": CLK_TCK, "client": "bench.grpc_load"},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_load", description=__doc__)
    parser.add_argument("address")
    parser.add_argument("method", help="/package.Service/Method")
    parser.add_argument("request_file", type=Path)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args(argv)
    body = args.request_file.read_bytes()
    result = asyncio.run(_load(args.address, args.method, body, args.concurrency, args.duration))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
