// How a model's latent space lies on the 2-D map (z <-> map coordinates u, v).

import { state, zDim } from "./state.js";

export const unitVector = (n, i) => Array.from({ length: n }, (_, k) => (k === i ? 1 : 0));
export const dot = (a, b) => a.reduce((sum, x, i) => sum + x * (b[i] ?? 0), 0);

export function validPlane(plane, n) {
  const vec = (v) => Array.isArray(v) && v.length === n && v.every(Number.isFinite);
  return Boolean(plane) && vec(plane.origin) && Array.isArray(plane.axes) &&
    plane.axes.length === 2 && plane.axes.every(vec);
}

// How a model's z_dim-D latent space lies on the 2-D map, as map coordinates (u, v):
// u = (z - origin)·axes[0], v = (z - origin)·axes[1]; a map point decodes at
// z = origin + u·axes[0] + v·axes[1].
//   z_dim 2: the plane itself (origin 0, unit axes): u, v = z1, z2.
//   z_dim > 2 with `plane` in its latent points: the held-out points' principal plane.
//   z_dim > 2 without: z1, z2 with the other dimensions at 0 (said on the page).
//   z_dim 1: one axis, u = z1; v is not used (points at v = 0, any v decodes z1 = u).
export function projection(name) {
  const cached = state.projections.get(name);
  if (cached) return cached;
  const n = zDim(name);
  const plane = state.points.get(name)?.plane;
  const origin = new Array(n).fill(0);
  let p;
  if (n > 2 && validPlane(plane, n)) {
    const share = (k) => {
      const e = Number(plane.explained?.[k]);
      return Number.isFinite(e) ? ` (${Math.round(e * 100)}% of variance)` : "";
    };
    p = {
      kind: "plane",
      origin: plane.origin,
      axes: plane.axes,
      labels: [`PC1${share(0)}`, `PC2${share(1)}`],
      short: ["PC1", "PC2"],
      note: `the map is the held-out points' principal plane in ${n}-D (PC1, PC2 through their mean)`,
    };
  } else if (n === 1) {
    p = {
      kind: "line",
      origin,
      axes: [[1], [0]],
      labels: ["z₁", "(z_dim 1: one axis)"],
      short: ["z₁", ""],
      note: "z_dim 1: the map's horizontal axis is z₁; up and down do not change z",
    };
  } else {
    p = {
      kind: "dims",
      origin,
      axes: [unitVector(n, 0), unitVector(n, 1)],
      labels: ["z₁", "z₂"],
      short: ["z₁", "z₂"],
      note: n > 2
        ? "no principal plane in this model's latent points: the map shows z₁, z₂ (other dimensions at 0)"
        : "",
    };
  }
  if (state.points.has(name)) state.projections.set(name, p);
  return p;
}

// The model's z -> map coordinates [u, v].
export function projectZ(name, z, p = projection(name)) {
  const d = p.origin.map((o, i) => (z[i] ?? 0) - o);
  return [dot(d, p.axes[0]), dot(d, p.axes[1])];
}

// A map point [u, v] -> the model's z (length z_dim).
export function fullZ(name, uv) {
  const p = projection(name);
  return p.origin.map((o, i) => o + uv[0] * p.axes[0][i] + uv[1] * p.axes[1][i]);
}

