"""Soak test: a real server on loopback under minutes of mixed good and bad traffic.

    python -m scripts.soak                       # 3 minutes at concurrency 32 (`make soak`)
    python -m scripts.soak --seconds 60 --json artifacts/soak.json

Starts `python -m service` on a free 127.0.0.1 port (models/ if it holds exported models,
else tiny untrained ones exported to a temporary folder: that needs torch, the `train` extra),
sends a fixed mix of good requests and bad ones (corrupt images, SVG, NaN, bad queries,
decompression bombs, unknown routes) from `--concurrency` clients, and reports requests
served, counts by status, latency percentiles, transport errors, and the server's RSS after
warm-up and at the end (summed over the server's processes: VAE_WORKERS applies as when
serving). Exits 1 on any 5xx or transport error, or RSS growth over --max-growth-mb.
The server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image, ImageDraw

from harness.processes import (
    MB,
    ServerNotReady,
    free_port,
    peak_rss_mb,
    process_tree,
    rss_mb,
    stop,
    wait_ready,
)

REPO = Path(__file__).resolve().parent.parent
# The report's memory figures are MiB (2^20 bytes), as the soak has always reported them.
MIB = 2**20


def tree_rss_mib(pid: int, peak: bool = False) -> float:
    """RSS (or each process's peak RSS) summed over the server's process tree, in MiB
    (VAE_WORKERS > 1: a supervisor and its worker processes)."""
    return (peak_rss_mb(pid) if peak else rss_mb(pid)) * MB / MIB


def model_dir_or_tiny(requested: str | None, scratch: Path) -> Path:
    if requested:
        return Path(requested)
    shipped = REPO / "models"
    if (shipped / "vae" / "metadata.json").is_file():
        return shipped
    from harness.models import export_tiny_models  # torch: the train extra

    return export_tiny_models(scratch)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def digit(size: int = 28, dark_on_light: bool = False) -> bytes:
    image = Image.new("L", (size, size), 255 if dark_on_light else 0)
    s = size / 28
    ImageDraw.Draw(image).line(
        [(8 * s, 6 * s), (20 * s, 6 * s), (12 * s, 22 * s)],
        fill=0 if dark_on_light else 255,
        width=max(1, round(2.5 * s)),
    )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if dark_on_light else "PNG")
    return buffer.getvalue()


def bomb(width: int, height: int) -> bytes:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))


def traffic() -> list[tuple[str, str, dict[str, Any], str]]:
    """(method, path, httpx kwargs, kind) — kind 'good' or 'bad'."""
    seven, photo = digit(), digit(300, dark_on_light=True)
    noise = png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    raw = {"headers": {"content-type": "image/png"}}
    good: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/sample?n=16&seed=1", {}),
        ("GET", "/sample?n=4&model=ae&format=json", {}),
        ("POST", "/encode", {"files": {"file": ("7.png", seven)}}),
        ("POST", "/encode", {"content": photo, "headers": {"content-type": "image/jpeg"}}),
        ("POST", "/reconstruct?format=json", {"files": {"file": ("p.jpg", photo)}}),
        ("POST", "/reconstruct?sample=true&seed=3", {"content": seven, **raw}),
        ("POST", "/encode/batch", {"files": [("files", ("7.png", seven))] * 8}),
        ("POST", "/decode?scale=2", {"json": {"z": [[0.5, -1.0]] * 8}}),
        ("GET", "/models", {}),
        ("GET", "/healthz", {}),
    ]
    bad: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/encode", {"content": seven[:60], **raw}),  # truncated: 400
        ("POST", "/encode", {"content": b"<svg xmlns='http://www.w3.org/2000/svg'/>", **raw}),
        ("POST", "/encode", {"files": {"file": ("n.png", noise[:300])}}),  # 400
        ("POST", "/encode", {"content": bomb(30_000, 30_000), **raw}),  # 413
        ("POST", "/encode", {"content": png(np.zeros((40, 40), np.uint8)), **raw}),  # 422
        (
            "POST",
            "/decode",
            {"content": b'{"z": [[NaN, 0]]}', "headers": {"content-type": "application/json"}},
        ),  # 422
        (
            "POST",
            "/decode",
            {
                "content": b'{"z": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                "headers": {"content-type": "application/json"},
            },
        ),  # 422
        ("GET", "/sample?n=0&temperature=inf", {}),  # 422
        (
            "POST",
            "/encode",
            {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data; boundary=x"}},
        ),  # 400/422
        ("GET", "/models/../../etc/passwd", {}),  # 404
    ]
    return [(m, p, k, "good") for m, p, k in good] + [(m, p, k, "bad") for m, p, k in bad]


async def drive(base: str, seconds: float, concurrency: int) -> dict:
    mix = traffic()
    statuses: Counter = Counter()
    by_kind: Counter = Counter()
    transport_errors: Counter = Counter()
    latencies: list[float] = []
    error_samples: list[str] = []
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def worker(offset: int) -> None:
            i = offset
            while time.monotonic() < stop_at:
                method, path, kwargs, kind = mix[i % len(mix)]
                i += 7  # co-prime with the mix length: every worker walks the whole mix
                started = time.perf_counter()
                try:
                    r = await client.request(method, path, **kwargs)
                except httpx.TransportError as exc:
                    transport_errors[type(exc).__name__] += 1
                    if len(error_samples) < 10:
                        error_samples.append(f"{method} {path[:60]}: {exc!r}"[:300])
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[r.status_code] += 1
                by_kind[(kind, r.status_code // 100)] += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    lat = np.array(latencies) if latencies else np.zeros(1)
    return {
        "requests": int(sum(statuses.values())),
        "by_status": {str(k): v for k, v in sorted(statuses.items())},
        "good_2xx": by_kind[("good", 2)],
        "good_not_2xx": sum(v for (kind, c), v in by_kind.items() if kind == "good" and c != 2),
        "bad_4xx": by_kind[("bad", 4)],
        "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "transport_errors": dict(transport_errors),
        "transport_error_samples": error_samples,
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)) * 1000, 1),
            "p90": round(float(np.percentile(lat, 90)) * 1000, 1),
            "p99": round(float(np.percentile(lat, 99)) * 1000, 1),
            "max": round(float(lat.max()) * 1000, 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 180)))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before RSS at start")
    parser.add_argument("--model-dir", help="default: models/, else tiny untrained models")
    parser.add_argument("--max-growth-mb", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vae-soak-") as scratch:
        scratch_path = Path(scratch)
        model_dir = model_dir_or_tiny(args.model_dir, scratch_path / "models")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = scratch_path / "server.log"
        env = {
            **os.environ,
            "VAE_MODEL_DIR": str(model_dir),
            "VAE_ACCESS_LOG": "false",
            "VAE_LOG_LEVEL": "warning",
        }
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                try:
                    wait_ready(server, base, log_path, timeout=60)
                except ServerNotReady as exc:
                    print(exc, file=sys.stderr)
                    return 2
                asyncio.run(drive(base, args.warmup, args.concurrency))
                rss_start = tree_rss_mib(server.pid)
                started = time.monotonic()
                report = asyncio.run(drive(base, args.seconds, args.concurrency))
                elapsed = time.monotonic() - started
                rss_end = tree_rss_mib(server.pid)
                report.update(
                    seconds=round(elapsed, 1),
                    concurrency=args.concurrency,
                    requests_per_second=round(report["requests"] / elapsed, 1),
                    rss_mb_start=round(rss_start, 1),
                    rss_mb_end=round(rss_end, 1),
                    rss_mb_growth=round(rss_end - rss_start, 1),
                    rss_mb_peak=round(tree_rss_mib(server.pid, peak=True), 1),
                    server_processes=len(process_tree(server.pid)),
                    model_dir=str(model_dir),
                    cpus=os.cpu_count(),
                    load_average=[round(x, 2) for x in os.getloadavg()],
                )
            finally:
                stop(server, timeout=30)
        report["server_exit_status"] = server.returncode
        server_log = log_path.read_text(errors="replace")
        report["server_log_tail"] = server_log.splitlines()[-10:]
        if "Traceback" in server_log:
            report["server_log_tracebacks"] = True

    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    failed = (
        report["server_errors_5xx"]
        or report["transport_errors"]
        or report["rss_mb_growth"] > args.max_growth_mb
        or report.get("server_log_tracebacks")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
