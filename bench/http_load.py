"""The HTTP path: a real server on a loopback port, driven by wrk, per endpoint and concurrency.

    python -m bench.http_load                       # every case at concurrency 1, 8, 32
    python -m bench.http_load --duration 2 --only encode sample_png --concurrency 32
    python -m bench.http_load --env VAE_WORKERS=1 --label one-worker   # an A/B of a setting

Per case and concurrency: requests/s, p50/p90/p99 latency, server and client CPU (shares of
all the machine's cores, and server CPU ms per request). Any error (socket error, non-2xx) is
reported and makes the run fail. With --baseline, the eager-PyTorch peer
(bench/baseline_torch_app.py) is measured on /sample?n=16 in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from pathlib import Path

from bench.common import (
    CACHE,
    baseline_run,
    baseline_server,
    digit_pngs,
    model_dir,
    service_server,
    warn_if_busy,
    write_result,
)
from bench.loadgen import LoadResult, Request, multipart, run_wrk

CONCURRENCY = (1, 8, 32)
SAMPLE_N = 16
BATCH = 64
ENDS = b'{"start": [-1.5, 0.5], "end": [1.0, -1.0]}'
# Images in or out per request, where a case's name does not say (BENCHMARKS.md's table).
IMAGES = {"interpolate": 10, "interpolate_slerp_json": 10, "manifold": 400, "score_batch16_ae": 16}


def cases() -> dict[str, Request]:
    pngs = digit_pngs(BATCH)
    one, one_type = multipart([("digit.png", pngs[0])], "file")
    many, many_type = multipart([(f"d{i}.png", p) for i, p in enumerate(pngs)], "files")
    return {
        "healthz": Request("/healthz"),
        "sample_png": Request(f"/sample?n={SAMPLE_N}"),
        "sample_json": Request(f"/sample?n={SAMPLE_N}&format=json"),
        "encode": Request("/encode", "POST", one, one_type),
        "encode_batch64": Request("/encode/batch", "POST", many, many_type),
        "reconstruct": Request("/reconstruct", "POST", one, one_type),
        # the analysis routes (service/api/latent_ops.py, scores.py)
        "interpolate": Request("/interpolate?steps=10", "POST", ENDS, "application/json"),
        "interpolate_slerp_json": Request(
            "/interpolate?steps=10&method=slerp&format=json", "POST", ENDS, "application/json"
        ),
        "manifold": Request("/manifold"),
        "score": Request("/score", "POST", one, one_type),
        "score_ae": Request("/score?model=ae", "POST", one, one_type),
        "score_batch16_ae": Request(
            "/score/batch?model=ae",
            "POST",
            *multipart([(f"d{i}.png", p) for i, p in enumerate(pngs[:16])], "files"),
        ),
    }


DESCRIPTIONS = {
    "healthz": "GET /healthz (framework floor: no model work)",
    "sample_png": f"GET /sample?n={SAMPLE_N} (one PNG grid)",
    "sample_json": f"GET /sample?n={SAMPLE_N}&format=json (16 base64 PNGs + z)",
    "encode": "POST /encode (one 28x28 PNG, multipart)",
    "encode_batch64": f"POST /encode/batch ({BATCH} PNGs, multipart)",
    "reconstruct": "POST /reconstruct (one 28x28 PNG, multipart; PNG out)",
    "interpolate": "POST /interpolate?steps=10 (two z as JSON; one PNG strip)",
    "interpolate_slerp_json": "POST /interpolate?steps=10&method=slerp&format=json",
    "manifold": "GET /manifold (20x20 grid at normal quantiles, one PNG; after the first, from "
    "the process's cache)",
    "score": "POST /score (one 28x28 PNG; VAE, default k: ELBO, IWAE log p(x), error map)",
    "score_ae": "POST /score?model=ae (one 28x28 PNG; reconstruction error only)",
    "score_batch16_ae": "POST /score/batch?model=ae (16 PNGs; a VAE batch costs about n x /score)",
    "baseline_sample_png": f"baseline (eager PyTorch) GET /sample?n={SAMPLE_N}",
}


def check(url: str, req: Request) -> None:
    """One request, which must succeed (before any load is measured)."""
    data = req.body
    headers = dict(req.headers)  # e.g. OIP's Inference-Header-Content-Length
    if req.content_type:
        headers["Content-Type"] = req.content_type
    r = urllib.request.Request(url + req.path, data=data, headers=headers, method=req.method)
    with urllib.request.urlopen(r, timeout=30) as response:
        if response.status != 200:
            raise RuntimeError(f"{req.method} {req.path}: status {response.status}")
        response.read()


def measure(
    url: str,
    pid: int,
    name: str,
    req: Request,
    concurrency: list[int],
    duration: float,
    warmup: float,
) -> list[LoadResult]:
    check(url, req)
    if warmup > 0:
        run_wrk(url, [req], max(concurrency), warmup, pid, name)
        if min(concurrency) < max(concurrency):
            # wrk stops with up to max(concurrency) requests still queued in the server: the
            # lowest concurrency's row would start behind them (its first request waited
            # 70-175 ms in bench/tail.py's traces, one of the few that set a short row's p99).
            # A second of the lowest concurrency, unrecorded, lets them drain first.
            run_wrk(url, [req], min(concurrency), 1.0, pid, name)
    out = []
    for c in concurrency:
        result = run_wrk(url, [req], c, duration, pid, name)
        out.append(result)
        print(format_row(result), flush=True)
    return out


def format_row(r: LoadResult) -> str:
    errors = f"  ERRORS {r.errors}" if r.error_count else ""
    return (
        f"{r.name:<20} c={r.concurrency:<3} {r.rps:>8.1f} req/s  p50 {r.p50_ms:7.2f} ms  "
        f"p99 {r.p99_ms:7.2f} ms  server {100 * r.server_cpu_share:5.1f}% "
        f"({r.server_cpu_ms_per_request:.3f} ms/req)  client {100 * r.client_cpu_share:4.1f}%"
        + (f"  OTHERS {100 * r.other_cpu_share:.0f}%" if r.other_cpu_share > 0.03 else "")
        + errors
    )


def run(
    duration: float = 5.0,
    warmup: float = 1.0,
    only: list[str] | None = None,
    concurrency: list[int] | None = None,
    env: dict[str, str] | None = None,
    baseline: bool = True,
    label: str = "",
    out_name: str = "http",
    out_dir: Path | None = None,
    service_root: Path | None = None,
) -> dict:
    quiet = warn_if_busy()
    concurrency = concurrency or list(CONCURRENCY)
    models, models_note = model_dir()
    all_cases = cases()
    names = only or list(all_cases)
    results: list[LoadResult] = []
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server = service_server(models, env=env, root=service_root, log=logs / "service.log")
    with server:
        idle_rss = server.rss_mb()
        for name in names:
            if name.startswith("baseline"):
                continue
            results += measure(
                server.url, server.pid, name, all_cases[name], concurrency, duration, warmup
            )
        service_rss = server.rss_mb()
    baseline_note = None
    if baseline and (only is None or "baseline_sample_png" in only):
        run_dir = baseline_run()
        baseline_note = f"{run_dir}/checkpoint.pt" if run_dir else "untrained full-size VAE"
        with baseline_server(run_dir, log=logs / "baseline.log") as peer:
            results += measure(
                peer.url,
                peer.pid,
                "baseline_sample_png",
                all_cases["sample_png"],
                concurrency,
                duration,
                warmup,
            )
    failed = [r for r in results if r.error_count]
    data = {
        "quiet_machine": quiet,
        "label": label,
        "server_env": env or {},
        "service_root": str(service_root) if service_root else None,
        "models": models_note,
        "baseline_weights": baseline_note,
        "duration_s": duration,
        "concurrency": concurrency,
        "descriptions": {k: v for k, v in DESCRIPTIONS.items() if k in names or baseline},
        "service_rss_mb": {"idle": round(idle_rss, 1), "after": round(service_rss, 1)},
        "results": [r.as_dict() for r in results],
        "errors": sum(r.error_count for r in results),
    }
    write_result(out_name, data, out_dir)
    if failed:
        raise SystemExit(f"{len(failed)} load runs had errors: {[f.name for f in failed]}")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds per case")
    p.add_argument("--only", nargs="+", choices=[*cases(), "baseline_sample_png"])
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    p.add_argument("--env", nargs="*", default=[], help="server settings, KEY=VALUE")
    p.add_argument("--no-baseline", action="store_true", help="skip the eager-PyTorch peer")
    p.add_argument("--label", default="", help="a note stored with the results")
    p.add_argument("--out", default="http", help="results file name (bench/results/NAME.json)")
    p.add_argument("--out-dir", type=Path, default=None, help="results folder")
    p.add_argument(
        "--service-root",
        type=Path,
        default=None,
        help="run the service/ package of this folder (e.g. a git worktree of an older commit)",
    )
    args = p.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    started = time.perf_counter()
    run(
        args.duration,
        args.warmup,
        args.only,
        args.concurrency,
        env,
        not args.no_baseline,
        args.label,
        args.out,
        args.out_dir,
        args.service_root,
    )
    print(f"http_load: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
