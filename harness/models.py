"""Tiny untrained models of each kind, exported as the service expects them.

For tests (tests/conftest.py) and for scripts that need a model directory where models/ has
none (scripts/soak.py). Exporting needs torch, the `train` extra; it takes about a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from training.config import ModelKind, Preparation


class Architecture(TypedDict):
    """The layer fields of training.config.ModelConfig."""

    encoder_conv_filters: list[int]
    encoder_conv_kernel_size: list[int]
    encoder_conv_strides: list[int]
    decoder_conv_t_filters: list[int]
    decoder_conv_t_kernel_size: list[int]
    decoder_conv_t_strides: list[int]


# Two conv layers each way: the book's architecture in miniature, 28x28 in and out.
TINY_ARCH: Architecture = {
    "encoder_conv_filters": [4, 8],
    "encoder_conv_kernel_size": [3, 3],
    "encoder_conv_strides": [1, 2],
    "decoder_conv_t_filters": [8, 1],
    "decoder_conv_t_kernel_size": [3, 3],
    "decoder_conv_t_strides": [2, 1],
}
# One figure listed in each tiny model's metadata (a 4x4 grey PNG).
TINY_FIGURE = "training_curves.png"


def export_tiny_model(
    out_dir: Path,
    kind: ModelKind,
    z_dim: int = 2,
    shape: tuple[int, int, int] = (1, 28, 28),
    preparation: Preparation | None = None,
) -> dict:
    """Build and export a tiny untrained model of `kind` ("vae" or "ae") into `out_dir`, named
    after the folder, with ten latent points and one figure; returns its metadata. `shape` is
    (C, H, W); `preparation` what uploads get (None: 'digit' for 1x28x28, else 'fit'). Seeded:
    the same arguments give the same graphs."""
    import torch

    from service.inference.latent import principal_plane
    from training.config import ModelConfig, TrainConfig
    from training.export import export_model, write_metadata
    from training.model import build_model

    torch.manual_seed(0)
    arch: Architecture = {
        **TINY_ARCH,
        "decoder_conv_t_filters": [*TINY_ARCH["decoder_conv_t_filters"][:-1], shape[0]],
    }
    model_config = ModelConfig(kind=kind, z_dim=z_dim, input_shape=shape, **arch)
    config = TrainConfig(model=model_config, epochs=1, preparation=preparation)
    model = build_model(config.model)
    rng = np.random.default_rng(0)
    parity = rng.random((8, *shape), dtype=np.float32)
    z = rng.normal(size=(10, z_dim)).round(4)
    points: dict = {"z": z.tolist(), "labels": list(range(10))}
    if z_dim > 2:
        points["plane"] = principal_plane(z)
    metadata = export_model(
        model,
        config,
        out_dir,
        parity,
        name=out_dir.name,
        training_summary={"epochs": 0, "note": "tiny untrained test model"},
        latent_points=points,
    )
    Image.new("L", (4, 4), 128).save(out_dir / TINY_FIGURE)
    metadata.figures = [TINY_FIGURE]
    write_metadata(out_dir, metadata)
    return metadata.model_dump(mode="json")


def export_tiny_models(root: Path, kinds: tuple[ModelKind, ...] = ("vae", "ae")) -> Path:
    """A model directory `root` holding a tiny model of each of `kinds` (one folder each)."""
    for kind in kinds:
        export_tiny_model(root / kind, kind)
    return root
