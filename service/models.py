"""The model registry: load, validate and run the exported models through onnxruntime.

A model folder (written by `vae-export`) holds encoder.onnx, decoder.onnx and metadata.json.
metadata.json is the one source of truth: kind, z_dim, input shape, pixel convention and tensor
names come from it, and every ONNX file is checked against it (sha256, input and output names,
shapes, dtypes) before anything is served. Any mismatch is a `ModelLoadError` naming the file.

    registry = ModelRegistry.load(Path("models"), default="vae")
    model = registry.get("vae")
    codes = model.encode_batch(images)      # {"mu": (N, z), "log_var": (N, z)} or {"z": (N, z)}
    pixels = model.decode_batch(z)          # (N, 1, 28, 28) float32 in [0, 1]

No torch here (the service must not import it); onnxruntime sessions are safe to call from
several threads at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

# Same values as training/export.py (not imported from there: that module imports torch).
FORMAT = "vae-service-model/1"
METADATA = "metadata.json"
KIND_OUTPUTS = {"vae": ["mu", "log_var"], "ae": ["z"]}
FLOAT_TENSOR = "tensor(float)"
KEYS_ENCODER = ("file", "sha256", "input")
KEYS_DECODER = ("file", "sha256", "input", "output")

# Called after each inference with (model name, "encoder" | "decoder", batch size, seconds).
InferenceObserver = Callable[[str, str, int, float], None]
# After an inference of at least this many images, free heap pages go back to the system.
TRIM_AFTER_BATCH = 32


M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """glibc: at most `arenas` malloc arenas in this process (unless MALLOC_ARENA_MAX is set).

    glibc gives each new thread its own arena, up to 8 per core, and each keeps its freed
    pages: with big batches in the thread pool that is tens of MB per thread that never go
    back. Call before threads start (service/__main__.py, service/workers.py)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), or nothing elsewhere.

    Without onnxruntime's arena (see `session_options`) a big batch's buffers go back to
    malloc, but glibc keeps the pages: after a big free it raises its mmap threshold, so the
    next big buffers come from the heap, where blocks freed out of order fragment it. Measured:
    +330 MB per worker after 2,000 /encode/batch requests of 64 images at 8 connections, +13 MB
    with a trim after each big batch (~0.1 ms, against tens of ms for the batch itself). A
    fixed mmap threshold instead would page-fault every big buffer: 50% slower inference.
    Together with `limit_malloc_arenas` and at most 2 big requests at a time per worker
    (service/routes.py), a worker's RSS stays within ~15 MB of its warm size."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0) and None


release_free_memory = _malloc_trim()


class ModelLoadError(RuntimeError):
    """A model folder is missing, incomplete or inconsistent; the message names the file."""


@dataclass
class Model:
    """One loaded model: its metadata and its two onnxruntime sessions."""

    name: str
    kind: str
    z_dim: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    metadata: dict[str, Any]
    path: Path
    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    encoder_input: str
    encoder_outputs: list[str]
    decoder_input: str
    decoder_output: str
    latent_points: bytes | None = None  # the raw JSON file, validated at load
    figures: tuple[str, ...] = ()
    observer: InferenceObserver | None = field(default=None, repr=False)

    @property
    def image_size(self) -> int:
        return self.input_shape[1]

    def _observe(self, graph: str, batch: int, start: float) -> None:
        if self.observer is not None:
            self.observer(self.name, graph, batch, time.perf_counter() - start)

    def to_model_pixels(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) or (N, C, H, W) light-on-dark [0, 1] -> the model's own input convention."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[:, None]
        spec = self.metadata["input"]
        if spec.get("foreground", "light") == "dark":
            images = 1.0 - images
        low, high = spec.get("range", [0.0, 1.0])
        return np.ascontiguousarray(low + images * (high - low), dtype=np.float32)

    def to_unit_pixels(self, images: np.ndarray) -> np.ndarray:
        """Model-convention images -> [0, 1] (for PNG encoding), clipped."""
        low, high = self.metadata["input"].get("range", [0.0, 1.0])
        if low == 0 and high == 1:
            return np.clip(images, 0.0, 1.0)
        return np.clip((images - low) / (high - low), 0.0, 1.0)

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
        return images

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
                    f"{self.path / self.metadata['encoder']['file']}: output {name!r} has shape "
                    f"{array.shape}, metadata says (N, {self.z_dim})"
                )
        if images.shape != (1, *self.input_shape):
            raise ModelLoadError(
                f"{self.path / self.metadata['decoder']['file']}: output has shape "
                f"{images.shape}, metadata says (N, {', '.join(map(str, self.input_shape))})"
            )


def _require(metadata: dict, key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if key not in metadata:
        raise ModelLoadError(f"{where}: missing key {key!r}")
    value = metadata[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ModelLoadError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def read_metadata(folder: Path) -> dict[str, Any]:
    """Parse and check a model folder's metadata.json (structure only; files are checked by
    `load_model`)."""
    path = folder / METADATA
    if not path.is_file():
        raise ModelLoadError(
            f"{path}: file not found (a model folder needs {METADATA}, written by vae-export)"
        )
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    if metadata.get("format") != FORMAT:
        raise ModelLoadError(
            f"{path}: format is {metadata.get('format')!r}, this service reads {FORMAT!r}"
        )
    _require(metadata, "name", str, path)
    kind = _require(metadata, "kind", str, path)
    if kind not in KIND_OUTPUTS:
        raise ModelLoadError(f"{path}: kind must be 'vae' or 'ae', not {kind!r}")
    z_dim = _require(metadata, "z_dim", int, path)
    if z_dim < 1:
        raise ModelLoadError(f"{path}: z_dim must be at least 1, not {z_dim}")
    spec = _require(metadata, "input", dict, path)
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(d, int) and d > 0 for d in shape)
    ):
        raise ModelLoadError(f"{path}: input.shape must be [C, H, W], not {shape!r}")
    if shape[0] != 1 or shape[1] != shape[2]:
        raise ModelLoadError(
            f"{path}: input.shape {shape}: this service serves square 1-channel (grayscale) models"
        )
    value_range = spec.get("range", [0.0, 1.0])
    if (
        not isinstance(value_range, list)
        or len(value_range) != 2
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in value_range)
        or not value_range[0] < value_range[1]
    ):
        raise ModelLoadError(f"{path}: input.range must be [low, high], not {value_range!r}")
    if spec.get("foreground", "light") not in ("light", "dark"):
        raise ModelLoadError(f"{path}: input.foreground must be 'light' or 'dark'")
    encoder = _require(metadata, "encoder", dict, path)
    decoder = _require(metadata, "decoder", dict, path)
    for part, keys in ((encoder, KEYS_ENCODER), (decoder, KEYS_DECODER)):
        for key in keys:
            if not isinstance(part.get(key), str):
                raise ModelLoadError(f"{path}: missing or bad string {key!r} in encoder/decoder")
    if encoder.get("outputs") != KIND_OUTPUTS[kind]:
        raise ModelLoadError(
            f"{path}: encoder.outputs is {encoder.get('outputs')!r}; a {kind} model has "
            f"{KIND_OUTPUTS[kind]!r}"
        )
    figures = metadata.get("figures") or []
    if not isinstance(figures, list) or not all(
        isinstance(f, str) and f and Path(f).name == f and not f.startswith(".") for f in figures
    ):
        raise ModelLoadError(f"{path}: figures must be a list of plain file names")
    return metadata


def _session(path: Path, expected_sha: str, options: ort.SessionOptions) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelLoadError(f"{path}: file not found")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha:
        raise ModelLoadError(
            f"{path}: sha256 is {digest}, metadata.json says {expected_sha} "
            "(the file changed after export: re-export the model)"
        )
    try:
        # The verified bytes themselves are loaded, not the path again.
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{path}: onnxruntime cannot load it ({exc})") from None


def _check_tensor(
    path: Path, role: str, arg: ort.NodeArg, name: str, dims: tuple[int, ...]
) -> None:
    if arg.name != name:
        raise ModelLoadError(f"{path}: {role} is named {arg.name!r}, metadata.json says {name!r}")
    if arg.type != FLOAT_TENSOR:
        raise ModelLoadError(f"{path}: {role} {name!r} is {arg.type}, expected {FLOAT_TENSOR}")
    shape = list(arg.shape)
    expected = ["N", *dims]
    if len(shape) != len(expected) or shape[1:] != list(dims):
        raise ModelLoadError(
            f"{path}: {role} {name!r} has shape {shape}, metadata.json implies {expected}"
        )
    if isinstance(shape[0], int):
        raise ModelLoadError(
            f"{path}: {role} {name!r} has a fixed batch size {shape[0]}; it must be dynamic"
        )


def session_options(intra_op_threads: int = 1, allow_spinning: bool = False) -> ort.SessionOptions:
    """The onnxruntime settings of every session (bench/compute.py measures them).

    - `intra_op_threads`: threads per inference (0 = one per core). These graphs are small
      (7.5 M multiply-adds per image): at the batch sizes requests bring, splitting one call
      over threads gains less than running calls side by side, one per core.
    - `allow_spinning` off: with threads > 1, idle pool threads spin for a while waiting for
      work by default; under concurrent requests that burns the cores the other requests need.
    - No memory arena: onnxruntime's arena keeps the largest batch's buffers for good (+140 MB
      per worker after one batch of 256, measured); without it they go back to malloc, at no
      measurable cost in speed at these sizes.
    - Sequential execution and full graph optimisation (onnxruntime's defaults, stated).
    """
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
    )
    options.log_severity_level = 3  # errors only: ORT's warnings are not the client's business
    return options


def load_model(
    folder: Path,
    intra_op_threads: int = 0,
    observer: InferenceObserver | None = None,
    allow_spinning: bool = False,
) -> Model:
    """Load one model folder; raise ModelLoadError (naming the file) unless every file matches
    metadata.json."""
    folder = Path(folder)
    metadata = read_metadata(folder)
    options = session_options(intra_op_threads, allow_spinning)
    shape = tuple(metadata["input"]["shape"])
    z_dim = metadata["z_dim"]
    enc_meta, dec_meta = metadata["encoder"], metadata["decoder"]
    enc_path, dec_path = folder / enc_meta["file"], folder / dec_meta["file"]
    encoder = _session(enc_path, enc_meta["sha256"], options)
    decoder = _session(dec_path, dec_meta["sha256"], options)

    inputs, outputs = encoder.get_inputs(), encoder.get_outputs()
    if len(inputs) != 1:
        raise ModelLoadError(f"{enc_path}: has {len(inputs)} inputs, expected 1")
    _check_tensor(enc_path, "input", inputs[0], enc_meta["input"], shape)
    names = [o.name for o in outputs]
    if sorted(names) != sorted(enc_meta["outputs"]):
        raise ModelLoadError(
            f"{enc_path}: outputs are {names}, metadata.json says {enc_meta['outputs']}"
        )
    for arg in outputs:
        _check_tensor(enc_path, "output", arg, arg.name, (z_dim,))

    inputs, outputs = decoder.get_inputs(), decoder.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelLoadError(
            f"{dec_path}: has {len(inputs)} inputs and {len(outputs)} outputs, expected 1 and 1"
        )
    _check_tensor(dec_path, "input", inputs[0], dec_meta["input"], (z_dim,))
    _check_tensor(dec_path, "output", outputs[0], dec_meta["output"], shape)

    model = Model(
        name=metadata["name"],
        kind=metadata["kind"],
        z_dim=z_dim,
        input_shape=shape,
        metadata=metadata,
        path=folder,
        encoder=encoder,
        decoder=decoder,
        encoder_input=enc_meta["input"],
        encoder_outputs=list(enc_meta["outputs"]),
        decoder_input=dec_meta["input"],
        decoder_output=dec_meta["output"],
        latent_points=_read_latent_points(folder, metadata),
        figures=tuple(_check_figures(folder, metadata)),
        observer=observer,
    )
    model.warm_up()
    return model


def _read_latent_points(folder: Path, metadata: dict) -> bytes | None:
    name = metadata.get("latent_points")
    if name is None:
        return None
    path = folder / str(name)
    if not isinstance(name, str) or Path(name).name != name or not path.is_file():
        raise ModelLoadError(f"{path}: latent points file named in metadata.json not found")
    data = path.read_bytes()
    try:
        points = json.loads(data)
        z, labels = points["z"], points.get("labels")
        ok = isinstance(z, list) and all(
            isinstance(v, list) and len(v) == metadata["z_dim"] for v in z
        )
        ok = ok and (labels is None or (isinstance(labels, list) and len(labels) == len(z)))
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise ModelLoadError(
            f"{path}: expected {{'z': [[{metadata['z_dim']} numbers], ...], 'labels': [...]}}"
        )
    return data


def _check_figures(folder: Path, metadata: dict) -> list[str]:
    figures = metadata.get("figures") or []
    for name in figures:
        if not (folder / name).is_file():
            raise ModelLoadError(f"{folder / name}: figure listed in metadata.json not found")
    return figures


def model_folders(model_dir: Path) -> list[Path]:
    """The sub-folders of `model_dir` that are models (hidden and `_` folders skipped)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )


class ModelRegistry:
    """Every model of a model directory, by name, loaded once."""

    def __init__(self, models: dict[str, Model], default: str):
        if default not in models:
            raise ModelLoadError(
                f"default model {default!r} is not among the loaded models {sorted(models)} "
                "(set VAE_DEFAULT_MODEL to one of them)"
            )
        self.models = models
        self.default = default

    @classmethod
    def load(
        cls,
        model_dir: Path,
        default: str = "vae",
        intra_op_threads: int = 0,
        observer: InferenceObserver | None = None,
    ) -> ModelRegistry:
        """Load and validate every model folder of `model_dir`; raise ModelLoadError if there
        is none, if any is broken, or if `default` is not among them."""
        folders = model_folders(model_dir)
        if not folders:
            raise ModelLoadError(missing_models_message(Path(model_dir)))
        models: dict[str, Model] = {}
        for folder in folders:
            model = load_model(folder, intra_op_threads, observer)
            if model.name in models:
                raise ModelLoadError(
                    f"{folder / METADATA}: model name {model.name!r} is already used by "
                    f"{models[model.name].path}"
                )
            models[model.name] = model
        return cls(models, default)

    @property
    def names(self) -> list[str]:
        return sorted(self.models)

    def get(self, name: str) -> Model:
        """The model called `name`; KeyError if there is none."""
        return self.models[name]

    def __iter__(self) -> Iterator[Model]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def __contains__(self, name: object) -> bool:
        return name in self.models


def missing_models_message(model_dir: Path) -> str:
    """What to tell someone whose model directory holds no model."""
    where = "does not exist" if not model_dir.is_dir() else "has no model folders"
    return (
        f"{model_dir} {where}: the service needs at least one exported model "
        f"({model_dir}/<name>/ with {METADATA}, encoder.onnx and decoder.onnx). "
        "Run `make train` to train and export the shipped models (vae and ae), "
        "or point VAE_MODEL_DIR at a folder of exported models."
    )
