"""The model registry: load, check and hold every exported model of a model directory.

A model folder (written by `vae-export`) holds encoder.onnx, decoder.onnx and metadata.json
(`service.inference.format`), and optionally a fitted prior (`prior.npz`). Every ONNX file is
checked against the metadata (sha256, input and output names, shapes, dtypes) and warmed up
before anything is served, the prior file by sha256 and its shapes against z_dim; any mismatch
is a `ModelLoadError` naming the file.

    registry = ModelRegistry.load(Path("models"), default="vae")
    model = registry.get("vae")
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.inference.format import METADATA, ModelLoadError, ModelMetadata, read_metadata
from service.inference.model import InferenceObserver, LatentPlane, Model
from service.inference.prior import FittedPrior, load_prior
from service.inference.sessions import check_tensor, open_session, session_options


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
    shape, z_dim = metadata.input.shape, metadata.z_dim
    enc_meta, dec_meta = metadata.encoder, metadata.decoder
    enc_path, dec_path = folder / enc_meta.file, folder / dec_meta.file
    encoder = open_session(enc_path, enc_meta.sha256, options)
    decoder = open_session(dec_path, dec_meta.sha256, options)

    inputs, outputs = encoder.get_inputs(), encoder.get_outputs()
    if len(inputs) != 1:
        raise ModelLoadError(f"{enc_path}: has {len(inputs)} inputs, expected 1")
    check_tensor(enc_path, "input", inputs[0], enc_meta.input, shape)
    names = [o.name for o in outputs]
    if sorted(names) != sorted(enc_meta.outputs):
        raise ModelLoadError(
            f"{enc_path}: outputs are {names}, metadata.json says {enc_meta.outputs}"
        )
    for arg in outputs:
        check_tensor(enc_path, "output", arg, arg.name, (z_dim,))

    inputs, outputs = decoder.get_inputs(), decoder.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelLoadError(
            f"{dec_path}: has {len(inputs)} inputs and {len(outputs)} outputs, expected 1 and 1"
        )
    check_tensor(dec_path, "input", inputs[0], dec_meta.input, (z_dim,))
    check_tensor(dec_path, "output", outputs[0], dec_meta.output, shape)

    _check_figures(folder, metadata)
    points, plane = _read_latent_points(folder, metadata)
    model = Model(
        metadata=metadata,
        path=folder,
        encoder=encoder,
        decoder=decoder,
        latent_points=points,
        plane=plane,
        prior=_read_prior(folder, metadata),
        observer=observer,
    )
    model.warm_up()
    return model


def _finite_numbers(value: Any, length: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == length
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
    )


def _plane(path: Path, value: Any, z_dim: int) -> LatentPlane:
    """latent_points.json's optional `plane` (latent.principal_plane), checked."""
    ok = (
        isinstance(value, dict)
        and _finite_numbers(value.get("origin"), z_dim)
        and isinstance(value.get("axes"), list)
        and len(value["axes"]) == 2
        and all(_finite_numbers(axis, z_dim) for axis in value["axes"])
        and _finite_numbers(value.get("explained"), 2)
    )
    if not ok:
        raise ModelLoadError(
            f"{path}: 'plane' must be {{'origin': [{z_dim} finite numbers], 'axes': "
            f"[[{z_dim} finite numbers], [{z_dim} finite numbers]], 'explained': "
            "[2 finite numbers]}"
        )
    first, second = value["axes"]
    return LatentPlane(
        origin=tuple(float(v) for v in value["origin"]),
        axes=(tuple(float(v) for v in first), tuple(float(v) for v in second)),
        explained=(float(value["explained"][0]), float(value["explained"][1])),
    )


def _read_latent_points(
    folder: Path, metadata: ModelMetadata
) -> tuple[bytes | None, LatentPlane | None]:
    name = metadata.latent_points
    if name is None:
        return None, None
    path = folder / name
    if not path.is_file():
        raise ModelLoadError(f"{path}: latent points file named in metadata.json not found")
    data = path.read_bytes()
    try:
        points = json.loads(data)
        z, labels = points["z"], points.get("labels")
        ok = isinstance(z, list) and all(
            isinstance(v, list) and len(v) == metadata.z_dim for v in z
        )
        ok = ok and (labels is None or (isinstance(labels, list) and len(labels) == len(z)))
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise ModelLoadError(
            f"{path}: expected {{'z': [[{metadata.z_dim} numbers], ...], 'labels': [...]}}"
        )
    plane = _plane(path, points["plane"], metadata.z_dim) if "plane" in points else None
    return data, plane


def _read_prior(folder: Path, metadata: ModelMetadata) -> FittedPrior | None:
    """The fitted prior metadata.json names (sha256 and shapes checked), or None."""
    spec = metadata.prior
    if spec is None:
        return None
    path = folder / spec.file
    prior = load_prior(path, metadata.z_dim, spec.sha256)
    if spec.per_label != prior.per_label:
        has = "has" if prior.per_label else "has no"
        raise ModelLoadError(
            f"{path}: {has} per-label mixtures, metadata.json says prior.per_label is "
            f"{str(spec.per_label).lower()}"
        )
    if spec.components != len(prior.overall.weights):
        raise ModelLoadError(
            f"{path}: has {len(prior.overall.weights)} components, metadata.json says "
            f"prior.components is {spec.components}"
        )
    return prior


def _check_figures(folder: Path, metadata: ModelMetadata) -> None:
    for name in metadata.figures:
        if not (folder / name).is_file():
            raise ModelLoadError(f"{folder / name}: figure listed in metadata.json not found")


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
