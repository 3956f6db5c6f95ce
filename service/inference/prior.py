"""Fitted priors: a Gaussian mixture over a model's aggregate posterior, in numpy alone.

At larger z_dim, N(0, I) puts much of its mass in the holes between the regions the encoder
uses, and the plain AE has no prior at all; sampling where the training encodings lie (ex-post
density estimation) gives samples that look like the data. Training fits the mixture
(training/prior.py, scikit-learn) and writes it with `save_prior`; the service reads it with
`load_prior` and samples it here, seeded and byte-identical, without scikit-learn.

The file (`prior.npz`, named with its sha256 by the metadata's `prior` field) holds the
mixture over all training encodings and, where the data has labels, one mixture per label:

    weights (K,)  means (K, D)  cholesky (K, D, D)            the whole training split
    class_labels (C,)  class_shares (C,)                     labels with a fit, their shares
    class_weights (C, Kc)  class_means (C, Kc, D)  class_cholesky (C, Kc, D, D)

Each `cholesky` is the lower-triangular factor L of a component's covariance (L L^T), so a
sample is mean + L eps. Per-label mixtures with fewer than Kc components are padded with
zero-weight components, which loading drops.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.inference.format import ModelLoadError
from service.inference.normal import LOG_2PI

PRIOR_FILE = "prior.npz"
_OVERALL = ("weights", "means", "cholesky")
_CLASSES = ("class_labels", "class_shares", "class_weights", "class_means", "class_cholesky")


@dataclass(frozen=True)
class Mixture:
    """A Gaussian mixture in latent space: weights (K,), means (K, D), cholesky (K, D, D)."""

    weights: np.ndarray
    means: np.ndarray
    cholesky: np.ndarray

    @property
    def z_dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def covariances(self) -> np.ndarray:
        covariances: np.ndarray = np.einsum("kij,klj->kil", self.cholesky, self.cholesky)
        return covariances

    def sample(self, n: int, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        """n points (float32): a component by weight, then mean + temperature * L eps.

        The draws are in a fixed order (components, then noise), so a seeded generator gives
        the same bytes every time."""
        components = rng.choice(len(self.weights), size=n, p=self.weights)
        eps = rng.standard_normal((n, self.z_dim))
        spread = np.einsum("nij,nj->ni", self.cholesky[components], eps)
        z: np.ndarray = (self.means[components] + temperature * spread).astype(np.float32)
        return z

    def log_density(self, z: np.ndarray) -> np.ndarray:
        """log p(z) under the mixture for z (N, D), in nats (float64, (N,))."""
        z = np.asarray(z, dtype=np.float64)
        per_component = []
        for weight, mean, chol in zip(self.weights, self.means, self.cholesky, strict=True):
            # Solve L y = (z - mean): |y|^2 is the Mahalanobis distance, without an inverse.
            y = np.linalg.solve(chol, (z - mean).T).T
            log_det = 2.0 * np.log(np.diag(chol)).sum()
            per_component.append(
                np.log(weight) - 0.5 * (self.z_dim * LOG_2PI + log_det + (y * y).sum(axis=1))
            )
        stacked = np.stack(per_component)
        top = stacked.max(axis=0)
        log_p: np.ndarray = top + np.log(np.exp(stacked - top).sum(axis=0))
        return log_p


@dataclass(frozen=True)
class FittedPrior:
    """The mixture over all training encodings, and one per label where there were labels."""

    overall: Mixture
    labels: tuple[int, ...] = ()
    shares: tuple[float, ...] = ()
    classes: tuple[Mixture, ...] = ()

    @property
    def per_label(self) -> bool:
        return bool(self.labels)

    def mixture(self, label: int | None = None) -> Mixture:
        """The mixture for `label` (None: the whole data). KeyError for a label without a fit."""
        if label is None:
            return self.overall
        if label not in self.labels:
            raise KeyError(label)
        return self.classes[self.labels.index(label)]

    def sample(
        self,
        n: int,
        rng: np.random.Generator,
        temperature: float = 1.0,
        label: int | None = None,
    ) -> np.ndarray:
        return self.mixture(label).sample(n, rng, temperature)

    def log_density(self, z: np.ndarray) -> np.ndarray:
        return self.overall.log_density(z)


def _padded(mixtures: tuple[Mixture, ...], z_dim: int) -> dict[str, np.ndarray]:
    width = max(len(m.weights) for m in mixtures)
    weights = np.zeros((len(mixtures), width))
    means = np.zeros((len(mixtures), width, z_dim))
    chol = np.tile(np.eye(z_dim), (len(mixtures), width, 1, 1))
    for i, m in enumerate(mixtures):
        k = len(m.weights)
        weights[i, :k], means[i, :k], chol[i, :k] = m.weights, m.means, m.cholesky
    return {"class_weights": weights, "class_means": means, "class_cholesky": chol}


def prior_bytes(prior: FittedPrior) -> bytes:
    """The .npz bytes of a prior (float64 throughout; no pickles)."""
    arrays: dict[str, np.ndarray] = {
        "weights": prior.overall.weights,
        "means": prior.overall.means,
        "cholesky": prior.overall.cholesky,
    }
    if prior.per_label:
        arrays["class_labels"] = np.asarray(prior.labels, dtype=np.int64)
        arrays["class_shares"] = np.asarray(prior.shares, dtype=np.float64)
        arrays.update(_padded(prior.classes, prior.overall.z_dim))
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **{k: v.astype(np.float64) for k, v in arrays.items()})
    return buffer.getvalue()


def save_prior(folder: Path, prior: FittedPrior, name: str = PRIOR_FILE) -> str:
    """Write the prior into a model folder; returns the file's sha256 (for the metadata)."""
    data = prior_bytes(prior)
    (folder / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _mixture(weights: np.ndarray, means: np.ndarray, chol: np.ndarray, z_dim: int) -> Mixture:
    keep = weights > 0
    weights, means, chol = weights[keep], means[keep], chol[keep]
    k = len(weights)
    if k == 0 or means.shape != (k, z_dim) or chol.shape != (k, z_dim, z_dim):
        raise ValueError(
            f"a mixture needs weights (K,), means (K, {z_dim}) and cholesky "
            f"(K, {z_dim}, {z_dim}); got {weights.shape}, {means.shape}, {chol.shape}"
        )
    if not abs(weights.sum() - 1.0) < 1e-6:
        raise ValueError(f"weights sum to {weights.sum():.8f}, not 1")
    if not np.allclose(chol, np.tril(chol)) or not (np.diagonal(chol, axis1=1, axis2=2) > 0).all():
        raise ValueError("each cholesky factor must be lower-triangular with a positive diagonal")
    return Mixture(weights / weights.sum(), means, chol)


def parse_prior(data: bytes, z_dim: int) -> FittedPrior:
    """A prior from its .npz bytes, checked against the model's z_dim (ValueError if bad)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {key: np.asarray(npz[key], dtype=np.float64) for key in npz.files}
    missing = [key for key in _OVERALL if key not in arrays]
    if missing:
        raise ValueError(f"missing arrays {missing}")
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise ValueError("arrays must be finite")
    overall = _mixture(arrays["weights"], arrays["means"], arrays["cholesky"], z_dim)
    present = [key for key in _CLASSES if key in arrays]
    if not present:
        return FittedPrior(overall)
    if len(present) != len(_CLASSES):
        raise ValueError(f"per-label arrays need all of {list(_CLASSES)}; got {present}")
    labels = tuple(int(x) for x in arrays["class_labels"])
    shares = tuple(float(x) for x in arrays["class_shares"])
    if len(set(labels)) != len(labels) or len(shares) != len(labels):
        raise ValueError("class_labels must be distinct, one share each")
    classes = tuple(
        _mixture(w, m, c, z_dim)
        for w, m, c in zip(
            arrays["class_weights"],
            arrays["class_means"],
            arrays["class_cholesky"],
            strict=True,
        )
    )
    if len(classes) != len(labels):
        raise ValueError("one mixture per class label")
    return FittedPrior(overall, labels, shares, classes)


def load_prior(path: Path, z_dim: int, sha256: str) -> FittedPrior:
    """Read and check a prior file; ModelLoadError naming the file and the reason."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelLoadError(f"{path}: cannot read the prior: {error}") from error
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ModelLoadError(f"{path}: sha256 does not match metadata.json (prior.sha256)")
    try:
        return parse_prior(data, z_dim)
    except (ValueError, OSError, KeyError) as error:
        raise ModelLoadError(f"{path}: not a valid prior: {error}") from error
