"""The model registry: load, check and hold every exported model of a model directory, and
the versions of each that are served.

A model folder (written by `vae-export`) holds encoder.onnx, decoder.onnx and metadata.json
(`service.inference.format`), and optionally a fitted prior (`prior.npz`). Every ONNX file is
checked against the metadata (sha256, input and output names, shapes, dtypes) and warmed up
before anything is served, the prior file by sha256 and its shapes against z_dim; any mismatch
is a `ModelLoadError` naming the file.

Versions, as Triton lays them out: a model folder holds either one model (a flat folder, one
version: the metadata's `version`, or "1") or numbered version folders (models/vae/1/,
models/vae/2/), each a complete model folder whose metadata names the model as its parent
folder does. Which versions are loaded is the version policy: the latest number, or one
pinned (VAE_MODEL_VERSIONS, or a load request). One loaded version per model is the served
one (what a request without a version gets); others may be loaded beside it.

    registry = ModelRegistry.load(Path("models"), default="vae")
    model = registry.get("vae")                 # the served version
    model = registry.get("vae", version="2")    # a loaded version; KeyError if not loaded

Changing what is served (service/process/lifecycle.py) is two steps: `prepare` loads, checks
and warms the new versions (slow: in a thread) and changes nothing; `commit` swaps them in at
once (one assignment). A request that holds a Model keeps using it: Python's reference is the
lease, and a version no longer served is freed when its last request lets go of it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.inference.format import METADATA, ModelLoadError, ModelMetadata, read_metadata
from service.inference.model import InferenceObserver, LatentPlane, Model
from service.inference.prior import FittedPrior, load_prior
from service.inference.sessions import (
    check_tensor,
    open_session,
    release_free_memory,
    session_options,
)

logger = logging.getLogger("service")

VERSION_FOLDER = re.compile(r"[1-9][0-9]{0,8}")  # Triton's: a positive integer


def load_model(
    folder: Path,
    intra_op_threads: int = 0,
    observer: InferenceObserver | None = None,
    allow_spinning: bool = False,
    version: str | None = None,
) -> Model:
    """Load one model folder; raise ModelLoadError (naming the file) unless every file matches
    metadata.json. `version`: its version folder's number (None: a flat folder)."""
    folder = Path(folder)
    metadata = read_metadata(folder)
    if version is not None and metadata.name != folder.parent.name:
        raise ModelLoadError(
            f"{folder / METADATA}: names the model {metadata.name!r}, but its version folder "
            f"is in {folder.parent.name!r} (a version of a model is named as its parent folder)"
        )
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
        version=version if version is not None else (metadata.version or "1"),
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


@dataclass(frozen=True)
class OnDisk:
    """A model of the model directory as it is on disk: its name and its version folders."""

    name: str
    folder: Path
    versions: dict[str, Path]  # version -> folder, oldest first
    numbered: bool  # version folders (1/, 2/, ...) rather than one flat model

    @property
    def latest(self) -> str:
        return list(self.versions)[-1]

    def folder_of(self, version: str) -> Path:
        if version not in self.versions:
            raise ModelLoadError(
                f"{self.folder}: model {self.name!r} has no version {version!r}; its versions: "
                f"{list(self.versions)}"
            )
        return self.versions[version]


def on_disk(folder: Path) -> OnDisk:
    """What `folder` holds: numbered version folders, or one flat model. ModelLoadError for a
    folder that is neither, or both."""
    numbered = sorted(
        (p for p in folder.iterdir() if p.is_dir() and VERSION_FOLDER.fullmatch(p.name)),
        key=lambda p: int(p.name),
    )
    flat = (folder / METADATA).is_file()
    if numbered and flat:
        raise ModelLoadError(
            f"{folder}: holds both a model ({METADATA}) and version folders "
            f"({', '.join(p.name for p in numbered)}): move the model's files into a version "
            "folder of its own (e.g. 1/)"
        )
    if numbered:
        return OnDisk(folder.name, folder, {p.name: p for p in numbered}, numbered=True)
    metadata = read_metadata(folder)  # the flat model's name and version are its metadata's
    return OnDisk(metadata.name, folder, {metadata.version or "1": folder}, numbered=False)


def scan(model_dir: Path) -> dict[str, OnDisk]:
    """Every model of `model_dir` by name; ModelLoadError for a folder that is not a model or
    a name used twice."""
    found: dict[str, OnDisk] = {}
    for folder in model_folders(model_dir):
        model = on_disk(folder)
        if model.name in found:
            raise ModelLoadError(
                f"{folder / METADATA}: model name {model.name!r} is already used by "
                f"{found[model.name].folder}"
            )
        found[model.name] = model
    return found


def parse_pins(text: str) -> dict[str, str]:
    """VAE_MODEL_VERSIONS: "vae=2,ae=1" -> {"vae": "2", "ae": "1"} (the pinned versions)."""
    pins: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, version = (x.strip() for x in part.partition("="))
        if not (sep and name and version):
            raise ModelLoadError(f"VAE_MODEL_VERSIONS: {part!r} is not NAME=VERSION")
        pins[name] = version
    return pins


@dataclass(frozen=True)
class Served:
    """One model as served: its loaded versions, and the one a request without a version gets."""

    versions: Mapping[str, Model]
    current: str

    @property
    def model(self) -> Model:
        return self.versions[self.current]

    def state(self) -> dict[str, Any]:
        return {"versions": list(self.versions), "current": self.current}


@dataclass(frozen=True)
class Staged:
    """Versions loaded and warmed by `ModelRegistry.prepare`, not yet served."""

    name: str
    served: Served


def stage(
    disk: OnDisk,
    versions: list[str],
    intra_op_threads: int = 0,
    observer: InferenceObserver | None = None,
    current: Served | None = None,
) -> Staged:
    """Load `versions` of a model (the last one to be served), reusing those `current` holds."""
    loaded: dict[str, Model] = {}
    for version in versions:
        folder = disk.folder_of(version)
        if current is not None and version in current.versions:
            loaded[version] = current.versions[version]
            continue
        loaded[version] = load_model(
            folder, intra_op_threads, observer, version=version if disk.numbered else None
        )
    return Staged(disk.name, Served(loaded, versions[-1]))


def _released(name: str, version: str) -> None:
    logger.info("model %s version %s released (its last request ended)", name, version)
    release_free_memory()


class ModelRegistry:
    """The served models by name, each with its loaded versions. The served set is replaced
    whole on every change (`commit`, `unload`), so a reader sees one or the other, never half."""

    def __init__(
        self,
        models: Mapping[str, Model | Served],
        default: str,
        model_dir: Path | None = None,
        intra_op_threads: int = 0,
        observer: InferenceObserver | None = None,
        pins: Mapping[str, str] | None = None,
    ):
        if default not in models:
            raise ModelLoadError(
                f"default model {default!r} is not among the loaded models {sorted(models)} "
                "(set VAE_DEFAULT_MODEL to one of them)"
            )
        self._served: dict[str, Served] = {
            name: m if isinstance(m, Served) else Served({m.version: m}, m.version)
            for name, m in models.items()
        }
        self.default = default
        self.model_dir = model_dir
        self.intra_op_threads = intra_op_threads
        self.observer = observer
        self.pins = dict(pins or {})
        self.generation = 0  # changes with every commit and unload (caches key on it)

    @classmethod
    def load(
        cls,
        model_dir: Path,
        default: str = "vae",
        intra_op_threads: int = 0,
        observer: InferenceObserver | None = None,
        pins: Mapping[str, str] | None = None,
        state: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ModelRegistry:
        """Load and validate the models of `model_dir`: every model at its policy's version
        (pinned, else the latest), or exactly the served set `state` ({name: {"versions",
        "current"}}: what the other workers serve now). ModelLoadError if there is none, if
        any is broken, or if `default` is not among them."""
        models = scan(model_dir)
        if not models:
            raise ModelLoadError(missing_models_message(Path(model_dir)))
        pins = dict(pins or {})
        served: dict[str, Served] = {}
        wanted = state if state is not None else {name: {} for name in models}
        for name, entry in wanted.items():
            if name not in models:
                raise ModelLoadError(f"{model_dir}: model {name!r} is served but not found")
            versions = entry.get("versions")
            staged = stage(
                models[name],
                list(versions) if versions else [pins.get(name, models[name].latest)],
                intra_op_threads,
                observer,
            )
            served[name] = Served(
                staged.served.versions, entry.get("current", staged.served.current)
            )
        return cls(served, default, Path(model_dir), intra_op_threads, observer, pins)

    # --- reading: what requests use ------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return sorted(self._served)

    @property
    def models(self) -> dict[str, Model]:
        """The served version of each model, by name."""
        return {name: s.model for name, s in self._served.items()}

    def get(self, name: str, version: str | None = None) -> Model:
        """The model called `name`: its served version, or the loaded `version`; KeyError if
        either is not loaded. The Model returned stays usable after a switch (the lease)."""
        served = self._served[name]
        return served.model if version is None else served.versions[version]

    def lookup(self, name: str, version: str | None = None) -> Model | None:
        """As `get`, but None when not loaded."""
        served = self._served.get(name)
        if served is None:
            return None
        return served.model if version is None else served.versions.get(version)

    def versions(self, name: str) -> list[str]:
        """The loaded versions of `name` (KeyError if it is not served)."""
        return list(self._served[name].versions)

    def served_version(self, name: str) -> str:
        return self._served[name].current

    def state(self) -> dict[str, dict[str, Any]]:
        """The served set, as `load(state=...)` takes it (JSON)."""
        return {name: s.state() for name, s in self._served.items()}

    def __iter__(self) -> Iterator[Model]:
        return iter([s.model for s in self._served.values()])

    def __len__(self) -> int:
        return len(self._served)

    def __contains__(self, name: object) -> bool:
        return name in self._served

    # --- changing: the lifecycle ----------------------------------------------------------------

    def prepare(self, name: str, versions: list[str] | None = None) -> Staged:
        """Load, check and warm up `versions` of model `name` (None: its policy's version), the
        last one served; nothing changes until `commit`. Versions loaded already are reused.
        ModelLoadError naming the file for anything wrong."""
        disk = self.find(name)
        wanted = versions or [self.pins.get(name, disk.latest)]
        return stage(disk, wanted, self.intra_op_threads, self.observer, self._served.get(name))

    def find(self, name: str) -> OnDisk:
        """Model `name` on disk: the folder of that name, else the one whose metadata says it."""
        if self.model_dir is None:
            raise ModelLoadError(f"model {name!r}: no model directory to load it from")
        folder = self.model_dir / name
        if folder.is_dir() and not name.startswith((".", "_")):
            disk = on_disk(folder)
            if disk.name == name:
                return disk
        models = scan(self.model_dir)
        if name not in models:
            raise ModelLoadError(
                f"{self.model_dir}: no model {name!r}; its models: {sorted(models)}"
            )
        return models[name]

    def commit(self, staged: Staged) -> None:
        """Serve the staged versions of one model from now on (one assignment)."""
        served = dict(self._served)
        previous = served.get(staged.name)
        served[staged.name] = staged.served
        self._retire(previous, staged.served)
        self._served = served
        self.generation += 1

    def unload(self, name: str) -> bool:
        """Stop serving `name` (requests running on it finish); whether it was served."""
        served = dict(self._served)
        previous = served.pop(name, None)
        self._retire(previous, None)
        self._served = served
        self.generation += 1
        return previous is not None

    @staticmethod
    def _retire(previous: Served | None, kept: Served | None) -> None:
        """Log, and free the memory of, each version no longer served once its last request
        lets go of it."""
        if previous is None:
            return
        for version, model in previous.versions.items():
            if kept is None or kept.versions.get(version) is not model:
                weakref.finalize(model, _released, model.name, version)


def missing_models_message(model_dir: Path) -> str:
    """What to tell someone whose model directory holds no model."""
    where = "does not exist" if not model_dir.is_dir() else "has no model folders"
    return (
        f"{model_dir} {where}: the service needs at least one exported model "
        f"({model_dir}/<name>/ with {METADATA}, encoder.onnx and decoder.onnx). "
        "Run `make train` to train and export the shipped models (vae and ae), "
        "or point VAE_MODEL_DIR at a folder of exported models."
    )
