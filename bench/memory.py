"""Memory: the server's resident memory at idle and after 10,000 mixed requests, then 10,000 more.

    python -m bench.memory
    python -m bench.memory --requests 500      # a quick pass

RSS is summed over the server's process tree (the supervisor, every worker, multiprocessing's
resource tracker), read from /proc/PID/statm. The mix rotates through every inference endpoint
and a probe: /sample?n=16 (PNG and JSON), /encode, /encode/batch (64), /reconstruct (PNG and
JSON), /decode (JSON body), /healthz; wrk stops after the given number of responses.

Idle is measured twice: just started ("cold"), and after a warm-up of 200 requests of the
same mix ("warm": every code path has run once; lazy imports, Pillow's plugins, numpy's
first-use pages and the heap's working size are in). Growth is counted from warm: that is
what a leak would show; the cold-to-warm step is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE, model_dir, service_server, warn_if_busy, write_result
from bench.http_load import cases
from bench.loadgen import Request, run_wrk
from harness.processes import process_tree, rss_mb

CONCURRENCY = 8
WARM_UP = 200


def mix() -> list[Request]:
    c = cases()
    one = c["encode"]
    decode_body = json.dumps({"z": [[0.1 * i, -0.2 * i] for i in range(8)]}).encode()
    return [
        c["sample_png"],
        c["encode"],
        c["sample_json"],
        c["encode_batch64"],
        Request("/reconstruct?format=json", "POST", one.body, one.content_type),
        c["reconstruct"],
        Request("/decode?format=json", "POST", decode_body, "application/json"),
        c["healthz"],
    ]


def per_process(pid: int) -> dict[str, float]:
    return {str(p): round(rss_mb(p, tree=False), 1) for p in process_tree(pid)}


def run(requests: int = 10_000, out_dir: Path | None = None, timeout_s: float = 300) -> dict:
    quiet = warn_if_busy()
    models, models_note = model_dir()
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, Any]] = []
    with service_server(models, log=logs / "memory.log") as server:
        cold, cold_pss = server.rss_mb(), server.pss_mb()
        cold_split = per_process(server.pid)
        warm_up = run_wrk(
            server.url, mix(), CONCURRENCY, timeout_s, server.pid, "warm-up", max_responses=WARM_UP
        )
        time.sleep(0.5)
        idle, idle_pss = server.rss_mb(), server.pss_mb()
        idle_split = per_process(server.pid)
        print(f"idle: cold {cold:.1f} MB {cold_split}, warm {idle:.1f} MB {idle_split}")
        before = idle
        for i in (1, 2):
            result = run_wrk(
                server.url,
                mix(),
                CONCURRENCY,
                timeout_s,
                server.pid,
                f"mix{i}",
                max_responses=requests,
            )
            time.sleep(0.5)
            after, after_pss = server.rss_mb(), server.pss_mb()
            rounds.append(
                {
                    "requests": result.requests,
                    "seconds": result.seconds,
                    "rps": result.rps,
                    "errors": result.errors,
                    "rss_before_mb": round(before, 1),
                    "rss_after_mb": round(after, 1),
                    "growth_mb": round(after - before, 1),
                    "pss_after_mb": round(after_pss, 1),
                    "per_process_after_mb": per_process(server.pid),
                }
            )
            print(
                f"round {i}: {result.requests} requests in {result.seconds:.1f} s "
                f"({result.rps:.0f}/s), RSS {before:.1f} -> {after:.1f} MB "
                f"({after - before:+.1f} MB), errors {result.error_count}"
            )
            before = after
    data = {
        "quiet_machine": quiet,
        "models": models_note,
        "concurrency": CONCURRENCY,
        "mix": [f"{r.method} {r.path}" for r in mix()],
        "cold_rss_mb": round(cold, 1),
        "cold_per_process_mb": cold_split,
        "warm_up_requests": warm_up.requests,
        "cold_pss_mb": round(cold_pss, 1),
        "idle_rss_mb": round(idle, 1),
        "idle_pss_mb": round(idle_pss, 1),
        "idle_per_process_mb": idle_split,
        "rounds": rounds,
        "growth_first_10k_mb": rounds[0]["growth_mb"],
        "growth_second_10k_mb": rounds[1]["growth_mb"],
        "growth_from_cold_mb": round(rounds[0]["rss_after_mb"] - cold, 1),
        "errors": sum(sum(r["errors"].values()) for r in rounds) + warm_up.error_count,
    }
    write_result("memory", data, out_dir)
    if data["errors"]:
        raise SystemExit(f"memory: {data['errors']} errors")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=10_000, help="requests per round")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    run(args.requests, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
