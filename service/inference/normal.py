"""The standard normal distribution in numpy (the service has no scipy): quantiles and
log-densities.

    norm_ppf(np.linspace(0.05, 0.95, 20))   # z at evenly spaced probabilities (the manifold)

`norm_ppf` is P. J. Acklam's rational approximation (relative error below 1.15e-9) refined by
one Halley step on the exact CDF (math.erfc), which leaves it within a few units in the last
place of scipy.stats.norm.ppf (tests/test_latent_ops.py compares them).
"""

from __future__ import annotations

import math

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)

# Acklam's coefficients: central region, then the tails.
_A = (
    -3.969683028665376e01,
    2.209460984245205e02,
    -2.759285104469687e02,
    1.383577518672690e02,
    -3.066479806614716e01,
    2.506628277459239e00,
)
_B = (
    -5.447609879822406e01,
    1.615858368580409e02,
    -1.556989798598866e02,
    6.680131188771972e01,
    -1.328068155288572e01,
)
_C = (
    -7.784894002430293e-03,
    -3.223964580411365e-01,
    -2.400758277161838e00,
    -2.549732539343734e00,
    4.374664141464968e00,
    2.938163982698783e00,
)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425
# Below this density the Halley step's exp(x^2 / 2) would overflow (|x| > ~37.5): the
# rational approximation stands alone there.
_MIN_PDF = 1e-300


def _poly(coefficients: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    out = np.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        out = out * x + c
    return out


def _acklam(p: np.ndarray) -> np.ndarray:
    x = np.empty_like(p)
    low, high = p < _P_LOW, p > 1.0 - _P_LOW
    mid = ~(low | high)
    q = p[mid] - 0.5
    r = q * q
    x[mid] = _poly(_A, r) * q / (_poly(_B, r) * r + 1.0)
    for mask, sign, tail in ((low, 1.0, p[low]), (high, -1.0, 1.0 - p[high])):
        t = np.sqrt(-2.0 * np.log(tail))
        x[mask] = sign * _poly(_C, t) / (_poly(_D, t) * t + 1.0)
    return x


def _erfc_half(x: np.ndarray, sign: float) -> np.ndarray:
    """0.5 * erfc(sign * x / sqrt(2)) per element (math.erfc: exact to double precision)."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    out = np.array([0.5 * math.erfc(sign * v / math.sqrt(2.0)) for v in flat], dtype=np.float64)
    return out.reshape(np.shape(x))


def norm_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF, to double precision."""
    return _erfc_half(x, -1.0)


def norm_ppf(p: np.ndarray | float) -> np.ndarray:
    """Standard normal quantile (inverse CDF) of each probability; 0 -> -inf, 1 -> +inf,
    outside [0, 1] or NaN -> NaN (as scipy.stats.norm.ppf)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    inside = (p > 0.0) & (p < 1.0)
    out[p == 0.0] = -np.inf
    out[p == 1.0] = np.inf
    if not inside.any():
        return out
    q = p[inside]
    x = _acklam(q)
    # One Halley step on f(x) = Phi(x) - p: x -= u / (1 + x u / 2), u = f(x) / phi(x).
    pdf = np.exp(-0.5 * x * x) / _SQRT_2PI
    ok = pdf > _MIN_PDF
    # Phi(x) - p, from the nearer tail: 1 - p is exact for p >= 0.5, Phi(x) near 1 is not.
    upper = q > 0.5
    error = np.where(upper, (1.0 - q) - _erfc_half(x, 1.0), _erfc_half(x, -1.0) - q)[ok]
    u = error / pdf[ok]
    x[ok] = x[ok] - u / (1.0 + 0.5 * x[ok] * u)
    out[inside] = x
    return out


def log_standard_normal(z: np.ndarray) -> np.ndarray:
    """log N(z; 0, I) of each row of z (..., d), summed over the last axis, in nats."""
    z = np.asarray(z, dtype=np.float64)
    result: np.ndarray = -0.5 * np.sum(z * z, axis=-1) - 0.5 * z.shape[-1] * LOG_2PI
    return result
