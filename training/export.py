"""`vae-export`: write a trained run's encoder and decoder as ONNX, with a metadata file.

The metadata file (`metadata.json`) is the one source of truth the service reads: kind, z_dim,
input shape and pixel convention, tensor names, the sha256 of each ONNX file, the training
config and summary, and (once `vae-evaluate` has run) the evaluation metrics. Its schema is the
service's own (`service.inference.format.ModelMetadata`): what is written here is validated
by the same definition the service loads it with.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import hashlib
import json
import math
import platform
import sys
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.inference.format import FORMAT, ModelMetadata, parse_metadata
from service.inference.format import read_metadata as _read_checked
from service.inference.format import write_metadata as _write_checked
from training.config import TrainConfig
from training.model import Autoencoder, Decoder, VariationalAutoencoder

ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"
LATENT_POINTS_FILE = "latent_points.json"
PARITY_TOLERANCE = 1e-4
# Pixel convention of every model here: MNIST's light digit on a dark background, in [0, 1].
PIXEL_CONVENTION = {
    "dtype": "float32",
    "range": [0.0, 1.0],
    "layout": "NCHW",
    "foreground": "light",
    "background": "dark",
    "description": "grayscale, 0 = background (black), 1 = ink (white), as MNIST",
}
# Images that are not MNIST-style digits: plain intensities, no foreground convention.
RGB_CONVENTION = {
    "dtype": "float32",
    "range": [0.0, 1.0],
    "layout": "NCHW",
    "description": "RGB, each channel 0 (dark) to 1 (full intensity)",
}
GRAY_CONVENTION = {**RGB_CONVENTION, "description": "grayscale, 0 = black, 1 = white"}
# IDX image sets other than digits (Fashion-MNIST): MNIST's light-on-dark convention, which the
# service's `fit` preparation honours by inverting uploads with a light background.
IDX_CONVENTION = {
    **PIXEL_CONVENTION,
    "description": "grayscale, 0 = background (black), 1 = full intensity (white), as the "
    "MNIST-format IDX files it was trained on",
}


def resolve_preparation(config: TrainConfig, digits: bool | None = None) -> str:
    """The upload preparation a run's export declares: TrainConfig.preparation, or by default
    'digit' for MNIST-style digits (`digits`: the loaded data says; None: 1-channel 28x28 IDX
    or default data) and 'fit' for anything else (Fashion-MNIST's garments fill the frame)."""
    if config.preparation is not None:
        return config.preparation
    if digits is not None:
        return "digit" if digits else "fit"
    digit_like = config.images_dir is None and config.npz is None
    return "digit" if digit_like and config.model.input_shape == (1, 28, 28) else "fit"


def pixel_spec(config: TrainConfig, digits: bool | None = None) -> dict[str, Any]:
    """metadata.json's `input`: shape, pixel convention and upload preparation."""
    channels, height, width = config.model.input_shape
    preparation = resolve_preparation(config, digits)
    if preparation == "digit":
        convention = PIXEL_CONVENTION
    elif channels == 1 and config.data_dir is not None:
        convention = IDX_CONVENTION
    else:
        convention = RGB_CONVENTION if channels == 3 else GRAY_CONVENTION
    return {"shape": [channels, height, width], **convention, "preparation": preparation}


class ParityError(RuntimeError):
    """onnxruntime disagrees with PyTorch: the export is refused."""


class _EncoderGraph(nn.Module):
    def __init__(self, model: Autoencoder | VariationalAutoencoder):
        super().__init__()
        self.model: Autoencoder | VariationalAutoencoder = model

    def forward(self, image: torch.Tensor):
        return self.model.encode(image)


class _DecoderGraph(nn.Module):
    def __init__(self, model: Autoencoder | VariationalAutoencoder):
        super().__init__()
        self.decoder = conv_form_decoder(model.decoder)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


def as_conv(layer: nn.ConvTranspose2d) -> nn.Conv2d:
    """The Conv2d computing exactly what a stride-1 ConvTranspose2d computes: the same kernel
    flipped, in and out channels swapped, padding k - 1 - p."""
    assert layer.stride == (1, 1) and layer.dilation == (1, 1) and layer.groups == 1
    assert layer.output_padding == (0, 0)
    assert isinstance(layer.padding, tuple)  # only Conv*d (not ConvTranspose*d) take a str
    (kh, kw), (ph, pw) = layer.kernel_size, layer.padding
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        (kh, kw),
        padding=(kh - 1 - ph, kw - 1 - pw),
        bias=layer.bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(layer.weight.transpose(0, 1).flip(2, 3))
        if layer.bias is not None:
            assert conv.bias is not None  # made with bias=True just above
            conv.bias.copy_(layer.bias)
    return conv


def conv_form_decoder(decoder: Decoder) -> Decoder:
    """A copy of `decoder` for export, its stride-1 transposed convolutions written as Conv.

    Same function (checked by the export's parity test), faster graph: onnxruntime runs Conv
    with fused activations in blocked NCHWc kernels, ConvTranspose as a GEMM plus col2im
    (bench/decoder_forms.py: 1.2x on the whole decoder at batch 16). Kept as they are: the
    stride-2 layers (as phase convolutions they need an interleave that costs more than it
    saves) and 1-channel outputs (a 1-channel Conv fills one of NCHWc's 16-channel blocks).
    """
    converted = copy.deepcopy(decoder)
    for name, layer in converted.conv.named_children():
        # The model's transposed convs have no dilation, groups or stride-1 output padding;
        # as_conv asserts as much.
        if (
            isinstance(layer, nn.ConvTranspose2d)
            and layer.stride == (1, 1)
            and layer.out_channels > 1
        ):
            setattr(converted.conv, name, as_conv(layer))
    return converted.eval()


def output_names(kind: str) -> list[str]:
    return ["mu", "log_var"] if kind == "vae" else ["z"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "onnx", "onnxruntime", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    return versions


def _export_graph(
    module: nn.Module, example: torch.Tensor, path: Path, input_name: str, outputs: list[str]
) -> None:
    # The TorchScript exporter is quick, deterministic and exact for these plain conv nets;
    # a batch larger than 1 in the example keeps the batch axis truly dynamic.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [input_name, *outputs]},
            opset_version=17,
            dynamo=False,
        )


def check_parity(
    model: Autoencoder | VariationalAutoencoder,
    encoder_path: Path,
    decoder_path: Path,
    images: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Largest |onnxruntime - PyTorch| over both graphs on `images`; raises ParityError."""
    import onnxruntime as ort

    encoder = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(decoder_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for batch in (images[:1], images):
            x = torch.from_numpy(batch)
            encoded = model.encode(x)
            expected = encoded if isinstance(encoded, tuple) else (encoded,)
            got = encoder.run(None, {"image": batch})
            for e, g in zip(expected, got, strict=True):
                worst = max(worst, float(np.abs(e.numpy() - g).max()))
            z = expected[0].numpy()
            image = decoder.run(None, {"z": z})[0]
            worst = max(worst, float(np.abs(model.decode(expected[0]).numpy() - image).max()))
    if not worst <= tolerance:
        raise ParityError(f"onnxruntime differs from PyTorch by {worst:.2e} (> {tolerance:.0e})")
    return worst


def export_model(
    model: Autoencoder | VariationalAutoencoder,
    config: TrainConfig,
    out_dir: Path,
    parity_images: np.ndarray,
    name: str | None = None,
    training_summary: dict | None = None,
    latent_points: dict | None = None,
    label_names: list[str] | None = None,
    digits: bool | None = None,
) -> ModelMetadata:
    """Export `model` (an Autoencoder or VariationalAutoencoder) into `out_dir`.

    Writes encoder.onnx, decoder.onnx and metadata.json (plus latent_points.json when given:
    {"z": [[...], ...], "labels": [...]}, and `plane` for z_dim > 2; `label_names` name the
    labels in the metadata). Nothing is written to `out_dir` unless onnxruntime
    matches PyTorch within 1e-4 on `parity_images` at batch 1 and at their full batch.
    Returns the metadata.
    """
    model.eval()
    kind = model.kind
    outputs = output_names(kind)
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        encoder_path, decoder_path = tmp_dir / ENCODER_FILE, tmp_dir / DECODER_FILE
        example = torch.from_numpy(parity_images[:4])
        # The wrappers must be in eval mode too: the exporter restores each wrapper's mode on
        # the whole tree afterwards, which would otherwise switch BatchNorm back to training.
        _export_graph(_EncoderGraph(model).eval(), example, encoder_path, "image", outputs)
        z_example = torch.zeros(4, config.model.z_dim)
        _export_graph(_DecoderGraph(model).eval(), z_example, decoder_path, "z", ["image"])
        max_diff = check_parity(model, encoder_path, decoder_path, parity_images)

        out_dir.mkdir(parents=True, exist_ok=True)
        for path in (encoder_path, decoder_path):
            path.replace(out_dir / path.name)
    encoder_sha = sha256_of(out_dir / ENCODER_FILE)
    decoder_sha = sha256_of(out_dir / DECODER_FILE)
    # The version names both graphs: a re-export that changes either one gets a new version.
    graphs_sha = hashlib.sha256(f"{encoder_sha}{decoder_sha}".encode()).hexdigest()
    now = dt.datetime.now(dt.UTC)
    fields: dict[str, Any] = {
        "format": FORMAT,
        "name": name or out_dir.name,
        "kind": kind,
        "version": f"{name or out_dir.name}-{now:%Y%m%d}-{graphs_sha[:8]}",
        "created": now.isoformat(timespec="seconds"),
        "z_dim": config.model.z_dim,
        "input": pixel_spec(config, digits),
        "encoder": {
            "file": ENCODER_FILE,
            "sha256": encoder_sha,
            "input": "image",
            "outputs": outputs,
        },
        "decoder": {
            "file": DECODER_FILE,
            "sha256": decoder_sha,
            "input": "z",
            "output": "image",
        },
        "parity_max_abs_diff": max_diff,
        "training": {"config": config.to_dict(), **(training_summary or {})},
        "evaluation": None,
        "libraries": library_versions(),
        "latent_points": None,
        "figures": [],
    }
    if label_names is not None:
        fields["label_names"] = list(label_names)
    if latent_points is not None:
        (out_dir / LATENT_POINTS_FILE).write_text(json.dumps(latent_points, separators=(",", ":")))
        fields["latent_points"] = LATENT_POINTS_FILE
    metadata = parse_metadata(fields, out_dir / "metadata.json")
    write_metadata(out_dir, metadata)
    return metadata


def write_metadata(model_dir: Path, metadata: ModelMetadata) -> None:
    """Validate (again: fields may have been changed since parsing) and write metadata.json."""
    _write_checked(model_dir, ModelMetadata.model_validate(metadata.model_dump()))


def read_metadata(model_dir: Path) -> ModelMetadata:
    return _read_checked(Path(model_dir))


def main(argv: list[str] | None = None) -> int:
    from service.inference.latent import principal_plane
    from training.data import DataError, load_run_data, split_run_data
    from training.figures import plot_training_curves
    from training.train import BEST_CHECKPOINT, CHECKPOINT, METRICS, load_trained_model

    p = argparse.ArgumentParser(
        prog="vae-export",
        description="Export a training run's encoder and decoder to ONNX, with metadata.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="a vae-train run folder")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (models/NAME)")
    p.add_argument("--name", default=None, help="model name (default: the --out folder's name)")
    p.add_argument(
        "--checkpoint",
        choices=["last", "best"],
        default="last",
        help=f"export the last epoch ({CHECKPOINT}) or the one with the lowest validation "
        f"loss ({BEST_CHECKPOINT})",
    )
    p.add_argument(
        "--no-prior",
        action="store_true",
        help="skip the fitted prior (a Gaussian mixture over the training split's encodings; "
        "vae-prior fits it later without re-exporting)",
    )
    from training import prior

    prior.add_arguments(p, prefix="prior-")
    args = p.parse_args(argv)

    checkpoint_name = BEST_CHECKPOINT if args.checkpoint == "best" else CHECKPOINT
    try:
        model, config, epochs = load_trained_model(args.run_dir, checkpoint_name)
    except FileNotFoundError as exc:
        print(f"vae-export: {exc}", file=sys.stderr)
        return 2
    try:
        data = load_run_data(config)
    except DataError as exc:
        print(f"vae-export: the run's data: {exc}", file=sys.stderr)
        return 2
    if data.shape != config.model.input_shape:
        print(
            f"vae-export: the run's model takes {config.model.input_shape} images, its data "
            f"({data.source}) now gives {data.shape}",
            file=sys.stderr,
        )
        return 2
    recorded = args.run_dir / "data.json"  # what the run trained on (train.DATA)
    if recorded.exists() and data.provenance is not None:
        trained_on = json.loads(recorded.read_text()) or {}
        if "sha256" in trained_on and trained_on["sha256"] != data.provenance.get("sha256"):
            print(
                f"vae-export: warning: {data.source} is not what the run trained on (its files "
                "changed since): the validation split and latent points are of today's files",
                file=sys.stderr,
            )
    train_set, val_set = split_run_data(config, data)
    metrics = [json.loads(line) for line in (args.run_dir / METRICS).read_text().splitlines()]
    summary = {
        "data": data.source,
        # name, count, sha256 of each file and whether it is the official MNIST file
        "dataset": data.provenance,
        "train_images": len(train_set),
        "val_images": len(val_set),
        "epochs": epochs,
        "epochs_trained": len(metrics),
        "checkpoint": args.checkpoint,
        "seconds": round(sum(m["seconds"] for m in metrics), 1),
        # Where it trained (epochs from before vae-train recorded it all ran on the CPU).
        "device": ", ".join(sorted({m.get("device", "cpu") for m in metrics})) or None,
        "processes": max((m.get("processes", 1) for m in metrics), default=None),
        # The metrics of the exported epoch (the best one need not be the last).
        "final_metrics": metrics[epochs - 1] if len(metrics) >= epochs else {},
    }
    # In chunks of about 4 M pixels (5,000 digits are one): 5,000 large RGB images at once
    # would take gigabytes of activations.
    chunk = max(1, 2**22 // math.prod(val_set.shape))
    with torch.no_grad():
        z = torch.cat(
            [
                model.encode_mean(torch.from_numpy(val_set.images[start : start + chunk]))
                for start in range(0, len(val_set), chunk)
            ]
        )
    # float64 before rounding, or the JSON carries float32 noise (0.6462000012397766).
    z_points = np.round(z.numpy().astype(np.float64), 4)
    points: dict[str, Any] = {"z": z_points.tolist()}
    if val_set.labels is not None:  # images without labels: points without labels
        points["labels"] = val_set.labels.tolist()
    points["source"] = val_set.source
    if config.model.z_dim > 2 and len(z_points) >= 2:
        # The 2-D view of the points the explorer draws (service.inference.latent).
        points["plane"] = principal_plane(z_points)
    try:
        metadata = export_model(
            model,
            config,
            args.out,
            val_set.images[:64],
            name=args.name,
            training_summary=summary,
            latent_points=points,
            label_names=data.label_names,
            digits=data.digits,
        )
    except ParityError as exc:
        print(f"vae-export: refused: {exc}", file=sys.stderr)
        return 1
    if metrics:
        plot_training_curves(
            metrics, args.out / "training_curves.png", f"{config.model.kind.upper()} training"
        )
        metadata.figures = ["training_curves.png"]
        write_metadata(args.out, metadata)
    if not args.no_prior:  # before the typicality reference, which may use its density
        spec = prior.fit_and_store(
            args.out, train_set, val_set, args.prior_fit_on, args.prior_default,
            args.prior_components, args.prior_margin,
        )  # fmt: skip
        print(f"prior: {spec.how_chosen}", file=sys.stderr)
    # The held-out reference of POST /score's typicality verdict (training/typicality.py).
    from training.typicality import add_typicality

    add_typicality(args.out, val_set.images, val_set.source)
    print(
        f"exported {metadata.kind} {metadata.version} to {args.out} "
        f"(parity max |diff| {metadata.parity_max_abs_diff:.1e})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
