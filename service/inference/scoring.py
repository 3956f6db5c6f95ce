"""How well a model explains an image, in numpy around the model's own ONNX graphs: the VAE's
ELBO and importance-weighted log p(x), bits per dimension, per-pixel errors, and typicality
against held-out images.

    lik = likelihood_of(model.metadata)                 # p(x|z) as the model was trained
    scores = vae_scores(model, x, k=32, rng=np.random.default_rng(0))
    percentile(model.metadata.typicality.quantiles, float(scores.log_px[0]))

One module for the service (`POST /score`) and for training (`training/typicality.py` stores
the held-out reference at export; `vae-evaluate` reports with it): the held-out scores and a
request's score come from the same code. No torch, no training imports.

The likelihood is the one the VAE was trained with (metadata `training.config`):
- `likelihood: "mse"`: the loss r_loss_factor * per-image MSE is, up to a constant, the
  negative log-density of a Gaussian p(x|z) = N(decoder(z), sigma^2 I) over the D pixels with
  1 / (2 sigma^2) = r_loss_factor / D, i.e. sigma^2 = D / (2 r_loss_factor). The constant, the
  Gaussian's normaliser -D/2 log(2 pi sigma^2), is included here, so log p(x) is a density.
- `likelihood: "bce"`: Bernoulli, log p(x|z) = sum x log m + (1 - x) log(1 - m) with the
  decoder's m clamped to [1e-6, 1 - 1e-6] as in training (for grey, non-binary pixels this is
  the Bernoulli's log-mass formula applied to fractional values, not a normalised density).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from service.inference.format import SCORE_COMPONENTS, ModelMetadata
from service.inference.model import Model
from service.inference.normal import LOG_2PI, log_standard_normal
from service.inference.prior import FittedPrior

# The /score default: one request (encode, decode the mean, k posterior samples) stays under
# ~50 ms on this 2-core machine with its other work (measured: README, "Scores").
DEFAULT_K = 32
MAX_K = 5000
# Posterior samples decoded per onnxruntime call (the service's largest batch).
CHUNK = 256
BCE_CLAMP = 1e-6  # training.losses.per_image_bce
# The book's recipe, assumed when a model's metadata does not say how it was trained.
BOOK_LIKELIHOOD = "mse"
BOOK_R_LOSS_FACTOR = 1000.0
QUANTILE_POINTS = 1001
TYPICAL_QUANTILE = 0.01
ScoreName = Literal[
    "log_px_and_kl", "log_px_kl_and_prior", "neg_mse_and_prior", "iwae_log_px", "neg_mse"
]


@dataclass(frozen=True)
class Likelihood:
    """p(x|z) of a VAE, over its D pixel values in the model's own pixel convention."""

    name: Literal["gaussian", "bernoulli"]
    dims: int
    r_loss_factor: float | None = None
    assumed: bool = False

    @property
    def sigma(self) -> float | None:
        """The Gaussian's standard deviation: 1 / (2 sigma^2) = r_loss_factor / D."""
        if self.name != "gaussian" or self.r_loss_factor is None:
            return None
        return math.sqrt(self.dims / (2.0 * self.r_loss_factor))

    def log_prob(self, x: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """log p(x|z) in nats per row: x and the decoder's output `mean`, both (n, D)."""
        x = np.asarray(x, np.float64)
        mean = np.asarray(mean, np.float64)
        if self.name == "bernoulli":
            m = np.clip(mean, BCE_CLAMP, 1.0 - BCE_CLAMP)
            out: np.ndarray = np.sum(x * np.log(m) + (1.0 - x) * np.log1p(-m), axis=1)
            return out
        sigma = self.sigma
        assert sigma is not None
        sse = np.sum((x - mean) ** 2, axis=1)
        normaliser = 0.5 * self.dims * (LOG_2PI + 2.0 * math.log(sigma))
        result: np.ndarray = -sse / (2.0 * sigma * sigma) - normaliser
        return result

    def statement(self) -> str:
        if self.name == "bernoulli":
            text = (
                f"Bernoulli p(x|z) over the {self.dims} pixels (trained with likelihood 'bce'): "
                "log p(x|z) = sum x log m + (1 - x) log(1 - m), m = decoder(z) clamped to "
                "[1e-6, 1 - 1e-6]; for grey pixels this is not a normalised density"
            )
        else:
            text = (
                f"Gaussian p(x|z) = N(decoder(z), sigma^2 I) over the D = {self.dims} pixels: "
                f"the training loss r_loss_factor * per-image MSE (r_loss_factor = "
                f"{self.r_loss_factor:g}) is its negative log-density up to a constant, with "
                f"1 / (2 sigma^2) = r_loss_factor / D, so sigma = {self.sigma:.4f}; the "
                "normalising constant -D/2 log(2 pi sigma^2) is included"
            )
        if self.assumed:
            text += " (the model's metadata does not say how it was trained: the book's recipe "
            text += "is assumed)"
        return text


def likelihood_of(metadata: ModelMetadata) -> Likelihood:
    """The VAE's p(x|z) as trained, from metadata `training.config` (likelihood and
    r_loss_factor); the book's Gaussian with r_loss_factor 1000 if the metadata has none."""
    channels, height, width = metadata.input.shape
    dims = channels * height * width
    config = (metadata.training or {}).get("config")
    config = config if isinstance(config, dict) else {}
    name = config.get("likelihood")
    factor = config.get("r_loss_factor")
    assumed = name not in ("mse", "bce")
    if assumed:
        name = BOOK_LIKELIHOOD
    if name == "bce":
        return Likelihood("bernoulli", dims, assumed=assumed)
    if isinstance(factor, int | float) and math.isfinite(factor) and factor > 0:
        return Likelihood("gaussian", dims, float(factor), assumed)
    return Likelihood("gaussian", dims, BOOK_R_LOSS_FACTOR, True)


def kl_divergence(mu: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """KL(N(mu, diag(exp(log_var))) || N(0, I)) per row, in nats."""
    mu, log_var = np.asarray(mu, np.float64), np.asarray(log_var, np.float64)
    out: np.ndarray = -0.5 * np.sum(1.0 + log_var - mu * mu - np.exp(log_var), axis=1)
    return out


def log_mean_exp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(mean(exp(a))) along `axis`, without overflow."""
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    total = np.log(np.mean(np.exp(a - top), axis=axis)) + np.squeeze(top, axis=axis)
    out: np.ndarray = total
    return out


def posterior_samples(
    model: Model,
    x: np.ndarray,
    mu: np.ndarray,
    log_var: np.ndarray,
    k: int,
    rng: np.random.Generator,
    likelihood: Likelihood,
    chunk: int = CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """k samples z ~ q(z|x) per image through the decoder -> (E_q log p(x|z) estimated from
    them, the importance-weighted bound log mean_k p(x|z_k) p(z_k) / q(z_k|x)), each (N,).

    The noise is drawn image by image, (k, z_dim) each, from `rng`: the same generator state
    gives the same numbers, and image 0 of a batch gets what it would alone. At most `chunk`
    vectors go through the decoder at once."""
    n, z_dim = mu.shape
    flat = np.asarray(x, np.float64).reshape(n, -1)
    mu64, log_var64 = np.asarray(mu, np.float64), np.asarray(log_var, np.float64)
    sigma = np.exp(0.5 * log_var64)
    log_sigma = 0.5 * log_var64
    recon = np.empty(n)
    bound = np.empty(n)
    group = max(1, chunk // k)
    for first in range(0, n, group):
        rows = slice(first, min(n, first + group))
        count = rows.stop - rows.start
        eps = rng.standard_normal((count, k, z_dim))
        z32 = (mu64[rows, None, :] + sigma[rows, None, :] * eps).astype(np.float32)
        z = z32.astype(np.float64)  # the vectors actually decoded
        standard = (z - mu64[rows, None, :]) / sigma[rows, None, :]
        log_q = np.sum(-0.5 * standard * standard - log_sigma[rows, None, :], axis=2)
        log_q -= 0.5 * z_dim * LOG_2PI
        log_prior = log_standard_normal(z)
        vectors = z32.reshape(count * k, z_dim)
        log_lik = np.empty(count * k)
        for start in range(0, count * k, chunk):
            part = slice(start, min(count * k, start + chunk))
            decoded = model.decode_batch(vectors[part]).reshape(part.stop - part.start, -1)
            owners = rows.start + np.arange(part.start, part.stop) // k
            log_lik[part] = likelihood.log_prob(flat[owners], decoded)
        log_lik_k = log_lik.reshape(count, k)
        recon[rows] = log_lik_k.mean(axis=1)
        bound[rows] = log_mean_exp(log_lik_k + log_prior - log_q, axis=1)
    return recon, bound


@dataclass
class ImageScores:
    """Per-image results of `score_images` (arrays over the N images)."""

    reconstruction: np.ndarray  # (N, C, H, W) decoded from the mean (VAE) or the code (AE)
    # Per pixel, [0, 1] pixels: (input - reconstruction)^2, averaged over the channels.
    squared_error: np.ndarray  # (N, H, W)
    # Per pixel, reconstruction - input; RGB: sqrt(squared_error) with the sign of the
    # channels' mean difference (what the error map draws).
    signed_error: np.ndarray  # (N, H, W)
    mse: np.ndarray  # (N,): over all C x H x W values
    codes: dict[str, np.ndarray]
    likelihood: Likelihood | None = None
    k: int | None = None
    reconstruction_log_likelihood: np.ndarray | None = None  # E_q log p(x|z), nats
    kl: np.ndarray | None = None
    elbo: np.ndarray | None = None
    log_px: np.ndarray | None = None  # the k-sample importance-weighted bound, nats
    # The fitted prior's log density of the mean encoding (VAE: mu; AE: z), nats; None
    # without a fitted prior.
    log_prior: np.ndarray | None = None

    @property
    def bits_per_dim(self) -> np.ndarray | None:
        if self.log_px is None or self.likelihood is None:
            return None
        out: np.ndarray = -self.log_px / (self.likelihood.dims * math.log(2.0))
        return out


def score_images(
    model: Model,
    x: np.ndarray,
    k: int = DEFAULT_K,
    rng: np.random.Generator | None = None,
    chunk: int = CHUNK,
    prior: FittedPrior | None = None,
) -> ImageScores:
    """Images (N, C, H, W) in the model's convention -> their scores. Both kinds: the
    reconstruction from the mean, its per-pixel errors and MSE, and with a fitted `prior` its
    log density of the mean encoding; a VAE also: the ELBO's terms and the k-sample
    importance-weighted log p(x)."""
    if len(x) == 0:
        raise ValueError("no images to score")
    codes: dict[str, np.ndarray] = {}
    for first in range(0, len(x), chunk):
        part = model.encode_batch(x[first : first + chunk])
        for name, value in part.items():
            codes[name] = np.concatenate([codes[name], value]) if name in codes else value
    mean = codes["mu"] if model.kind == "vae" else codes["z"]
    recon = np.concatenate(
        [model.decode_batch(mean[i : i + chunk]) for i in range(0, len(mean), chunk)]
    )
    seen, out = model.to_unit_pixels(x), model.to_unit_pixels(recon)
    difference = (out - seen).astype(np.float64)  # (N, C, H, W)
    if difference.shape[1] == 1:
        signed = difference[:, 0]
        squared = signed * signed
    else:
        squared = np.mean(difference * difference, axis=1)
        signed = np.sqrt(squared) * np.where(difference.mean(axis=1) < 0, -1.0, 1.0)
    mse = np.mean((difference * difference).reshape(len(x), -1), axis=1)
    scores = ImageScores(recon, squared, signed, mse, codes)
    if prior is not None:
        scores.log_prior = prior.log_density(mean)
    if model.kind != "vae":
        return scores
    likelihood = likelihood_of(model.metadata)
    rng = rng if rng is not None else np.random.default_rng()
    recon_term, bound = posterior_samples(
        model, x, codes["mu"], codes["log_var"], k, rng, likelihood, chunk
    )
    kl = kl_divergence(codes["mu"], codes["log_var"])
    scores.likelihood, scores.k = likelihood, k
    scores.reconstruction_log_likelihood, scores.kl = recon_term, kl
    scores.elbo, scores.log_px = recon_term - kl, bound
    return scores


def score_name(kind: str, prior: bool = False) -> ScoreName:
    """The typicality score of a model kind: the VAE's log p(x) and KL together, the AE's
    -MSE (it has nothing else); `prior`: each also with a fitted prior's density of the
    encoding (adopted per model where it separates the OOD sets better: models/README.md)."""
    if kind == "vae":
        return "log_px_kl_and_prior" if prior else "log_px_and_kl"
    return "neg_mse_and_prior" if prior else "neg_mse"


def component_values(scores: ImageScores) -> dict[str, np.ndarray]:
    """Each image's values that typicality scores are made of (higher = more typical):
    `neg_mse`; with a fitted prior `log_prior` (nats: how likely the encoding is under the
    aggregate posterior); a VAE also `iwae_log_px` (nats) and `kl` (nats: the posterior's
    information about the image; a vague posterior, near the prior, is a low KL)."""
    values: dict[str, np.ndarray] = {"neg_mse": -scores.mse}
    if scores.log_prior is not None:
        values["log_prior"] = scores.log_prior
    if scores.log_px is not None and scores.kl is not None:
        values["iwae_log_px"] = scores.log_px
        values["kl"] = scores.kl
    return values


def typicality_values(
    model: Model,
    x: np.ndarray,
    k: int = DEFAULT_K,
    rng: np.random.Generator | None = None,
    chunk: int = CHUNK,
    prior: FittedPrior | None = None,
) -> dict[str, np.ndarray]:
    """`component_values` of images (N, C, H, W) in the model's convention."""
    return component_values(score_images(model, x, k, rng, chunk, prior))


def percentiles(quantiles: Sequence[float], scores: np.ndarray | Sequence[float]) -> np.ndarray:
    """Where each score falls among held-out scores given as sorted quantiles at evenly spaced
    probabilities 0 .. 1: the share of held-out images scoring lower, in percent (0..100);
    linear between quantiles, the middle of a run of equal ones; NaN -> 0."""
    q = np.asarray(quantiles, np.float64)
    s = np.atleast_1d(np.asarray(scores, np.float64))
    step = 100.0 / (len(q) - 1)
    low = np.searchsorted(q, s, "left")
    high = np.searchsorted(q, s, "right")
    out = np.empty(len(s))
    tie = high > low
    out[tie] = step * (low[tie] + high[tie] - 1) / 2.0
    inside = ~tie & (low > 0) & (low < len(q))
    at = low[inside]
    frac = (s[inside] - q[at - 1]) / (q[at] - q[at - 1])
    out[inside] = step * (at - 1 + frac)
    out[~tie & (low == 0)] = 0.0
    out[~tie & (low == len(q))] = 100.0
    out[np.isnan(s)] = 0.0
    return out


def percentile(quantiles: Sequence[float], score: float) -> float:
    """`percentiles` of one score."""
    return float(percentiles(quantiles, [score])[0])


COMPONENTS: dict[str, tuple[str, ...]] = SCORE_COMPONENTS


def combine(
    component_quantiles: Mapping[str, Sequence[float]], values: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The combined score: for each image the lowest of its components' percentiles among
    held-out images (so it is atypical if any one of them is) -> (scores 0..100, each
    component's percentiles)."""
    parts = {name: percentiles(q, values[name]) for name, q in component_quantiles.items()}
    return np.minimum.reduce(list(parts.values())), parts


def reference_scores(
    typicality: Any, values: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """Images' scores as the reference `typicality` (format.Typicality) defines them, from
    their `component_values` -> (scores, component percentiles or None)."""
    if typicality.components:
        return combine(typicality.components, values)
    return values[typicality.score], None


def _rounded(values: np.ndarray, points: int) -> list[float]:
    # 6 significant digits: the percentile needs no more, and /models stays small.
    return [float(f"{v:.6g}") for v in np.quantile(values, np.linspace(0.0, 1.0, points))]


SCORE_TEXT = {
    "log_px_and_kl": "the lower of two percentiles among the held-out images: of its "
    "importance-weighted log p(x) (k = {k} posterior samples: how well the model explains it) "
    "and of its KL(q(z|x) || p(z)) (how much the encoder's posterior says about it: a vague "
    "posterior near the prior, a low KL, marks an input the encoder does not recognise; "
    "Alemi et al. 2018 use this 'rate' to flag such inputs); atypical if either is low",
    "log_px_kl_and_prior": "the lowest of three percentiles among the held-out images: of "
    "its importance-weighted log p(x) (k = {k} posterior samples), of its KL(q(z|x) || p(z)) "
    "(a vague posterior near the prior marks an input the encoder does not recognise) and of "
    "the fitted prior's log density of its mean encoding (an encoding where the training "
    "images' encodings are rare); atypical if any one is low",
    "neg_mse_and_prior": "the lower of two percentiles among the held-out images: of minus "
    "the per-pixel MSE of its reconstruction and of the fitted prior's log density of its "
    "code (an encoding where the training images' codes are rare); atypical if either is low",
    "iwae_log_px": "importance-weighted log p(x) with k = {k} posterior samples, in nats",
    "neg_mse": "negative per-pixel MSE of the reconstruction (a plain AE has no likelihood: "
    "this is reconstruction error only)",
}


def typicality_record(
    values: dict[str, np.ndarray],
    name: ScoreName,
    held_out: str,
    k: int | None = None,
    seed: int | None = None,
    quantile: float = TYPICAL_QUANTILE,
    points: int = QUANTILE_POINTS,
) -> dict[str, Any]:
    """metadata.json's `typicality` from held-out images' `component_values`: the score's
    `points` quantiles (for the percentile; a combined score also stores its components') and
    the threshold at `quantile` of them (so 1 - quantile of held-out images are typical)."""
    needed = COMPONENTS.get(name, (name,))
    arrays = {c: np.asarray(values[c], np.float64) for c in needed}
    for array in arrays.values():
        if array.ndim != 1 or len(array) < 2 or not np.all(np.isfinite(array)):
            raise ValueError("need at least two finite held-out scores")
    components = None
    if name in COMPONENTS:
        components = {c: _rounded(a, points) for c, a in arrays.items()}
        scores, _ = combine(components, arrays)
    else:
        scores = arrays[name]
    threshold = float(np.quantile(scores, quantile))
    return {
        "score": name,
        "k": k,
        "seed": seed,
        "held_out": held_out,
        "count": len(scores),
        "quantiles": _rounded(scores, points),
        "components": components,
        "threshold": threshold,
        "threshold_quantile": quantile,
        "how_chosen": (
            f"score: {SCORE_TEXT[name].format(k=k)}; computed at export through the exported "
            f"ONNX graphs on {len(scores)} held-out images ({held_out}), fed as the model's "
            f"own arrays (no upload preparation); threshold: the {100 * quantile:g}% quantile of "
            f"their scores, so {100 * (1 - quantile):g}% of held-out images are typical "
            "(score >= threshold)"
        ),
    }
