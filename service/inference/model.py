"""One loaded model: its metadata, its two onnxruntime sessions, and the numpy around them.

    codes = model.encode_batch(images)   # {"mu": (N, z), "log_var": (N, z)} or {"z": (N, z)}
    pixels = model.decode_batch(z)       # (N, C, H, W) float32 in the model's convention

onnxruntime sessions are safe to call from several threads at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.inference.format import ModelLoadError, ModelMetadata
from service.inference.prior import FittedPrior
from service.inference.sessions import TRIM_AFTER_BATCH, release_free_memory

# Called after each inference with (model name, "encoder" | "decoder", batch size, seconds).
InferenceObserver = Callable[[str, str, int, float], None]


@dataclass(frozen=True)
class LatentPlane:
    """A 2-D view of the latent space (latent_points.json `plane`, latent.principal_plane):
    z = origin + u axes[0] + v axes[1]; `explained` is each axis' share of the points'
    variance."""

    origin: tuple[float, ...]
    axes: tuple[tuple[float, ...], tuple[float, ...]]
    explained: tuple[float, float]


@dataclass
class Model:
    """One loaded model. Shapes, z_dim and the pixel convention all come from `metadata`."""

    metadata: ModelMetadata
    path: Path
    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    latent_points: bytes | None = None  # the raw JSON file, validated at load
    plane: LatentPlane | None = None  # the latent points' principal plane, when they carry one
    prior: FittedPrior | None = None  # the fitted prior (metadata `prior`), checked at load
    observer: InferenceObserver | None = field(default=None, repr=False)
    # Which version of the model this is: its version folder's number (models/vae/2/), or for
    # a flat folder the metadata's `version` ("1" without one).
    version: str = "1"

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def kind(self) -> str:
        return self.metadata.kind

    @property
    def z_dim(self) -> int:
        return self.metadata.z_dim

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W)"""
        return self.metadata.input.shape

    @property
    def channels(self) -> int:
        """C: 1 (grayscale) or 3 (RGB)."""
        return self.input_shape[0]

    @property
    def height(self) -> int:
        return self.input_shape[1]

    @property
    def width(self) -> int:
        return self.input_shape[2]

    @property
    def image_values(self) -> int:
        """C * H * W: the pixel values of one image (what limits and bits/dim count)."""
        channels, height, width = self.input_shape
        return channels * height * width

    @property
    def image_mode(self) -> str:
        """The PNG mode of its images: 'L' (8-bit grayscale) or 'RGB'."""
        return "RGB" if self.channels == 3 else "L"

    @property
    def encoder_input(self) -> str:
        return self.metadata.encoder.input

    @property
    def encoder_outputs(self) -> list[str]:
        return self.metadata.encoder.outputs

    @property
    def decoder_input(self) -> str:
        return self.metadata.decoder.input

    @property
    def decoder_output(self) -> str:
        return self.metadata.decoder.output

    @property
    def figures(self) -> list[str]:
        return self.metadata.figures

    @property
    def priors(self) -> list[str]:
        """The priors GET /sample can draw from: 'normal' always, 'fitted' with a prior file."""
        return ["normal"] if self.prior is None else ["normal", "fitted"]

    @property
    def default_prior(self) -> str:
        """The prior a request that names none gets: the metadata's `prior.default`, 'normal'
        for a model without a fitted prior."""
        spec = self.metadata.prior
        return "normal" if spec is None or self.prior is None else spec.default

    @property
    def label_names(self) -> dict[int, str]:
        """Each label of the fitted prior's per-label mixtures by its name: metadata
        `label_names[label]` where there is one, else the label number (digits)."""
        if self.prior is None:
            return {}
        names = self.metadata.label_names or []
        return {
            label: names[label] if 0 <= label < len(names) else str(label)
            for label in self.prior.labels
        }

    def sample_z(
        self,
        n: int,
        rng: np.random.Generator,
        temperature: float = 1.0,
        prior: str = "normal",
        label: int | None = None,
    ) -> np.ndarray:
        """n latent vectors (float32): 'normal' is N(0, temperature^2 I) (the draws GET /sample
        always made, so a seed gives the same bytes as before priors); 'fitted' the fitted
        mixture (of `label`'s fit when given), each component's spread times temperature.
        KeyError for a label without a fit, ValueError for 'fitted' without a prior."""
        if prior == "normal":
            return (rng.standard_normal((n, self.z_dim)) * temperature).astype(np.float32)
        if prior != "fitted" or self.prior is None:
            raise ValueError(f"model {self.name!r} has no prior {prior!r}")
        return self.prior.sample(n, rng, temperature, label)

    def _observe(self, graph: str, batch: int, start: float) -> None:
        if self.observer is not None:
            self.observer(self.name, graph, batch, time.perf_counter() - start)

    def to_model_pixels(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) or (N, C, H, W) light-on-dark [0, 1] -> the model's own input convention."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[:, None]
        spec = self.metadata.input
        if spec.foreground == "dark":
            images = 1.0 - images
        low, high = spec.range
        return np.ascontiguousarray(low + images * (high - low), dtype=np.float32)

    def to_unit_pixels(self, images: np.ndarray) -> np.ndarray:
        """Model-convention images -> [0, 1] (for PNG encoding), clipped."""
        low, high = self.metadata.input.range
        if low == 0 and high == 1:
            return np.asarray(np.clip(images, 0.0, 1.0))
        return np.asarray(np.clip((images - low) / (high - low), 0.0, 1.0))

    def encode_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Images (N, C, H, W) float32 in the model's convention -> one (N, z_dim) array per
        encoder output ("mu" and "log_var" for a VAE, "z" for an AE). One onnxruntime call."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            raise ValueError(
                f"model {self.name!r} takes images of shape (N, *{self.input_shape}), "
                f"got {images.shape}"
            )
        start = time.perf_counter()
        outputs = self.encoder.run(self.encoder_outputs, {self.encoder_input: images})
        self._observe("encoder", len(images), start)
        if len(images) >= TRIM_AFTER_BATCH:
            release_free_memory()
        return dict(zip(self.encoder_outputs, outputs, strict=True))

    def encode_mean(self, images: np.ndarray) -> np.ndarray:
        """The point each image encodes to: the VAE's posterior mean, the AE's code."""
        codes = self.encode_batch(images)
        return codes["mu"] if self.kind == "vae" else codes["z"]

    def decode_batch(self, z: np.ndarray) -> np.ndarray:
        """Latent vectors (N, z_dim) -> images (N, C, H, W) float32 in the model's convention.
        One onnxruntime call."""
        z = np.ascontiguousarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(
                f"model {self.name!r} takes z of shape (N, {self.z_dim}), got {z.shape}"
            )
        start = time.perf_counter()
        (images,) = self.decoder.run([self.decoder_output], {self.decoder_input: z})
        self._observe("decoder", len(z), start)
        if len(z) >= TRIM_AFTER_BATCH:
            release_free_memory()
        return np.asarray(images)

    def warm_up(self) -> None:
        """One tiny inference through both graphs (first runs allocate); checks the shapes."""
        codes = self.encoder.run(
            self.encoder_outputs,
            {self.encoder_input: np.zeros((1, *self.input_shape), np.float32)},
        )
        images = self.decoder.run(
            [self.decoder_output], {self.decoder_input: np.zeros((1, self.z_dim), np.float32)}
        )[0]
        for name, array in zip(self.encoder_outputs, codes, strict=True):
            if array.shape != (1, self.z_dim):
                raise ModelLoadError(
                    f"{self.path / self.metadata.encoder.file}: output {name!r} has shape "
                    f"{array.shape}, metadata says (N, {self.z_dim})"
                )
        if images.shape != (1, *self.input_shape):
            raise ModelLoadError(
                f"{self.path / self.metadata.decoder.file}: output has shape "
                f"{images.shape}, metadata says (N, {', '.join(map(str, self.input_shape))})"
            )
