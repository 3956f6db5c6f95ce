"""Request and response bodies of the analysis routes (POST /interpolate, GET /manifold,
POST /score, /score/batch): part of the contract /docs shows, as service.api.schemas."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas import MAX_LIST, Z_LIMIT, LatentValue


class InterpolationMethod(StrEnum):
    linear = "linear"
    slerp = "slerp"


class ManifoldPlane(StrEnum):
    """Which plane of latent space GET /manifold spans: two latent dimensions (the book's), or
    the principal plane of the model's latent points (z_dim > 2)."""

    dims = "dims"
    principal = "principal"


LatentVector = Annotated[list[LatentValue], Field(min_length=1, max_length=MAX_LIST)]


class InterpolateRequest(BaseModel):
    """The JSON form of POST /interpolate: two latent vectors (or upload two images as
    multipart fields `start` and `end`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"start": [-1.5, 0.5], "end": [1.0, -1.0]}]},
    )

    start: LatentVector = Field(
        description=f"the first point: z_dim finite numbers, |value| <= {Z_LIMIT:g}"
    )
    end: LatentVector = Field(description="the last point, as `start`")


class InterpolateResponse(BaseModel):
    """`?format=json` of POST /interpolate: the path and one decoded image per step."""

    model: str
    method: InterpolationMethod = Field(description="the method asked for")
    used: InterpolationMethod = Field(
        description="the method that drew the path (slerp falls back to linear: see `note`)"
    )
    endpoints: Literal["latent", "images"] = Field(
        description="what start and end were: latent vectors, or images encoded to their "
        "mean (VAE: mu; AE: z)"
    )
    t: list[float] = Field(description="the interpolation parameter of each step, 0 .. 1")
    z: list[list[float]] = Field(description="the path: one z per step, first = start")
    norms: list[float] = Field(description="|z| of each step")
    images: list[str] = Field(description="one base64 PNG per step, in path order")
    note: str | None = Field(None, description="e.g. why slerp fell back to linear")


class ManifoldResponse(BaseModel):
    """`?format=json` of GET /manifold."""

    model: str
    n: int
    plane: Literal["dims", "principal"] = Field(
        "dims",
        description="dims: the grid varies two latent dimensions (`dims`), the others at "
        "`base`; principal: it spans the principal plane of the model's latent points, "
        "z = origin + u a1 + v a2 (`origin`, `axes`)",
    )
    dims: list[int] | None = Field(
        description="plane dims: [i, j], z[i] varies along rows, z[j] down columns; principal: null"
    )
    p: list[float] = Field(description="the n evenly spaced probabilities")
    axis: list[float] = Field(description="z = Phi^-1(p) at each probability, increasing")
    base: list[float] = Field(
        description="plane dims: `base` as given (zeros by default), the value of every "
        "dimension not in `dims`; principal: the plane's origin (the grid's centre)"
    )
    # Left out of plane=dims answers (which stay as they were before planes).
    origin: list[float] | None = Field(
        None,
        description="principal: the latent points' mean, z_dim numbers",
        exclude_if=lambda value: value is None,
    )
    axes: list[list[float]] | None = Field(
        None,
        description="principal: [a1, a2], the points' two principal directions (unit)",
        exclude_if=lambda value: value is None,
    )
    explained: list[float] | None = Field(
        None,
        description="principal: each axis' share of the points' variance",
        exclude_if=lambda value: value is None,
    )
    z: list[list[list[float]]] = Field(
        description="z[row][col]: plane dims: z[dims[0]] = axis[col], z[dims[1]] = "
        "axis[n - 1 - row]; principal: origin + axis[col] a1 + axis[n - 1 - row] a2 (the top "
        "row has the largest value, as in the book's figure)"
    )
    images: list[str] = Field(
        description="one base64 PNG per cell, row-major (grayscale or RGB, as the model)"
    )
    note: str | None = Field(
        None, description="caveats: a plain AE's prior; for z_dim > 2, which plane is shown"
    )


class LikelihoodInfo(BaseModel):
    """The VAE's p(x|z), as it was trained (metadata training.config)."""

    name: Literal["gaussian", "bernoulli"]
    dims: int = Field(description="D: pixel values per image, C x H x W")
    r_loss_factor: float | None = Field(None, description="the training loss's weight (mse)")
    sigma: float | None = Field(None, description="Gaussian sigma: 1 / (2 sigma^2) = r / D")
    assumed: bool = Field(description="true if the metadata did not say (the book's recipe)")
    statement: str


class TypicalityVerdict(BaseModel):
    """The image's score against the held-out images' (metadata `typicality`)."""

    score_name: Literal[
        "log_px_and_kl", "log_px_kl_and_prior", "neg_mse_and_prior", "iwae_log_px", "neg_mse"
    ]
    score: float = Field(
        description="this image's score (higher = more typical); log_px_and_kl: the lower of "
        "its log p(x) and KL percentiles among held-out images (0..100); log_px_kl_and_prior: "
        "the lowest of those and the fitted prior's log density's percentile; "
        "neg_mse_and_prior: the lower of the -MSE and prior density percentiles"
    )
    components: dict[str, float] | None = Field(
        None,
        description="a combined score's parts, each one's percentile among held-out images "
        "(iwae_log_px, kl, log_prior, neg_mse)",
    )
    k: int | None = Field(None, description="posterior samples of the score (iwae_log_px)")
    percentile: float = Field(description="share of held-out images scoring lower, 0..100")
    typical: bool = Field(description="score >= threshold")
    threshold: float
    threshold_percentile: float = Field(
        description="the threshold's own percentile among held-out images (e.g. 1)"
    )
    held_out: str
    how_chosen: str


class ScoreResult(BaseModel):
    """One image's scores. Both kinds: the reconstruction, its error map and MSE, and the
    typicality verdict; a VAE also: the ELBO's terms and the importance-weighted log p(x)."""

    model: str
    kind: Literal["vae", "ae"]
    input: str = Field(
        description="the preprocessed input the model saw, base64 PNG (grayscale or RGB, as "
        "the model's channels)"
    )
    reconstruction: str = Field(
        description="decoded from mu (VAE) or z (AE), base64 PNG (grayscale or RGB)"
    )
    error_map: str = Field(
        description="base64 RGB PNG: brightness |reconstruction - input| (sqrt of the squared "
        "error; RGB models: of its mean over the three channels), red = input ink the "
        "reconstruction lacks (RGB: darker on average), blue = ink it adds (RGB: brighter)"
    )
    mse: float = Field(
        description="mean squared error over the C x H x W pixel values, [0, 1] pixels"
    )
    reconstruction_log_likelihood: float | None = Field(
        None, description="VAE: E_q log p(x|z) in nats, estimated from the k samples"
    )
    kl: float | None = Field(None, description="VAE: KL(q(z|x) || N(0, I)) in nats (exact)")
    elbo: float | None = Field(None, description="VAE: reconstruction term - KL, nats")
    log_px: float | None = Field(
        None,
        description="VAE: log mean_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x): the k-sample "
        "importance-weighted lower bound on log p(x), in nats (>= the ELBO on average)",
    )
    bits_per_dim: float | None = Field(
        None,
        description="VAE: -log_px / (D ln 2), D = C x H x W (likelihood.dims), of a "
        "continuous density (not comparable with "
        "the bits/dim of discrete 8-bit models; can be negative)",
    )
    log_prior: float | None = Field(
        None,
        description="with a fitted prior: its log density (nats) of the image's encoding (VAE: "
        "mu; AE: z): how likely the encoding is under the aggregate posterior of the training "
        "images; null for a model without a fitted prior",
    )
    k: int | None = Field(None, description="VAE: posterior samples used")
    seed: int | None = Field(None, description="VAE: the seed of the samples (repeat with it)")
    likelihood: LikelihoodInfo | None = None
    typicality: TypicalityVerdict | None = Field(
        None, description="null when the model's metadata has no held-out reference"
    )
    note: str | None = None


class ScoreBatchResponse(BaseModel):
    model: str
    items: list[ScoreResult] = Field(description="one /score result per image, in order")
