"""How the service's cost grows: with the images per request, and with the concurrency.

    python -m bench.curves                    # ~2 minutes: curves.json and curves.png
    python -m bench.curves --duration 1 --sizes 1 16 --concurrency 1 8 32

One real server (`python -m service`, its defaults) on a loopback port, wrk (bench/loadgen.py):

  sizes        GET /sample?n=N (one PNG grid of N digits) and POST /encode/batch (N multipart
               PNGs) at N = 1, 16, 64, 256, at concurrency SIZE_CONCURRENCY: images/s and
               server CPU ms per image
  concurrency  GET /sample?n=16 at concurrency 1, 2, 4, ..., 64: requests/s, p50 and p99; the
               service saturates where more connections add latency, not requests/s

Writes bench/results/curves.json and a plot of both, bench/results/curves.png (matplotlib,
in the project's `train` extra; without it, the JSON only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import http_load
from bench.common import (
    CACHE,
    RESULTS,
    digit_pngs,
    model_dir,
    service_server,
    warn_if_busy,
    write_result,
)
from bench.loadgen import Request, multipart

SIZES = (1, 16, 64, 256)
SIZE_CONCURRENCY = 32
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
SATURATION_SHARE = 0.95  # saturated: the first concurrency reaching this share of the best req/s
PLOT = "curves.png"


def size_requests(sizes: list[int]) -> dict[str, dict[int, Request]]:
    pngs = digit_pngs(max(sizes))
    return {
        "sample": {n: Request(f"/sample?n={n}") for n in sizes},
        "encode_batch": {
            n: Request(
                "/encode/batch",
                "POST",
                *multipart([(f"d{i}.png", p) for i, p in enumerate(pngs[:n])], "files"),
            )
            for n in sizes
        },
    }


def saturation(rows: list[dict]) -> dict | None:
    """The first concurrency whose req/s reaches SATURATION_SHARE of the best measured."""
    if not rows:
        return None
    best = max(r["rps"] for r in rows)
    ordered = sorted(rows, key=lambda r: r["concurrency"])
    first = next(r for r in ordered if r["rps"] >= SATURATION_SHARE * best)
    return {
        "concurrency": first["concurrency"],
        "rps": first["rps"],
        "best_rps": best,
        "server_cpu_share": first["server_cpu_share"],
    }


def run(
    duration: float = 3.0,
    warmup: float = 1.0,
    sizes: list[int] | None = None,
    concurrency: list[int] | None = None,
    size_concurrency: int = SIZE_CONCURRENCY,
    out_dir: Path | None = None,
) -> dict:
    quiet = warn_if_busy()
    sizes = sizes or list(SIZES)
    concurrency = concurrency or list(CONCURRENCY)
    models, models_note = model_dir()
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    size_rows: list[dict] = []
    conc_rows: list[dict] = []
    with service_server(models, log=logs / "service.log") as server:
        for kind, by_size in size_requests(sizes).items():
            for n, req in by_size.items():
                (result,) = http_load.measure(
                    server.url, server.pid, f"{kind}:{n}", req, [size_concurrency], duration, warmup
                )
                row = result.as_dict()
                row.update(
                    kind=kind,
                    images=n,
                    images_per_s=round(result.rps * n, 1),
                    server_cpu_ms_per_image=round(result.server_cpu_ms_per_request / n, 4),
                )
                size_rows.append(row)
        sample = Request(f"/sample?n={http_load.SAMPLE_N}")
        for result in http_load.measure(
            server.url, server.pid, "sample:16", sample, concurrency, duration, warmup
        ):
            row = result.as_dict()
            row["images_per_s"] = round(result.rps * http_load.SAMPLE_N, 1)
            conc_rows.append(row)
    errors = sum(sum(r["errors"].values()) for r in size_rows + conc_rows)
    data = {
        "quiet_machine": quiet,
        "models": models_note,
        "duration_s": duration,
        "size_concurrency": size_concurrency,
        "sizes": size_rows,
        "concurrency": conc_rows,
        "saturation": saturation(conc_rows),
        "errors": errors,
    }
    data["plot"] = plot(data, (out_dir or RESULTS) / PLOT)
    write_result("curves", data, out_dir)
    return data


def plot(data: dict, path: Path) -> str | None:
    """The two curves as one PNG (None, and a note, without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("curves: no matplotlib, no plot (pip install -e '.[train]')", file=sys.stderr)
        return None
    fig, (ax_rate, ax_cpu, ax_conc) = plt.subplots(1, 3, figsize=(15, 4.6))
    labels = {"sample": "GET /sample?n=N", "encode_batch": "POST /encode/batch (N PNGs)"}
    for kind, label in labels.items():
        rows = sorted(
            (r for r in data["sizes"] if r["kind"] == kind and r["requests"]),
            key=lambda r: r["images"],
        )
        if not rows:
            continue
        n = [r["images"] for r in rows]
        ax_rate.plot(n, [r["images_per_s"] for r in rows], "o-", label=label)
        ax_cpu.plot(n, [r["server_cpu_ms_per_image"] for r in rows], "o-", label=label)
    for ax in (ax_rate, ax_cpu):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["images"] for r in data["sizes"]}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("images per request (N)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_rate.set_ylabel("images/s")
    ax_rate.set_title(f"Throughput, concurrency {data['size_concurrency']}")
    ax_cpu.set_yscale("log")
    ax_cpu.set_ylabel("server CPU ms per image")
    ax_cpu.set_title("Cost per image")
    rows = sorted((r for r in data["concurrency"] if r["requests"]), key=lambda r: r["concurrency"])
    c = [r["concurrency"] for r in rows]
    ax_conc.plot(c, [r["rps"] for r in rows], "o-", color="C0", label="requests/s")
    ax_conc.set_xscale("log", base=2)
    ax_conc.set_xticks(c)
    ax_conc.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_conc.set_xlabel("concurrent connections")
    ax_conc.set_ylabel("requests/s", color="C0")
    ax_conc.set_ylim(bottom=0)
    ax_conc.grid(True, alpha=0.3)
    ax_lat = ax_conc.twinx()
    ax_lat.plot(c, [r["p50_ms"] for r in rows], "s--", color="C1", label="p50 ms")
    ax_lat.plot(c, [r["p99_ms"] for r in rows], "^--", color="C3", label="p99 ms")
    ax_lat.set_ylabel("latency ms", color="C3")
    ax_lat.set_ylim(bottom=0)
    sat = data.get("saturation")
    if sat:
        ax_conc.axvline(sat["concurrency"], color="grey", linestyle=":")
        ax_conc.annotate(
            f"saturated at c={sat['concurrency']}\n"
            f"({100 * sat['server_cpu_share']:.0f}% of the CPUs)",
            (sat["concurrency"], sat["rps"]),
            textcoords="offset points",
            xytext=(6, -28),
            fontsize=8,
        )
    handles = ax_conc.get_legend_handles_labels()[0] + ax_lat.get_legend_handles_labels()[0]
    ax_conc.legend(handles, [str(h.get_label()) for h in handles], fontsize=8, loc="center right")
    ax_conc.set_title(f"GET /sample?n={http_load.SAMPLE_N} vs concurrency")
    busy = "" if data["quiet_machine"] else "  (NOT a quiet machine)"
    fig.suptitle(f"The service's cost curves, {data['duration_s']:g} s per point{busy}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
    return path.name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=3.0, help="seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds per point")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    p.add_argument("--size-concurrency", type=int, default=SIZE_CONCURRENCY)
    p.add_argument("--out-dir", type=Path, default=None, help="results folder")
    args = p.parse_args(argv)
    started = time.perf_counter()
    data = run(
        args.duration,
        args.warmup,
        args.sizes,
        args.concurrency,
        args.size_concurrency,
        args.out_dir,
    )
    print(f"curves: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
