"""The model format: what a model folder's `metadata.json` holds, defined once.

`vae-export` writes it through `ModelMetadata`, the service validates every folder with it at
start-up, and `GET /models` returns it, so the three can never disagree. Its JSON Schema is
published as docs/model-format.schema.json (`python -m service.inference.format --schema`
writes it; a test keeps it current), for people who write models for the service with other
tools.

A model folder: `metadata.json`, the two ONNX graphs it names (checked by sha256, tensor names,
shapes and dtypes in `service.inference.registry`), and optionally the latent points file and
the figures it lists. No torch here: training imports this module, never the reverse.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    model_validator,
)

FORMAT = "vae-service-model/1"
METADATA = "metadata.json"
ModelKind = Literal["vae", "ae"]
# How the service turns an uploaded image into the encoder's input (PixelSpec.preparation).
Preparation = Literal["digit", "fit", "none"]
PREPARATIONS: tuple[str, ...] = ("digit", "fit", "none")
# The image shapes this service serves: C in {1, 3}, H and W up to this.
MAX_SIDE = 256
# The encoder's outputs by model kind, in order.
KIND_OUTPUTS: dict[str, list[str]] = {"vae": ["mu", "log_var"], "ae": ["z"]}
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "model-format.schema.json"


class ModelLoadError(RuntimeError):
    """A model folder is missing, incomplete or inconsistent; the message names the file."""


def _plain_file_name(name: str) -> str:
    """A file inside the model folder: no path, nothing hidden (nothing can escape it)."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"{name!r} is not a plain file name")
    return name


FileName = Annotated[str, AfterValidator(_plain_file_name)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="hex sha256 of the file")]
TensorName = Annotated[str, Field(min_length=1)]


class PixelSpec(BaseModel):
    """The encoder's input (and the decoder's output): shape, pixel convention, and the
    preparation uploads get before the encoder."""

    model_config = ConfigDict(extra="allow")

    shape: tuple[
        Annotated[StrictInt, Field(gt=0)],
        Annotated[StrictInt, Field(gt=0)],
        Annotated[StrictInt, Field(gt=0)],
    ] = Field(
        description=f"[C, H, W] of one image (the batch axis is dynamic): C is 1 (grayscale) "
        f"or 3 (RGB), H and W at most {MAX_SIDE}"
    )
    dtype: Literal["float32"] = "float32"
    range: tuple[float, float] = Field(
        (0.0, 1.0), description="[low, high]: the values of background and full ink"
    )
    layout: Literal["NCHW"] = "NCHW"
    foreground: Literal["light", "dark"] = Field(
        "light", description="light: ink is `high` on a `low` background (as MNIST)"
    )
    background: Literal["light", "dark"] | None = None
    preparation: Preparation = Field(
        "digit",
        description="what an uploaded image goes through before the encoder: digit (MNIST's "
        "recipe: grayscale, invert a light background, crop to the ink, fit a box of 20/28 of "
        "the side keeping the aspect ratio, centre by mass; 1-channel models only), fit "
        "(convert to C channels, resize the shorter side to fit, centre-crop) or none "
        "(convert and resize to H x W). Absent in folders written before it: digit",
    )
    description: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PixelSpec:
        low, high = self.range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"range must be finite [low, high] with low < high, not {self.range}")
        channels, height, width = self.shape
        if channels not in (1, 3) or height > MAX_SIDE or width > MAX_SIDE:
            raise ValueError(
                f"shape {list(self.shape)}: this service serves 1-channel (grayscale) or "
                f"3-channel (RGB) models of at most {MAX_SIDE}x{MAX_SIDE} pixels"
            )
        if self.preparation == "digit" and channels != 1:
            raise ValueError("preparation 'digit' is for 1-channel models; use 'fit' or 'none'")
        return self

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]


class EncoderSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    file: FileName
    sha256: Sha256
    input: TensorName = Field(description="input tensor name, (N, C, H, W) float32")
    outputs: list[TensorName] = Field(
        description="output tensor names, each (N, z_dim): ['mu', 'log_var'] or ['z']"
    )


class DecoderSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    file: FileName
    sha256: Sha256
    input: TensorName = Field(description="input tensor name, (N, z_dim) float32")
    output: TensorName = Field(description="output tensor name, (N, C, H, W) float32")


# The typicality scores made of parts (an image's score is the lowest of its parts'
# percentiles among the held-out images), and their parts.
SCORE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "log_px_and_kl": ("iwae_log_px", "kl"),
    "log_px_kl_and_prior": ("iwae_log_px", "kl", "log_prior"),
    "neg_mse_and_prior": ("neg_mse", "log_prior"),
}


class Typicality(BaseModel):
    """How typical an image is for this model: its score against held-out images' scores
    (written at export by training/typicality.py, read by POST /score)."""

    model_config = ConfigDict(extra="allow")

    score: Literal[
        "log_px_and_kl", "log_px_kl_and_prior", "neg_mse_and_prior", "iwae_log_px", "neg_mse"
    ] = Field(
        description="log_px_and_kl (VAE): the lower of two percentiles among the held-out "
        "images, of the importance-weighted log p(x) with `k` posterior samples and of the "
        "KL(q(z|x) || p(z)) (`components` holds their held-out quantiles); "
        "log_px_kl_and_prior (VAE with a fitted prior): the lowest of three, those two and "
        "the fitted prior's log density of the image's mean encoding (`log_prior`: how likely "
        "the encoding is under the aggregate posterior); neg_mse_and_prior (AE with a fitted "
        "prior): the lower of the percentiles of -MSE and of log_prior; iwae_log_px: that "
        "log p(x) alone, in nats; neg_mse: minus the per-pixel MSE of the reconstruction "
        "(plain AE: reconstruction error only). Higher is more typical"
    )
    k: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="posterior samples per image (iwae_log_px)"
    )
    seed: StrictInt | None = Field(None, description="seed of the held-out scores' samples")
    held_out: str = Field(description="which images the reference scores are of")
    count: Annotated[StrictInt, Field(ge=2)] = Field(description="how many held-out images")
    quantiles: list[float] = Field(
        min_length=2,
        description="sorted held-out scores at evenly spaced probabilities 0..1 (the "
        "percentile of a new score is read off them)",
    )
    components: dict[str, list[float]] | None = Field(
        None,
        description="a combined score's parts (log_px_and_kl: iwae_log_px and kl; "
        "log_px_kl_and_prior: also log_prior; neg_mse_and_prior: neg_mse and log_prior): each "
        "one's held-out quantiles at evenly spaced probabilities, for its percentile",
    )
    threshold: float = Field(description="typical: score >= threshold")
    threshold_quantile: float = Field(
        gt=0, lt=1, description="the share of held-out images below the threshold"
    )
    how_chosen: str = Field(description="how the score and the threshold were chosen")

    @model_validator(mode="after")
    def _check(self) -> Typicality:
        if not math.isfinite(self.threshold):
            raise ValueError("threshold must be finite")
        series = {"quantiles": self.quantiles, **(self.components or {})}
        for name, values in series.items():
            if len(values) < 2 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name}: at least two finite quantiles")
            if any(b < a for a, b in itertools.pairwise(values)):
                raise ValueError(f"{name}: quantiles must be sorted (non-decreasing)")
        parts = SCORE_COMPONENTS.get(self.score, ())
        if (self.score == "iwae_log_px" or "iwae_log_px" in parts) and self.k is None:
            raise ValueError(f"score {self.score!r} needs k")
        wanted = set(parts) or None
        if set(self.components or ()) != (wanted or set()):
            raise ValueError(
                f"score {self.score!r} needs components {sorted(wanted or [])}, got "
                f"{sorted(self.components or [])}"
            )
        return self


class PriorSpec(BaseModel):
    """A fitted prior: a Gaussian mixture over the training split's encodings, and one per
    label where the data had labels (service/inference/prior.py reads the file)."""

    model_config = ConfigDict(extra="allow")

    file: FileName
    sha256: Sha256
    kind: Literal["gaussian_mixture"] = Field(
        "gaussian_mixture", description="full-covariance Gaussian mixture"
    )
    fitted_on: str = Field(
        description="which encodings were fitted: 'mu' (the VAE's means), 'posterior_sample' "
        "(one z ~ q(z|x) per image) or 'z' (the AE's codes)"
    )
    components: Annotated[StrictInt, Field(ge=1)] = Field(
        description="mixture components over the whole training split"
    )
    per_label: bool = Field(False, description="one mixture per label is in the file")
    default: Literal["normal", "fitted"] = Field(
        description="the prior GET /sample uses when the request names none"
    )
    how_chosen: str = Field(description="how the components and the default were chosen")


class ModelMetadata(BaseModel):
    """A model folder's metadata.json (format `vae-service-model/1`).

    Keys this version does not define are kept (and returned by /models) but not used."""

    model_config = ConfigDict(
        extra="allow",
        title="vae-service model metadata",
        json_schema_extra={"$id": "https://vae-service/model-format/1"},
    )

    format: Literal["vae-service-model/1"] = Field(description="this schema's name and version")
    name: str = Field(min_length=1, description="the name requests use (?model=)")
    kind: ModelKind = Field(description="'vae' or 'ae'")
    version: str | None = Field(None, description="changes whenever either graph changes")
    created: str | None = Field(None, description="export time, ISO 8601")
    z_dim: Annotated[StrictInt, Field(ge=1)]
    input: PixelSpec
    encoder: EncoderSpec
    decoder: DecoderSpec
    parity_max_abs_diff: float | None = Field(
        None, description="largest |ONNX - PyTorch| output difference measured at export"
    )
    training: dict[str, Any] | None = Field(None, description="the config and a run summary")
    evaluation: dict[str, Any] | None = Field(None, description="vae-evaluate's figures")
    libraries: dict[str, str] | None = Field(None, description="versions used to export")
    latent_points: FileName | None = Field(
        None, description="JSON file of encoded held-out images: {z: [[...]], labels: [...]}"
    )
    figures: list[FileName] = Field(
        default_factory=list, description="figure files served at /models/{name}/figures/"
    )
    # Left out when absent, so folders from before it round-trip.
    label_names: list[str] | None = Field(
        None,
        description="what each label of the latent points means, by label number (e.g. "
        "Fashion-MNIST's classes); absent: the label numbers are their own names (digits)",
        exclude_if=lambda value: value is None,
    )
    # Left out when absent (written files, /models), so folders from before it round-trip.
    typicality: Typicality | None = Field(
        None,
        description="held-out scores for POST /score's typicality verdict (optional)",
        exclude_if=lambda value: value is None,
    )
    # Left out when absent, so folders from before it round-trip.
    prior: PriorSpec | None = Field(
        None,
        description="a fitted prior for GET /sample?prior=fitted and &label= (optional)",
        exclude_if=lambda value: value is None,
    )

    @model_validator(mode="after")
    def _outputs_match_kind(self) -> ModelMetadata:
        if self.encoder.outputs != KIND_OUTPUTS[self.kind]:
            raise ValueError(
                f"encoder.outputs is {self.encoder.outputs!r}; a {self.kind} model has "
                f"{KIND_OUTPUTS[self.kind]!r}"
            )
        return self

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.input.shape

    def to_json(self) -> str:
        """The metadata.json text (2-space indent, trailing newline)."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] in ("missing",):
        return f"missing key {where!r}"
    got = error.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {got!r:.80})"
    return f"{where}: {message}{shown}"


def parse_metadata(data: Any, where: Path | str) -> ModelMetadata:
    """Validate already parsed JSON; ModelLoadError naming `where` and the first bad fields."""
    if not isinstance(data, dict):
        raise ModelLoadError(f"{where}: expected a JSON object")
    if data.get("format") != FORMAT:
        raise ModelLoadError(
            f"{where}: format is {data.get('format')!r}, this service reads {FORMAT!r}"
        )
    try:
        return ModelMetadata.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors()[:3])
        raise ModelLoadError(f"{where}: {problems}") from None


def read_metadata(folder: Path) -> ModelMetadata:
    """Parse and check a model folder's metadata.json (structure only: the files it names are
    checked by `service.inference.registry.load_model`)."""
    path = Path(folder) / METADATA
    if not path.is_file():
        raise ModelLoadError(
            f"{path}: file not found (a model folder needs {METADATA}, written by vae-export)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read it as JSON ({exc})") from None
    return parse_metadata(data, path)


def write_metadata(folder: Path, metadata: ModelMetadata) -> None:
    (Path(folder) / METADATA).write_text(metadata.to_json())


def json_schema() -> str:
    """The published JSON Schema text of metadata.json."""
    return json.dumps(ModelMetadata.model_json_schema(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.inference.format",
        description="Write the JSON Schema of a model folder's metadata.json, or check folders.",
    )
    parser.add_argument(
        "--schema", action="store_true", help=f"write the schema to {SCHEMA_PATH.name}"
    )
    parser.add_argument("--out", type=Path, default=SCHEMA_PATH, help="where --schema writes")
    parser.add_argument("folders", nargs="*", type=Path, help="model folders to validate")
    args = parser.parse_args(argv)
    if args.schema:
        args.out.write_text(json_schema())
        print(f"wrote {args.out}")
    status = 0
    for folder in args.folders:
        try:
            metadata = read_metadata(folder)
        except ModelLoadError as exc:
            print(f"invalid: {exc}", file=sys.stderr)
            status = 1
        else:
            print(f"ok: {folder} ({metadata.kind} {metadata.name!r}, z_dim {metadata.z_dim})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
