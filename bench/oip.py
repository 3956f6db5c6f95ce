"""The Open Inference Protocol's cost against the REST API: one server, one run, wrk.

    python -m bench.oip                  # every case at concurrency 1 and 32, 3 rounds of 3 s
    python -m bench.oip --duration 2 --concurrency 32 --only decoder16_binary sample16

Cases: the decoder at batch 16 and the encoder at batch 1 through POST /v2/.../infer, with the
tensors as JSON and as binary data (both ways), the pipeline model (one PNG in, as /encode),
and the REST peers GET /sample?n=16 (PNG grid) and POST /encode (multipart PNG). Per case and
concurrency: requests/s and server CPU per request (wrk, bench/loadgen.py).

The target (docs/scaling.md): a binary decoder infer of 16 costs at most 15% more server CPU
per request than /sample?n=16 without its PNG step. That baseline is /sample's measured CPU per
request less the PNG grid's CPU time, measured in this process on the same 16 decoded digits
(one thread, thread CPU time). Ratios are taken within one run; on a shared machine (another
job using the CPUs) the absolute figures mean little, the ratios a little more: the output says
which.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

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
from bench.loadgen import LoadResult, Request, multipart, run_wrk

CONCURRENCY = (1, 32)
TARGET_RATIO = 1.15
HEADER = "Inference-Header-Content-Length"


def _infer(model: str, body: dict, binary: dict[str, bytes] | None = None) -> Request:
    """POST /v2/models/{model}/infer: JSON, or JSON + binary parts (in input order)."""
    text = json.dumps(body, separators=(",", ":")).encode()
    path = f"/v2/models/{model}/infer"
    if not binary:
        return Request(path, "POST", text, "application/json")
    data = text + b"".join(binary.values())
    return Request(path, "POST", data, "application/octet-stream", {HEADER: str(len(text))})


def cases(z_dim: int, image_shape: tuple[int, int, int]) -> dict[str, Request]:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((16, z_dim)).astype(np.float32)
    png = digit_pngs(1)[0]
    pixels = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) / 255.0
    image = pixels.reshape(1, *image_shape)  # the shipped models: [0, 1], light on dark
    z_input = {"name": "z", "shape": list(z.shape), "datatype": "FP32"}
    x_input = {"name": "image", "shape": list(image.shape), "datatype": "FP32"}
    one, one_type = multipart([("digit.png", png)], "file")
    file_bytes = len(png).to_bytes(4, "little") + png
    return {
        "decoder16_json": _infer(
            "vae-decoder", {"inputs": [{**z_input, "data": z.ravel().tolist()}]}
        ),
        "decoder16_binary": _infer(
            "vae-decoder",
            {
                "inputs": [{**z_input, "parameters": {"binary_data_size": z.nbytes}}],
                "parameters": {"binary_data_output": True},
            },
            {"z": z.tobytes()},
        ),
        "encoder1_json": _infer(
            "vae-encoder", {"inputs": [{**x_input, "data": image.ravel().tolist()}]}
        ),
        "encoder1_binary": _infer(
            "vae-encoder",
            {
                "inputs": [{**x_input, "parameters": {"binary_data_size": image.nbytes}}],
                "parameters": {"binary_data_output": True},
            },
            {"image": image.tobytes()},
        ),
        "pipeline1_binary": _infer(
            "vae",
            {
                "inputs": [
                    {
                        "name": "file",
                        "shape": [1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(file_bytes)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            },
            {"file": file_bytes},
        ),
        "sample16": Request("/sample?n=16"),
        "encode": Request("/encode", "POST", one, one_type),
    }


DESCRIPTIONS = {
    "decoder16_json": "OIP vae-decoder, 16 z as JSON -> 16 images as JSON",
    "decoder16_binary": "OIP vae-decoder, 16 z binary -> 16 images binary",
    "encoder1_json": "OIP vae-encoder, 1 image (784 floats) as JSON -> mu, log_var JSON",
    "encoder1_binary": "OIP vae-encoder, 1 image binary -> mu, log_var binary",
    "pipeline1_binary": "OIP vae (pipeline), 1 PNG file binary -> mu, log_var binary",
    "sample16": "REST GET /sample?n=16 (one PNG grid)",
    "encode": "REST POST /encode (one PNG, multipart)",
}


def check(url: str, req: Request) -> None:
    headers = dict(req.headers)
    if req.content_type:
        headers["Content-Type"] = req.content_type
    r = urllib.request.Request(url + req.path, data=req.body, headers=headers, method=req.method)
    with urllib.request.urlopen(r, timeout=30) as response:
        if response.status != 200:
            raise RuntimeError(f"{req.method} {req.path}: status {response.status}")
        response.read()


def png_step_ms(folder: Path, seconds: float) -> dict:
    """CPU ms of /sample?n=16's PNG step (the grid of 16 decoded digits), in this process."""
    from service.api.images import image_response
    from service.api.schemas import ImageFormat
    from service.inference.registry import load_model

    model = load_model(folder, intra_op_threads=1)
    z = np.random.default_rng(1).standard_normal((16, model.z_dim)).astype(np.float32)
    decoded = model.decode_batch(z)

    def step() -> object:
        return image_response(model, decoded, z, ImageFormat.png, 1).body

    def decode() -> np.ndarray:
        return model.decode_batch(z)

    out = {}
    for name, fn in (("png_grid", step), ("decode_b16", decode)):
        for _ in range(5):
            fn()
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(times) < 20 or time.perf_counter() < deadline:
            start = time.thread_time()
            fn()
            times.append(time.thread_time() - start)
        out[name] = {"calls": len(times), "cpu_ms_median": 1000 * statistics.median(times)}
    return out


def median_by_case(results: list[LoadResult]) -> dict[tuple[str, int], LoadResult]:
    """Per (case, concurrency): the round with the median server CPU per request, its
    requests/s replaced by the median over the rounds."""
    groups: dict[tuple[str, int], list[LoadResult]] = {}
    for r in results:
        groups.setdefault((r.name, r.concurrency), []).append(r)
    out = {}
    for key, group in groups.items():
        ordered = sorted(group, key=lambda r: r.server_cpu_ms_per_request)
        middle = ordered[(len(ordered) - 1) // 2]
        rps = statistics.median(r.rps for r in group)
        out[key] = LoadResult(**{**middle.as_dict(), "rps": rps})
    return out


def row(r: LoadResult) -> str:
    errors = f"  ERRORS {r.errors}" if r.error_count else ""
    return (
        f"{r.name:<18} c={r.concurrency:<3} {r.rps:>8.1f} req/s  p50 {r.p50_ms:7.2f} ms  "
        f"server {r.server_cpu_ms_per_request:7.3f} CPU ms/req"
        + (f"  others {100 * r.other_cpu_share:.0f}%" if r.other_cpu_share > 0.03 else "")
        + errors
    )


def run(
    duration: float = 3.0,
    warmup: float = 1.0,
    only: list[str] | None = None,
    concurrency: list[int] | None = None,
    env: dict[str, str] | None = None,
    out_dir: Path | None = None,
    rounds: int = 3,
) -> dict:
    busy = busy_processes()
    if busy:
        print("NOTE: the machine is shared (" + "; ".join(busy) + "): compare ratios only")
    concurrency = concurrency or list(CONCURRENCY)
    models, models_note = model_dir()
    meta = json.loads((models / "vae" / "metadata.json").read_text())
    all_cases = cases(meta["z_dim"], tuple(meta["input"]["shape"]))
    names = only or list(all_cases)
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {"VAE_WORKERS": "1", "VAE_ACCESS_LOG": "false", **(env or {})}
    results: list[LoadResult] = []
    with service_server(models, env=env, log=logs / "oip.log") as server:
        for name in names:
            check(server.url, all_cases[name])
        # Each case in turn, `rounds` times over: a change in the machine's other load then
        # touches every case alike, and the median of the rounds is what the ratios use.
        for c in concurrency:
            if warmup > 0:
                for name in names:
                    run_wrk(server.url, [all_cases[name]], c, warmup, server.pid, name)
            for _ in range(rounds):
                for name in names:
                    result = run_wrk(server.url, [all_cases[name]], c, duration, server.pid, name)
                    results.append(result)
                    print(row(result), flush=True)
    png = png_step_ms(models / "vae", seconds=1.0)
    print(
        f"in process: PNG grid of 16 {png['png_grid']['cpu_ms_median']:.3f} CPU ms, "
        f"decoder at batch 16 {png['decode_b16']['cpu_ms_median']:.3f} CPU ms"
    )
    by = median_by_case(results)
    print("medians of the rounds:")
    for r in by.values():
        print("  " + row(r))
    ratios = []
    for c in concurrency:
        sample, binary = by.get(("sample16", c)), by.get(("decoder16_binary", c))
        if sample is None or binary is None:
            continue
        baseline = sample.server_cpu_ms_per_request - png["png_grid"]["cpu_ms_median"]
        entry = {
            "concurrency": c,
            "sample16_cpu_ms": sample.server_cpu_ms_per_request,
            "sample16_without_png_cpu_ms": round(baseline, 3),
            "decoder16_binary_cpu_ms": binary.server_cpu_ms_per_request,
            "ratio": round(binary.server_cpu_ms_per_request / baseline, 3),
        }
        for name in ("decoder16_json", "encoder1_json", "encoder1_binary", "pipeline1_binary"):
            if (name, c) in by:
                entry[f"{name}_cpu_ms"] = by[(name, c)].server_cpu_ms_per_request
        if ("encode", c) in by and ("pipeline1_binary", c) in by:
            entry["pipeline1_vs_encode"] = round(
                by[("pipeline1_binary", c)].server_cpu_ms_per_request
                / by[("encode", c)].server_cpu_ms_per_request,
                3,
            )
        entry["target_met"] = entry["ratio"] <= TARGET_RATIO
        ratios.append(entry)
        print(
            f"c={c}: decoder16_binary {entry['decoder16_binary_cpu_ms']:.3f} CPU ms/req vs "
            f"/sample?n=16 without PNG {baseline:.3f} ({entry['sample16_cpu_ms']:.3f} - "
            f"{png['png_grid']['cpu_ms_median']:.3f}): x{entry['ratio']:.3f} "
            f"(target <= x{TARGET_RATIO}: {'met' if entry['target_met'] else 'NOT met'})"
        )
    failed = [r for r in results if r.error_count]
    data = {
        "models": models_note,
        "server_env": env,
        "shared_machine": busy,
        "duration_s": duration,
        "descriptions": {k: DESCRIPTIONS[k] for k in names},
        "in_process": png,
        "rounds": rounds,
        "ratios": ratios,
        "medians": [r.as_dict() for r in by.values()],
        "results": [r.as_dict() for r in results],
    }
    write_result("oip", data, out_dir)
    if failed:
        raise SystemExit(
            f"errors under load: {[(r.name, r.concurrency, r.errors) for r in failed]}"
        )
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.oip", description=__doc__)
    add_case_arguments(parser, list(DESCRIPTIONS))
    parser.add_argument("--env", nargs="*", default=[], help="VAR=VALUE for the server")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    run(args.duration, args.warmup, args.only, args.concurrency, env, args.out, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
