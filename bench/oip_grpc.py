"""The Open Inference Protocol over gRPC against its REST face: one server, one run.

    python -m bench.oip_grpc                  # every case at concurrency 1 and 32, 3 rounds
    python -m bench.oip_grpc --duration 2 --rounds 1 --markdown

Cases, on one server (VAE_WORKERS=1, one onnxruntime thread, gRPC on): the decoder at
batch 16 and the encoder at batch 1 through gRPC's ModelInfer with raw tensors (what
tritonclient.grpc sends), the decoder with typed tensors (contents.fp32_contents), and their
REST peers: the binary tensor path of POST /v2/.../infer and GET /sample?n=16 (bench/oip.py's
requests, driven by wrk). gRPC is driven by bench/grpc_load.py (grpc.aio, one connection per
concurrent call, as wrk's). Per case and concurrency: requests/s, p50/p99 and the server's
CPU per request.

The target (issue #26): gRPC's server CPU per request at most the REST binary path's, for the
decoder of 16 and the encoder of 1. Ratios are taken within one run; the clients differ (wrk is
C, the gRPC client Python), which moves requests/s and latency on a small machine but not the
server's CPU per request.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import (
    CACHE,
    add_case_arguments,
    busy_processes,
    digit_pngs,
    model_dir,
    service_server,
    write_result,
)
from bench.grpc_load import run_grpc
from bench.loadgen import LoadResult, run_wrk
from bench.oip import cases as rest_cases
from bench.oip import check, median_by_case, row
from harness.processes import free_port

CONCURRENCY = (1, 32)
INFER = "/inference.GRPCInferenceService/ModelInfer"
# gRPC case -> its REST peer on the binary tensor path
PEERS = {"grpc_decoder16_raw": "decoder16_binary", "grpc_encoder1_raw": "encoder1_binary"}
DESCRIPTIONS = {
    "grpc_decoder16_raw": "gRPC ModelInfer vae-decoder, 16 z raw -> 16 images raw",
    "grpc_decoder16_typed": "gRPC ModelInfer vae-decoder, 16 z typed -> 16 images typed",
    "grpc_encoder1_raw": "gRPC ModelInfer vae-encoder, 1 image raw -> mu, log_var raw",
    "decoder16_binary": "REST POST /v2/models/vae-decoder/infer, 16 z binary -> binary",
    "encoder1_binary": "REST POST /v2/models/vae-encoder/infer, 1 image binary -> binary",
    "sample16": "REST GET /sample?n=16 (one PNG grid)",
}


def grpc_cases(z_dim: int, image_shape: tuple[int, int, int]) -> dict[str, bytes]:
    """Serialized ModelInferRequests (the same tensors as bench.oip's cases)."""
    from service.grpc.messages import ModelInferRequest

    rng = np.random.default_rng(0)
    z = rng.standard_normal((16, z_dim)).astype(np.float32)
    png = digit_pngs(1)[0]
    pixels = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) / 255.0
    image = pixels.reshape(1, *image_shape)
    out = {}
    for name, model, tensor, array, raw in (
        ("grpc_decoder16_raw", "vae-decoder", "z", z, True),
        ("grpc_decoder16_typed", "vae-decoder", "z", z, False),
        ("grpc_encoder1_raw", "vae-encoder", "image", image, True),
    ):
        request = ModelInferRequest(model_name=model)
        item = request.inputs.add(name=tensor, datatype="FP32", shape=list(array.shape))
        if raw:
            request.raw_input_contents.append(array.tobytes())
        else:
            item.contents.fp32_contents.extend(array.ravel().tolist())
        out[name] = request.SerializeToString()
    return out


def _check_grpc(address: str, body: bytes) -> None:
    import grpc

    with grpc.insecure_channel(address) as channel:
        channel.unary_unary(INFER)(body, timeout=30)


def ratios(by: dict[tuple[str, int], LoadResult], concurrency: list[int]) -> list[dict]:
    """Per concurrency and gRPC case: its CPU per request over its REST peer's."""
    out = []
    for c in concurrency:
        for ours, peer in PEERS.items():
            if (ours, c) not in by or (peer, c) not in by:
                continue
            a, b = by[(ours, c)], by[(peer, c)]
            ratio = a.server_cpu_ms_per_request / b.server_cpu_ms_per_request
            out.append(
                {
                    "concurrency": c,
                    "grpc": ours,
                    "rest": peer,
                    "grpc_cpu_ms": a.server_cpu_ms_per_request,
                    "rest_cpu_ms": b.server_cpu_ms_per_request,
                    "ratio": round(ratio, 3),
                    "target_met": ratio <= 1.0,
                }
            )
    return out


def markdown(data: dict) -> str:
    """The table BENCHMARKS.md shows: every case's medians, then the ratios."""
    lines = [
        "| case | concurrency | requests/s | p50 ms | p99 ms | server CPU ms/request |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(data["medians"], key=lambda r: (r["concurrency"], r["name"])):
        lines.append(
            f"| {r['name']} | {r['concurrency']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['server_cpu_ms_per_request']:.3f} |"
        )
    lines += ["", "| gRPC case | REST peer | c | gRPC CPU ms | REST CPU ms | ratio | <= 1 |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in data["ratios"]:
        lines.append(
            f"| {r['grpc']} | {r['rest']} | {r['concurrency']} | {r['grpc_cpu_ms']:.3f} | "
            f"{r['rest_cpu_ms']:.3f} | {r['ratio']:.2f} | {'yes' if r['target_met'] else 'no'} |"
        )
    return "\n".join(lines)


def run(
    duration: float = 3.0,
    warmup: float = 1.0,
    only: list[str] | None = None,
    concurrency: list[int] | None = None,
    out_dir: Path | None = None,
    rounds: int = 3,
) -> dict:
    busy = busy_processes()
    if busy:
        print("NOTE: the machine is shared (" + "; ".join(busy) + "): compare ratios only")
    concurrency = concurrency or list(CONCURRENCY)
    models, models_note = model_dir()
    meta = json.loads((models / "vae" / "metadata.json").read_text())
    shape = (meta["z_dim"], tuple(meta["input"]["shape"]))
    rest = {k: v for k, v in rest_cases(*shape).items() if k in DESCRIPTIONS}
    grpc_bodies = grpc_cases(*shape)
    names = only or list(DESCRIPTIONS)
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    grpc_port = free_port()
    # One onnxruntime thread, as each worker has in the default layout: with two, the graph's
    # threads contend with the load generator for the cores, and the heavier Python gRPC client
    # (against wrk) would show up as server CPU.
    env = {
        "VAE_WORKERS": "1",
        "VAE_INTRA_OP_THREADS": "1",
        "VAE_ACCESS_LOG": "false",
        "VAE_GRPC_PORT": str(grpc_port),
    }
    address = f"127.0.0.1:{grpc_port}"
    results: list[LoadResult] = []
    with (
        service_server(models, env=env, log=logs / "oip_grpc.log") as server,
        tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp,
    ):

        def one(name: str, c: int, seconds: float) -> LoadResult:
            if name in grpc_bodies:
                return run_grpc(
                    address, INFER, grpc_bodies[name], c, seconds, server.pid, name, Path(tmp)
                )
            return run_wrk(server.url, [rest[name]], c, seconds, server.pid, name)

        for name in names:
            if name in grpc_bodies:
                _check_grpc(address, grpc_bodies[name])
            else:
                check(server.url, rest[name])
        for c in concurrency:
            if warmup > 0:
                for name in names:
                    one(name, c, warmup)
            for _ in range(rounds):  # each case in turn, `rounds` times: medians below
                for name in names:
                    result = one(name, c, duration)
                    results.append(result)
                    print(row(result), flush=True)
    by = median_by_case(results)
    ratio_rows = ratios(by, concurrency)
    data: dict[str, Any] = {
        "models": models_note,
        "server_env": env,
        "shared_machine": busy,
        "duration_s": duration,
        "rounds": rounds,
        "descriptions": {k: DESCRIPTIONS[k] for k in names},
        "ratios": ratio_rows,
        "medians": [r.as_dict() for r in by.values()],
        "results": [r.as_dict() for r in results],
    }
    data["targets"] = [
        {
            "target": f"gRPC {r['grpc']} server CPU per request <= REST {r['rest']} "
            f"(concurrency {r['concurrency']})",
            "measured": f"{r['grpc_cpu_ms']:.3f} vs {r['rest_cpu_ms']:.3f} ms: x{r['ratio']:.2f}",
            "holds": r["target_met"],
            "detail": "one server, one run (bench/oip_grpc.py)",
        }
        for r in ratio_rows
    ]
    data["errors"] = sum(1 for r in results if r.error_count)
    for r in ratio_rows:
        print(
            f"c={r['concurrency']}: {r['grpc']} {r['grpc_cpu_ms']:.3f} CPU ms/req vs "
            f"{r['rest']} {r['rest_cpu_ms']:.3f}: x{r['ratio']:.2f}"
        )
    write_result("oip_grpc", data, out_dir)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.oip_grpc", description=__doc__)
    add_case_arguments(parser, list(DESCRIPTIONS))
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    parser.add_argument("--markdown", action="store_true", help="print the BENCHMARKS.md table")
    args = parser.parse_args(argv)
    data = run(args.duration, args.warmup, args.only, args.concurrency, args.out, args.rounds)
    if args.markdown:
        print(markdown(data))
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
