"""The compute floor, in process: onnxruntime latency and images/s, FLOPs, the machine's peak.

    python -m bench.compute                 # everything (~1 minute)
    python -m bench.compute --seconds 0.2   # a quick pass

1. FLOPs per image of each graph, counted from the ONNX graph's layer shapes (bench/flops.py)
   and checked against the architecture's hyper-parameters.
2. The machine's float32 matmul peak: numpy (OpenBLAS) 2048x2048 matmul on 1 core and on all.
3. onnxruntime encoder and decoder at batch 1, 16, 64, 256 with the sessions the service
   builds (service.inference.registry.load_model with the service's settings): per-call
   latency (p50, p99), images/s and achieved GFLOP/s; then the same graphs using every core,
   two ways: one caller with intra-op threads = cores, and one caller thread per core sharing
   a 1-thread session (what several requests in flight do), with onnxruntime's thread
   spinning on and off.
4. The service's own per-request work, in process and on one thread (no HTTP): decode + PNG
   for /sample?n=16, and each step of /encode (multipart parsing, image decoding and
   preprocessing, inference, JSON): the floor each HTTP figure is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import digit_pngs, model_dir, warn_if_busy, write_result
from bench.flops import analytic, count

BATCHES = (1, 16, 64, 256)
MATMUL_N = 2048


# --- timing helpers ---------------------------------------------------------------------------


def time_calls(fn, seconds: float, min_calls: int = 5, max_calls: int = 100_000) -> list[float]:
    """Per-call wall seconds of `fn` over about `seconds` (after 3 unrecorded calls)."""
    for _ in range(3):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float], items: int = 1) -> dict:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    mean = statistics.fmean(times)
    return {
        "calls": len(times),
        "p50_ms": round(1000 * statistics.median(times), 4),
        "p99_ms": round(1000 * p99, 4),
        "mean_ms": round(1000 * mean, 4),
        "items_per_s": round(items / mean, 1),
    }


def parallel_rate(fn, callers: int, seconds: float) -> float:
    """Calls/s of `fn` with `callers` threads calling it in a loop (onnxruntime releases the
    GIL, so the threads run on separate cores)."""
    counts = [0] * callers
    stop = threading.Event()

    def loop(i: int) -> None:
        while not stop.is_set():
            fn()
            counts[i] += 1

    for _ in range(3):
        fn()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


# --- 1 and 2: FLOPs and the machine's peak --------------------------------------------------


def matmul_peak(threads: int | None, n: int = MATMUL_N, repeats: int = 5) -> dict:
    """GFLOP/s of a float32 n x n matmul in a fresh process with `threads` BLAS threads."""
    env = dict(os.environ)
    if threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    code = (
        "import numpy as np, time, json\n"
        f"n={n}\n"
        "rng=np.random.default_rng(0)\n"
        "a=rng.random((n,n),dtype=np.float32); b=rng.random((n,n),dtype=np.float32)\n"
        "a@b\n"
        "best=min((lambda t:(a@b, time.perf_counter()-t)[1])(time.perf_counter())"
        f" for _ in range({repeats}))\n"
        "print(json.dumps({'seconds':best,'gflops':2*n**3/best/1e9}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    result = json.loads(out.stdout)
    return {
        "threads": threads or os.cpu_count(),
        "n": n,
        "best_s": round(result["seconds"], 4),
        "gflops": round(result["gflops"], 1),
    }


# --- 3: onnxruntime ---------------------------------------------------------------------------


def graph_inputs(model, graph: str, batch: int) -> tuple:
    rng = np.random.default_rng(0)
    if graph == "encoder":
        x = rng.random((batch, *model.input_shape), dtype=np.float32)
        return model.encoder, model.encoder_outputs, {model.encoder_input: x}
    z = rng.standard_normal((batch, model.z_dim)).astype(np.float32)
    return model.decoder, [model.decoder_output], {model.decoder_input: z}


def ort_sweep(model, flops: dict[str, int], seconds: float) -> list[dict]:
    """Latency and images/s per graph and batch size, one caller, the service's sessions."""
    rows = []
    for graph in ("encoder", "decoder"):
        for batch in BATCHES:
            session, outputs, feed = graph_inputs(model, graph, batch)
            stats = summary(
                time_calls(lambda s=session, o=outputs, f=feed: s.run(o, f), seconds), batch
            )
            stats["gflops"] = round(stats["items_per_s"] * flops[graph] / 1e9, 2)
            rows.append({"graph": graph, "batch": batch, **stats})
            print(
                f"  {graph:<8} b={batch:<4} p50 {stats['p50_ms']:9.3f} ms  p99 "
                f"{stats['p99_ms']:9.3f} ms  {stats['items_per_s']:9.0f} img/s  "
                f"{stats['gflops']:6.1f} GFLOP/s",
                flush=True,
            )
    return rows


def all_cores(folder: Path, flops: dict[str, int], seconds: float, batches=BATCHES) -> list[dict]:
    """Images/s using every core: one caller with intra-op threads = cores, or one caller per
    core on a 1-thread session; spinning on and off."""
    from service.inference.registry import load_model

    cores = os.cpu_count() or 1
    rows = []
    layouts = [
        ("1 caller x intra_op=cores, spinning", 1, cores, True),
        ("1 caller x intra_op=cores, no spinning", 1, cores, False),
        ("cores callers x intra_op=1", cores, 1, False),
    ]
    for label, callers, intra, spinning in layouts:
        model = load_model(folder, intra_op_threads=intra, allow_spinning=spinning)
        for graph in ("encoder", "decoder"):
            for batch in batches:
                session, outputs, feed = graph_inputs(model, graph, batch)
                rate = parallel_rate(
                    lambda s=session, o=outputs, f=feed: s.run(o, f), callers, seconds
                )
                images = rate * batch
                rows.append(
                    {
                        "layout": label,
                        "callers": callers,
                        "intra_op_threads": intra,
                        "spinning": spinning,
                        "graph": graph,
                        "batch": batch,
                        "images_per_s": round(images, 1),
                        "gflops": round(images * flops[graph] / 1e9, 2),
                    }
                )
                print(
                    f"  {label:<40} {graph:<8} b={batch:<4} {images:9.0f} img/s  "
                    f"{images * flops[graph] / 1e9:6.1f} GFLOP/s",
                    flush=True,
                )
    return rows


# --- 4: the service's own work, in process ----------------------------------------------------


def pipelines(model, settings, seconds: float) -> dict:
    """Per-request CPU of each step the service runs, one thread, no HTTP."""
    from pydantic import TypeAdapter
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartParser

    from bench.loadgen import multipart
    from service.api.encoding import encoding_of
    from service.api.images import image_response
    from service.api.schemas import BatchEncoding, Encoding, ImageFormat, Preprocess
    from service.api.uploads import prepare

    png = digit_pngs(1)[0]
    pngs = digit_pngs(64)
    body, ctype = multipart([("digit.png", png)], "file")
    loop = asyncio.new_event_loop()

    async def parse() -> bytes:
        async def stream():
            yield body

        parser = MultiPartParser(Headers({"content-type": ctype}), stream(), max_files=1)
        form = await parser.parse()
        file = form["file"]
        assert isinstance(file, UploadFile)  # a file part, not a plain field
        data = await file.read()
        await form.close()
        return data

    rng = np.random.default_rng(0)
    z16 = rng.standard_normal((16, model.z_dim)).astype(np.float32)
    decoded16 = model.decode_batch(z16)
    x1 = prepare([png], model, Preprocess.auto, settings)
    codes1 = model.encode_batch(x1)
    encoding_json = TypeAdapter(Encoding).dump_json

    steps = {
        # /sample?n=16 (PNG): draw z, decode, one PNG grid
        "sample.draw_z": lambda: (
            np.random.default_rng(1).standard_normal((16, model.z_dim)) * 1.0
        ).astype(np.float32),
        "sample.decode_b16": lambda: model.decode_batch(z16),
        "sample.png_grid": lambda: image_response(model, decoded16, z16, ImageFormat.png, 1).body,
        "sample_json.base64_pngs_and_json": lambda: (
            image_response(model, decoded16, z16, ImageFormat.json, 1).body
        ),
        # /encode: multipart parsing, PNG decoding + MNIST preprocessing, inference, JSON
        "encode.multipart_parse": lambda: loop.run_until_complete(parse()),
        "encode.decode_and_preprocess": lambda: prepare([png], model, Preprocess.auto, settings),
        "encode.png_decode_only": lambda: imaging_open(png),
        "encode.inference_b1": lambda: model.encode_batch(x1),
        "encode.json": lambda: encoding_json(encoding_of(model, codes1, 0)),
        # /encode/batch with 64 images
        "encode_batch64.decode_and_preprocess": lambda: prepare(
            pngs, model, Preprocess.auto, settings
        ),
        "encode_batch64.inference_b64": lambda: model.encode_batch(np.repeat(x1, 64, axis=0)),
    }
    batch_codes = model.encode_batch(np.repeat(x1, 64, axis=0))
    batch_json = TypeAdapter(BatchEncoding).dump_json
    steps["encode_batch64.json"] = lambda: batch_json(
        BatchEncoding(
            model=model.name, items=[encoding_of(model, batch_codes, i) for i in range(64)]
        )
    )
    out = {}
    for name, fn in steps.items():
        stats = summary(time_calls(fn, seconds))
        out[name] = stats
        print(f"  {name:<40} p50 {stats['p50_ms']:8.3f} ms  mean {stats['mean_ms']:8.3f} ms")
    whole = {
        "sample_png": lambda: (
            image_response(
                model,
                model.decode_batch(
                    (np.random.default_rng(1).standard_normal((16, model.z_dim))).astype(np.float32)
                ),
                z16,
                ImageFormat.png,
                1,
            ).body
        ),
        "encode": lambda: encoding_json(
            encoding_of(
                model,
                model.encode_batch(
                    prepare([loop.run_until_complete(parse())], model, Preprocess.auto, settings)
                ),
                0,
            )
        ),
    }
    for name, fn in whole.items():
        stats = summary(time_calls(fn, seconds))
        out[f"{name}.total"] = stats
        print(
            f"  {name + '.total':<40} p50 {stats['p50_ms']:8.3f} ms  "
            f"mean {stats['mean_ms']:8.3f} ms"
        )
    loop.close()
    return out


def png_choices(model, seconds: float) -> dict:
    """The PNG encoder's options on /sample?n=16's grid (118x118) and one 28x28 digit: zlib
    levels 0, 1, 6, 9 (ours) and Pillow (what the service used before), time and bytes; and
    json.dumps of a /sample?format=json body (what orjson could shave)."""
    import base64
    import io
    from unittest import mock

    from PIL import Image

    from service.api.schemas import ImagesResponse
    from service.imaging import png

    rng = np.random.default_rng(0)
    decoded = model.decode_batch(rng.standard_normal((16, model.z_dim)).astype(np.float32))
    digits = png.to_uint8(model.to_unit_pixels(decoded))
    pictures = {"grid16": png.grid(digits), "digit": digits[0, 0]}
    out: dict = {}
    for name, picture in pictures.items():
        for level in (0, 1, 6, 9):
            with mock.patch.object(png, "PNG_COMPRESS_LEVEL", level):
                data = png.png_bytes(picture)
                stats = summary(time_calls(lambda p=picture: png.png_bytes(p), seconds))
            out[f"{name}.zlib{level}"] = {"bytes": len(data), **stats}

        def pillow(p=picture) -> bytes:
            buffer = io.BytesIO()
            Image.fromarray(p).save(buffer, "PNG", compress_level=1)
            return buffer.getvalue()

        out[f"{name}.pillow1"] = {
            "bytes": len(pillow()),
            **summary(time_calls(pillow, seconds)),
        }
    body = ImagesResponse(
        model=model.name,
        images=[base64.b64encode(png.png_bytes(d[0])).decode() for d in digits],
        z=rng.standard_normal((16, model.z_dim)).tolist(),
    ).model_dump()
    out["sample_json.json_dumps"] = summary(time_calls(lambda: json.dumps(body).encode(), seconds))
    for name, row in out.items():
        size = f"{row['bytes']:6d} B" if "bytes" in row else " " * 8
        print(f"  {name:<40} {size}  p50 {row['p50_ms']:8.4f} ms")
    return out


def imaging_open(data: bytes):
    from service.imaging.uploads import open_image

    return open_image(data)


# --- main -------------------------------------------------------------------------------------


def run(seconds: float = 1.0, out_dir: Path | None = None, name: str = "compute") -> dict:
    from service.inference.registry import load_model
    from service.process.cpus import layout
    from service.process.settings import Settings

    quiet = warn_if_busy()
    folder_root, models_note = model_dir()
    folder = folder_root / "vae"
    settings = Settings(model_dir=folder_root)
    # The sessions a served worker gets: the layout `python -m service` picks.
    workers, threads = layout(settings.workers, settings.intra_op_threads)
    settings = Settings(model_dir=folder_root, intra_op_threads=threads)
    flops_graph = {g: count(folder / f"{g}.onnx") for g in ("encoder", "decoder")}
    flops = {g: c["flops_per_image"] for g, c in flops_graph.items()}
    print("FLOPs per image:", {g: f"{v / 1e6:.2f} M" for g, v in flops.items()})

    print("numpy float32 matmul peak:")
    peak = [matmul_peak(1), matmul_peak(None)]
    for p in peak:
        print(f"  {p['threads']} thread(s): {p['gflops']:.1f} GFLOP/s")

    print(f"onnxruntime, the service's sessions (intra_op_threads={settings.intra_op_threads}):")
    model = load_model(folder, intra_op_threads=settings.intra_op_threads)
    sweep = ort_sweep(model, flops, seconds)
    print(f"onnxruntime using all {os.cpu_count()} cores:")
    cores = all_cores(folder, flops, seconds)
    print("the service's per-request work, in process (one thread):")
    steps = pipelines(model, settings, seconds)
    print("PNG encoding choices and JSON:")
    png = png_choices(model, seconds)

    data = {
        "quiet_machine": quiet,
        "models": models_note,
        "service_session": {
            "workers": workers,
            "intra_op_threads": settings.intra_op_threads,
            **session_description(model),
        },
        "flops": {g: {k: v for k, v in c.items() if k != "file"} for g, c in flops_graph.items()},
        "flops_analytic_macs": analytic(),
        "matmul_peak": peak,
        "ort_service_sessions": sweep,
        "ort_all_cores": cores,
        "pipelines": steps,
        "png_and_json": png,
    }
    write_result(name, data, out_dir)
    return data


def session_description(model) -> dict:
    options = model.encoder.get_session_options()
    return {
        "intra_op_num_threads": options.intra_op_num_threads,
        "inter_op_num_threads": options.inter_op_num_threads,
        "execution_mode": str(options.execution_mode),
        "graph_optimization_level": str(options.graph_optimization_level),
        "enable_cpu_mem_arena": options.enable_cpu_mem_arena,
        "enable_mem_pattern": options.enable_mem_pattern,
        "allow_spinning": options.get_session_config_entry("session.intra_op.allow_spinning")
        if _has_entry(options, "session.intra_op.allow_spinning")
        else "default (1)",
    }


def _has_entry(options, key: str) -> bool:
    try:
        options.get_session_config_entry(key)
        return True
    except Exception:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per measurement")
    p.add_argument("--out-dir", type=Path, default=None, help="results folder")
    args = p.parse_args(argv)
    run(args.seconds, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
