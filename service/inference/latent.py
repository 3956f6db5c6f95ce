"""Paths and grids in latent space (numpy only): interpolation and the book's manifold.

    path, note = interpolate(start, end, steps=10, method="slerp")   # (steps, z_dim)
    grid, axis = manifold_grid(z_dim=2, n=20)                         # (n, n, z_dim)
    grid, axis = plane_grid(origin, axes, n=20)                       # z_dim > 2: a plane

Interpolation runs in float64 and returns float32 rows whose first and last are exactly
`start` and `end`, so the path decodes to exactly decode(start) ... decode(end).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from service.inference.normal import norm_ppf

Method = Literal["linear", "slerp"]
# Below this norm a vector has no direction to rotate from.
MIN_NORM = 1e-6
# |sin| of the angle between the two directions below which they count as (anti)parallel:
# the great circle through them is then undefined (antiparallel) or the straight line anyway.
MIN_SIN = 1e-4


def steps_t(steps: int) -> np.ndarray:
    """The interpolation parameter: `steps` evenly spaced values from 0 to 1."""
    return np.linspace(0.0, 1.0, steps)


def lerp(start: np.ndarray, end: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(1 - t) start + t end, one row per t."""
    a, b = np.asarray(start, np.float64), np.asarray(end, np.float64)
    return np.asarray((1.0 - t)[:, None] * a + t[:, None] * b)


def slerp_fallback(start: np.ndarray, end: np.ndarray) -> str | None:
    """Why a spherical path cannot be drawn between these vectors (None if it can)."""
    a, b = np.asarray(start, np.float64), np.asarray(end, np.float64)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na < MIN_NORM or nb < MIN_NORM:
        which = "start" if na < MIN_NORM else "end"
        return f"slerp fell back to linear: {which} is (near) zero, so it has no direction"
    cos = float(np.clip(a @ b / (na * nb), -1.0, 1.0))
    if np.sqrt(max(0.0, 1.0 - cos * cos)) < MIN_SIN:
        how = "parallel" if cos > 0 else "antiparallel"
        return (
            f"slerp fell back to linear: start and end are {how}, so no single great circle "
            "joins their directions"
        )
    return None


def slerp(start: np.ndarray, end: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation: the direction moves along the great circle from start's to
    end's at constant angular speed, and the norm goes linearly from |start| to |end|.

    So two endpoints at the typical radius of N(0, I) (about sqrt(z_dim)) keep the whole path
    there, where a straight line would cut inside the sphere. Call `slerp_fallback` first:
    this assumes the two vectors are neither (near) zero nor (anti)parallel."""
    a, b = np.asarray(start, np.float64), np.asarray(end, np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua, ub = a / na, b / nb
    omega = np.arccos(np.clip(ua @ ub, -1.0, 1.0))
    sin = np.sin(omega)
    direction = (np.sin((1.0 - t) * omega)[:, None] * ua + np.sin(t * omega)[:, None] * ub) / sin
    radius = (1.0 - t) * na + t * nb
    return np.asarray(radius[:, None] * direction)


def interpolate(
    start: np.ndarray, end: np.ndarray, steps: int, method: Method
) -> tuple[np.ndarray, Method, str | None]:
    """`steps` points from start to end -> (path (steps, z_dim) float32, the method used, a
    note when slerp had to fall back to linear). Row 0 is start and row -1 end, exactly."""
    start = np.asarray(start, np.float32)
    end = np.asarray(end, np.float32)
    t = steps_t(steps)
    note = None
    used: Method = method
    if method == "slerp":
        note = slerp_fallback(start, end)
        if note is not None:
            used = "linear"
    path = slerp(start, end, t) if used == "slerp" else lerp(start, end, t)
    out = path.astype(np.float32)
    out[0], out[-1] = start, end
    return out, used, note


def quantile_axis(n: int, p_min: float, p_max: float) -> np.ndarray:
    """z = Phi^-1(p) at n evenly spaced probabilities from p_min to p_max (float64)."""
    return norm_ppf(np.linspace(p_min, p_max, n))


def manifold_grid(
    z_dim: int,
    n: int,
    p_min: float = 0.05,
    p_max: float = 0.95,
    dims: tuple[int, int] = (0, 1),
    base: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The book's manifold: an n x n grid of latent vectors -> (grid (n, n, z_dim) float32,
    axis (n,) float64).

    Row r, column c holds z[dims[0]] = axis[c] (left to right, increasing) and z[dims[1]] =
    axis[n - 1 - r] (top to bottom, decreasing: the top row has the largest value, as in the
    book's figure); every other dimension is `base`'s (zeros by default)."""
    axis = quantile_axis(n, p_min, p_max)
    i, j = dims
    grid = np.zeros((n, n, z_dim), np.float64)
    if base is not None:
        grid[:] = np.asarray(base, np.float64)
    grid[:, :, i] = axis[None, :]
    grid[:, :, j] = axis[::-1, None]
    return grid.astype(np.float32), axis


def principal_plane(z: np.ndarray) -> dict[str, list[Any]]:
    """The plane through the mean of latent points `z` (N, z_dim) spanned by their two
    principal directions: {"origin": [z_dim], "axes": [[z_dim], [z_dim]], "explained": [2]}.

    Stored with the held-out points of models with z_dim > 2 (`plane` in latent_points.json):
    the explorer draws the points at (z - origin) . axes and decodes origin + u a1 + v a2.
    `explained` is each axis' share of the points' total variance. Each axis' sign is fixed
    (its largest component positive) so the same points always give the same plane."""
    points = np.asarray(z, np.float64)
    if points.ndim != 2 or points.shape[0] < 2 or points.shape[1] < 2:
        raise ValueError("principal_plane needs at least two points of at least 2 dimensions")
    origin = points.mean(axis=0)
    _, singular, vt = np.linalg.svd(points - origin, full_matrices=False)
    axes = vt[:2]
    axes *= np.where(axes[np.arange(2), np.abs(axes).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    variance = singular**2
    explained = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return {
        "origin": origin.round(6).tolist(),
        "axes": axes.round(6).tolist(),
        "explained": explained.round(4).tolist(),
    }


def plane_grid(
    origin: np.ndarray,
    axes: np.ndarray,
    n: int,
    p_min: float = 0.05,
    p_max: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """The manifold over a plane (models with z_dim > 2): an n x n grid of z = origin +
    u axes[0] + v axes[1] -> (grid (n, n, z_dim) float32, axis (n,) float64), with u = axis[c]
    along columns (increasing) and v = axis[n - 1 - r] down rows (the top row has the largest
    v), as `manifold_grid`. u and v are N(0, 1) quantiles: for unit axes through the origin of
    the prior each cell holds equal prior mass in the plane."""
    axis = quantile_axis(n, p_min, p_max)
    first, second = np.asarray(axes, np.float64)
    grid = (
        np.asarray(origin, np.float64)[None, None, :]
        + axis[None, :, None] * first[None, None, :]
        + axis[::-1, None, None] * second[None, None, :]
    )
    return grid.astype(np.float32), axis
