"""`vae-triton MODEL_DIR... --out REPO_DIR`: a Triton model repository from exported models.

Each model folder (written by `vae-export`: encoder.onnx, decoder.onnx, metadata.json) becomes
two Triton models, the same two graphs this service's Open Inference Protocol serves under the
same names:

    REPO_DIR/
      vae-encoder/config.pbtxt     platform onnxruntime_onnx, inputs and outputs from metadata
      vae-encoder/1/model.onnx     a copy of models/vae/encoder.onnx
      vae-decoder/config.pbtxt
      vae-decoder/1/model.onnx

Every name, data type and shape comes from metadata.json (service.inference.format); the
folder is checked first exactly as the service checks it at start-up (sha256 of each graph,
tensor names, shapes, one warm-up run: service.inference.registry.load_model). A MODEL_DIR may
also be a directory of model folders (what VAE_MODEL_DIR points at). No torch, no Triton
needed: the configs are protobuf text that Triton's model_config.proto parses (a test does).

    vae-triton models --out triton-repo
    tritonserver --model-repository=$PWD/triton-repo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from service.inference.format import METADATA, ModelLoadError, ModelMetadata
from service.inference.registry import load_model, model_folders

PLATFORM = "onnxruntime_onnx"
VERSION = "1"  # Triton versions are numbered folders; metadata.json's version is in a comment
DEFAULT_MAX_BATCH = 256  # VAE_MAX_BATCH's default: the service's own limit per request
# metadata.json's dtype -> Triton's data type.
DATA_TYPES = {"float32": "TYPE_FP32"}

DYNAMIC_BATCHING = """\
# Dynamic batching: off. Triton would queue requests up to max_queue_delay_microseconds to run
# them as one batch. It pays where one batch costs much less than its items one by one: on a
# GPU instance (a batch of 1 leaves the device mostly idle), or when many clients send batch-1
# requests at once and throughput matters more than each request's latency. On a CPU these
# graphs are compute-bound already at batch 1 (the encoder runs at 6,214 images/s at batch 1
# and 6,938 at batch 16 on one thread: BENCHMARKS.md, compute floor), so the queue delay would
# buy ~12% per image. To turn it on, uncomment:
# dynamic_batching {
#   preferred_batch_size: [ 16, 64 ]
#   max_queue_delay_microseconds: 1000
# }
"""


def _quote(text: str) -> str:
    """A protobuf text-format string literal (JSON's escapes are a subset it reads)."""
    return json.dumps(text)


def _tensor(name: str, dims: tuple[int, ...]) -> str:
    return (
        f"  {{\n    name: {_quote(name)}\n    data_type: {DATA_TYPES['float32']}\n"
        f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}"
    )


def config_text(metadata: ModelMetadata, graph: str, max_batch_size: int, source: Path) -> str:
    """config.pbtxt of `{name}-{graph}` ("encoder" or "decoder"); dims without the batch axis
    (max_batch_size > 0 makes it implicit)."""
    image: tuple[int, ...] = tuple(metadata.input.shape)
    code: tuple[int, ...] = (metadata.z_dim,)
    if graph == "encoder":
        inputs = [(metadata.encoder.input, image)]
        outputs = [(name, code) for name in metadata.encoder.outputs]
    elif graph == "decoder":
        inputs = [(metadata.decoder.input, code)]
        outputs = [(metadata.decoder.output, image)]
    else:
        raise ValueError(f"graph must be 'encoder' or 'decoder', not {graph!r}")
    if metadata.input.dtype not in DATA_TYPES:
        raise ModelLoadError(f"{source}: dtype {metadata.input.dtype!r} has no Triton data type")
    name = f"{metadata.name}-{graph}"
    lines = [
        f"# {name}: the {graph} of model {metadata.name!r} ({metadata.kind}, z_dim "
        f"{metadata.z_dim}), version {metadata.version or '(none)'}",
        f"# written by vae-triton from {source}; names and shapes from its metadata.json",
        f"name: {_quote(name)}",
        f"platform: {_quote(PLATFORM)}",
        "# The batch axis: requests of up to this many items (VAE_MAX_BATCH in the service).",
        f"max_batch_size: {max_batch_size}",
        "input [",
        ",\n".join(_tensor(n, d) for n, d in inputs),
        "]",
        "output [",
        ",\n".join(_tensor(n, d) for n, d in outputs),
        "]",
        DYNAMIC_BATCHING.rstrip("\n"),
    ]
    return "\n".join(lines) + "\n"


def _folders(paths: list[Path]) -> list[Path]:
    """Model folders: each path that has a metadata.json, or the model folders inside it."""
    found: list[Path] = []
    for path in paths:
        if (path / METADATA).is_file():
            found.append(path)
            continue
        inside = model_folders(path)
        if not inside:
            raise ModelLoadError(
                f"{path}: neither a model folder ({METADATA}) nor a folder of them"
            )
        found.extend(inside)
    return found


def write_repository(paths: list[Path], out: Path, max_batch_size: int) -> list[Path]:
    """Write `{name}-encoder` and `{name}-decoder` of every model into `out` (each replaced
    whole if it exists); returns the Triton model folders written."""
    written: list[Path] = []
    seen: dict[str, Path] = {}
    folders = _folders(paths)
    models = [(folder, load_model(folder, intra_op_threads=1)) for folder in folders]
    for folder, model in models:
        if model.name in seen:
            raise ModelLoadError(
                f"{folder / METADATA}: model name {model.name!r} is already used by "
                f"{seen[model.name]}"
            )
        seen[model.name] = folder
    out.mkdir(parents=True, exist_ok=True)
    for folder, model in models:
        meta = model.metadata
        for graph, onnx in (("encoder", meta.encoder.file), ("decoder", meta.decoder.file)):
            target = out / f"{meta.name}-{graph}"
            if target.exists():
                shutil.rmtree(target)
            (target / VERSION).mkdir(parents=True)
            shutil.copyfile(folder / onnx, target / VERSION / "model.onnx")
            config = config_text(meta, graph, max_batch_size, folder)
            (target / "config.pbtxt").write_text(config)
            written.append(target)
    return written


def _default_max_batch() -> int:
    value = os.environ.get("VAE_MAX_BATCH", "")
    return int(value) if value.strip().isdigit() and int(value) > 0 else DEFAULT_MAX_BATCH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vae-triton",
        description="Write a Triton model repository ({name}-encoder, {name}-decoder: "
        "config.pbtxt and 1/model.onnx) from exported model folders.",
    )
    parser.add_argument(
        "models", nargs="+", type=Path, help="model folders, or folders of model folders"
    )
    parser.add_argument("--out", type=Path, required=True, help="the model repository to write")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=_default_max_batch(),
        help="max_batch_size of every model (default: VAE_MAX_BATCH, else 256)",
    )
    args = parser.parse_args(argv)
    if args.max_batch_size < 1:
        parser.error("--max-batch-size must be at least 1")
    try:
        written = write_repository(args.models, args.out, args.max_batch_size)
    except ModelLoadError as exc:
        print(f"vae-triton: {exc}", file=sys.stderr)
        return 1
    for target in written:
        print(f"wrote {target}/config.pbtxt and {target}/{VERSION}/model.onnx")
    print(f"serve it with: tritonserver --model-repository={args.out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
