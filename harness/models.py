"""Tiny untrained models of each kind, exported as the service expects them.

For tests (tests/conftest.py) and for scripts that need a model directory where models/ has
none (scripts/soak.py). Exporting needs torch, the `train` extra; it takes about a second.
With `prior=True` a model also gets a fitted prior (prior.npz, fitted here with numpy alone:
two Gaussians per label on the encodings of tiny labelled images), so tests exercise real files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from service.inference.format import ModelMetadata, PriorSpec
    from service.inference.prior import FittedPrior
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
# The tiny prior's data: this many images of each of ten labels (uneven shares: 12, 13, ...).
PRIOR_IMAGES = 12


def export_tiny_model(
    out_dir: Path,
    kind: ModelKind,
    z_dim: int = 2,
    shape: tuple[int, int, int] = (1, 28, 28),
    preparation: Preparation | None = None,
    prior: bool = False,
    prior_default: Literal["normal", "fitted"] = "normal",
    label_names: list[str] | None = None,
) -> dict:
    """Build and export a tiny untrained model of `kind` ("vae" or "ae") into `out_dir`, named
    after the folder, with ten latent points and one figure; returns its metadata. `shape` is
    (C, H, W); `preparation` what uploads get (None: 'digit' for 1x28x28, else 'fit'). With
    `prior`, a fitted prior (`tiny_prior`) whose default for GET /sample is `prior_default`;
    `label_names` name the ten labels. Seeded: the same arguments give the same files."""
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
        label_names=label_names,
    )
    Image.new("L", (4, 4), 128).save(out_dir / TINY_FIGURE)
    metadata.figures = [TINY_FIGURE]
    if prior:
        metadata.prior = write_tiny_prior(out_dir, metadata, prior_default)
    write_metadata(out_dir, metadata)
    return metadata.model_dump(mode="json")


def _gaussian(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Cholesky factor of points' covariance, with a ridge (an untrained encoder's
    codes lie close together, and a few points in a plane make a singular covariance)."""
    mean = z.mean(axis=0)
    covariance = np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1])
    ridge = 1e-3 * max(float(np.trace(covariance)) / z.shape[1], 1e-6)
    return mean, np.linalg.cholesky(covariance + ridge * np.eye(z.shape[1]))


def tiny_prior(codes: np.ndarray, labels: np.ndarray) -> FittedPrior:
    """A prior from labelled encodings, with numpy alone: each label's codes split in two along
    their first principal direction, a Gaussian on each half (two components per label), and
    the whole data's mixture made of every label's components weighted by its share."""
    from service.inference.prior import FittedPrior, Mixture

    classes, shares, parts = [], [], []
    for label in np.unique(labels):
        z = codes[labels == label].astype(np.float64)
        centred = z - z.mean(axis=0)
        direction = np.linalg.svd(centred, full_matrices=False)[2][0]
        side = centred @ direction > 0
        halves = [z[side], z[~side]] if 3 <= side.sum() <= len(z) - 3 else [z]
        fits = [_gaussian(half) for half in halves]
        weights = np.array([len(half) / len(z) for half in halves])
        mixture = Mixture(weights, np.stack([m for m, _ in fits]), np.stack([c for _, c in fits]))
        classes.append(mixture)
        shares.append(len(z) / len(codes))
        parts.append((shares[-1], mixture))
    overall = Mixture(
        np.concatenate([share * m.weights for share, m in parts]),
        np.concatenate([m.means for _, m in parts]),
        np.concatenate([m.cholesky for _, m in parts]),
    )
    return FittedPrior(
        overall, tuple(int(x) for x in np.unique(labels)), tuple(shares), tuple(classes)
    )


def write_tiny_prior(
    out_dir: Path, metadata: ModelMetadata, default: Literal["normal", "fitted"]
) -> PriorSpec:
    """Fit `tiny_prior` on the exported encoder's codes of tiny labelled images (noise plus a
    bar whose place tells the label), write prior.npz and return the metadata's `prior`."""
    import onnxruntime as ort

    from service.inference.format import PriorSpec
    from service.inference.prior import PRIOR_FILE, save_prior

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), PRIOR_IMAGES + np.arange(10))
    channels, height, width = metadata.input.shape
    images = rng.random((len(labels), channels, height, width), dtype=np.float32) * 0.3
    for i, label in enumerate(labels):
        row = int(label) * height // 10
        images[i, :, row : row + max(1, height // 10)] = 1.0
    session = ort.InferenceSession(str(out_dir / metadata.encoder.file))
    codes = session.run([metadata.encoder.outputs[0]], {metadata.encoder.input: images})[0]
    prior = tiny_prior(codes, labels)
    sha256 = save_prior(out_dir, prior)
    return PriorSpec(
        file=PRIOR_FILE,
        sha256=sha256,
        fitted_on="mu" if metadata.kind == "vae" else "z",
        components=len(prior.overall.weights),
        per_label=True,
        default=default,
        how_chosen="tiny test model: two Gaussians per label, fitted with numpy",
    )


def export_tiny_models(root: Path, kinds: tuple[ModelKind, ...] = ("vae", "ae")) -> Path:
    """A model directory `root` holding a tiny model of each of `kinds` (one folder each)."""
    for kind in kinds:
        export_tiny_model(root / kind, kind)
    return root
