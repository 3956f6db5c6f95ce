"""Request and response bodies: these pydantic models are the contract /docs shows."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from service.inference.format import ModelMetadata

# Latent values: strict (no "NaN"/"inf" strings, no booleans), finite, bounded.
Z_LIMIT = 1e4
MAX_LIST = 4096
LatentValue = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-Z_LIMIT, le=Z_LIMIT)]


class ImageFormat(StrEnum):
    png = "png"
    json = "json"


class PriorName(StrEnum):
    """Where GET /sample draws z: normal = N(0, T^2 I); fitted = the model's fitted mixture."""

    normal = "normal"
    fitted = "fitted"


class Preprocess(StrEnum):
    """What an upload goes through before the encoder: auto = the model's own preparation
    (metadata input.preparation); or one of the three by name."""

    auto = "auto"
    digit = "digit"
    fit = "fit"
    none = "none"


class VaeEncoding(BaseModel):
    """A VAE's posterior q(z|x) = N(mu, diag(exp(log_var)))."""

    model: str
    mu: list[float] = Field(description="posterior mean, z_dim numbers")
    log_var: list[float] = Field(description="posterior log-variance, z_dim numbers")


class AeEncoding(BaseModel):
    """A plain autoencoder's code."""

    model: str
    z: list[float] = Field(description="the code, z_dim numbers")


Encoding = VaeEncoding | AeEncoding


class BatchEncoding(BaseModel):
    model: str
    items: list[Encoding] = Field(description="one /encode result per image, in upload order")


class DecodeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"z": [[0.0, 0.0], [1.5, -0.5]]}]},
    )
    # Hard caps (VAE_MAX_BATCH is at most 4096) bound the validation work on a hostile body
    # before the route applies the configured limit and the model's z_dim.
    z: list[Annotated[list[LatentValue], Field(max_length=MAX_LIST)]] = Field(
        min_length=1,
        max_length=MAX_LIST,
        description="1..VAE_MAX_BATCH latent vectors, each of the model's z_dim finite numbers "
        f"with |value| <= {Z_LIMIT:g}",
    )


class ImagesResponse(BaseModel):
    """`?format=json` of /decode and /sample."""

    model: str
    images: list[str] = Field(
        description="one base64 8-bit PNG per image: grayscale for 1-channel models, RGB for "
        "3-channel ones"
    )
    z: list[list[float]] = Field(description="the latent vector each image was decoded from")
    note: str | None = Field(None, description="caveats, e.g. sampling a plain AE")


class SampleResponse(ImagesResponse):
    """`?format=json` of /sample."""

    prior: PriorName = Field(description="the prior the z were drawn from (header X-Prior)")
    label: int | None = Field(None, description="the label whose mixture was sampled (&label=)")


class LabelSamples(BaseModel):
    """One label's row of /sample?per_label=K."""

    label: int = Field(description="the label number")
    name: str = Field(description="its name (metadata label_names; digits: the number)")
    share: float = Field(description="its share of the training split")
    images: list[str] = Field(description="K base64 8-bit PNGs")
    z: list[list[float]] = Field(description="the latent vector each image was decoded from")


class PerLabelResponse(BaseModel):
    """`?format=json` of /sample?per_label=K: K samples of each label's fitted mixture."""

    model: str
    prior: PriorName = Field(description="always 'fitted' (header X-Prior)")
    labels: list[LabelSamples] = Field(description="one entry per label, in label order")


class ReconstructResponse(ImagesResponse):
    """`?format=json` of /reconstruct."""

    mu: list[float] | None = Field(None, description="posterior mean (VAE only)")
    log_var: list[float] | None = Field(None, description="posterior log-variance (VAE only)")
    input: str = Field(
        description="the preprocessed input the model saw, base64 PNG (grayscale or RGB, as "
        "the model's channels)"
    )
    mse: float = Field(description="per-pixel mean squared error, input vs reconstruction")


class LabelInfo(BaseModel):
    label: int = Field(description="the label number (GET /sample?label=)")
    name: str = Field(description="its name (metadata label_names; digits: the number)")
    share: float = Field(description="its share of the training split")


class PriorsInfo(BaseModel):
    """What GET /sample can draw from for a model."""

    available: list[PriorName] = Field(description="'normal' always; 'fitted' with a prior file")
    default: PriorName = Field(description="what /sample uses when the request names no prior")
    per_label: bool = Field(description="whether &label= and &per_label= work (per-label fits)")
    labels: list[LabelInfo] = Field(description="the labels with a fit, in label order")


class ModelInfo(ModelMetadata):
    """A model's metadata.json as loaded, with the priors it serves."""

    model_config = ConfigDict(title="ModelInfo", json_schema_extra={})

    priors: PriorsInfo


class ModelList(BaseModel):
    default: str = Field(description="the model used without ?model=")
    models: list[ModelInfo]


class MixtureComponent(BaseModel):
    weight: float = Field(description="its share of the mixture")
    mean: list[float] = Field(description="z_dim numbers")
    covariance: list[list[float]] = Field(description="z_dim x z_dim, symmetric")


class LabelMixture(LabelInfo):
    components: list[MixtureComponent]


class PriorBody(BaseModel):
    """GET /models/{name}/prior: the fitted Gaussian mixture (for drawing it on the latent map)."""

    z_dim: int
    fitted_on: str = Field(description="which encodings were fitted (metadata prior.fitted_on)")
    default: PriorName = Field(description="what /sample uses when the request names no prior")
    components: list[MixtureComponent] = Field(description="the mixture over the whole data")
    labels: list[LabelMixture] = Field(
        description="one mixture per label, in label order (empty without per-label fits)"
    )


class LatentPlane(BaseModel):
    """The latent points' principal plane (models with z_dim > 2): z = origin + u a1 + v a2."""

    origin: list[float] = Field(description="the points' mean, z_dim numbers")
    axes: list[list[float]] = Field(description="[a1, a2]: two unit vectors of z_dim numbers")
    explained: list[float] = Field(description="each axis' share of the points' variance")


class LatentPoints(BaseModel):
    """Encoded validation images, for a latent-space explorer."""

    model_config = ConfigDict(extra="allow")

    z: list[list[float]]
    labels: list[int] | None = None
    plane: LatentPlane | None = Field(
        None, description="z_dim > 2: the plane of the points' two principal directions"
    )


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    models: list[str]


class ErrorBody(BaseModel):
    """Every error: a JSON object with `detail` (a string, or a list of validation errors)."""

    detail: str | list[dict[str, Any]] | dict[str, Any]
