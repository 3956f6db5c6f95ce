// Fitted priors: what GET /models says a model can sample from (`priors`), and its fitted
// Gaussian mixture (GET /models/{name}/prior) drawn on the latent map as ellipses at 1 and 2
// sigma, one pair per component, more opaque the heavier the component. With z_dim > 2 each
// component is drawn as its marginal on the map's plane (mean and covariance projected on the
// map's axes: A Σ Aᵀ); with z_dim 1 nothing is drawn (the page says so).

import { api } from "./api.js";
import { addOverlay, allMaps } from "./map.js";
import { projectZ } from "./projection.js";
import { modelInfo, state } from "./state.js";
import { $, labelColor, setStatus } from "./util.js";

const PRIOR_INK = [20, 24, 28]; // the overall mixture's ellipses (rgb); a picked label: its colour
const NONE = { available: ["normal"], default: "normal", per_label: false, labels: [] };

// What /sample can draw from for `name` (GET /models: `priors`; N(0, I) only when absent).
export function priorsOf(name) {
  const priors = modelInfo(name)?.priors;
  return priors && Array.isArray(priors.available) ? { ...NONE, ...priors } : NONE;
}

export const hasFitted = (name) => priorsOf(name).available.includes("fitted");
export const hasPerLabel = (name) => hasFitted(name) && Boolean(priorsOf(name).per_label) &&
  priorsOf(name).labels.length > 0;

// The fitted mixture of `name` ({z_dim, components, labels, ...}), fetched once; null when the
// model has none or it could not be loaded (said in the status line).
export function fittedPrior(name) {
  if (!state.priors.has(name)) {
    const load = hasFitted(name)
      ? api(`models/${encodeURIComponent(name)}/prior`).then((r) => r.json()).catch((err) => {
        setStatus(`fitted prior of ${name}: ${err.message}`, true);
        return null;
      })
      : Promise.resolve(null);
    state.priors.set(name, { pending: true, body: null });
    load.then((body) => {
      state.priors.set(name, { pending: false, body });
      for (const map of allMaps()) if (map?.model === name) map.draw();
      updatePriorToggle();
    });
  }
  return state.priors.get(name);
}

// The 2x2 covariance of a component on the map: A Σ Aᵀ with A the map's two axes.
function mapCovariance(cov, axes) {
  const [a, b] = axes;
  const quad = (u, v) => u.reduce((s, ui, i) => s + ui * cov[i].reduce((t, c, j) => t + c * (v[j] ?? 0), 0), 0);
  return [[quad(a, a), quad(a, b)], [quad(b, a), quad(b, b)]];
}

// The axes of the ellipse x^T C^-1 x = 1 for a 2x2 covariance C: half-lengths (the square
// roots of the eigenvalues, major first) and the major axis' angle from the u axis.
function ellipseOf([[a, b], [, c]]) {
  const mid = (a + c) / 2;
  const d = Math.hypot((a - c) / 2, b);
  return {
    radii: [Math.sqrt(Math.max(mid + d, 0)), Math.sqrt(Math.max(mid - d, 0))],
    angle: 0.5 * Math.atan2(2 * b, a - c),
  };
}

// The components to draw on `map`: the picked label's (legend) when the prior has per-label
// fits, else the overall mixture's.
function componentsFor(map, body) {
  const picked = state.highlight;
  const fit = picked !== null ? body.labels?.find((l) => l.label === picked) : null;
  return fit
    ? { components: fit.components, rgb: null, color: labelColor(picked), label: picked }
    : { components: body.components, rgb: PRIOR_INK, color: null, label: null };
}

// The overlay (js/map.js, after the held-out points): map.priorEllipses lists what was drawn,
// canvas data-prior says drawn | hidden | none | loading | line.
function drawPrior(map) {
  map.priorEllipses = [];
  const status = (text) => {
    map.canvas.dataset.prior = text;
  };
  if (!map.model || !hasFitted(map.model)) return status("none");
  if (!state.showPrior) return status("hidden");
  if (map.proj?.kind === "line") return status("line");
  const entry = fittedPrior(map.model);
  if (entry.pending || !entry.body) return status(entry.pending ? "loading" : "none");
  const { components, rgb, color, label } = componentsFor(map, entry.body);
  const ctx = map.ctx;
  const { side } = map.plot();
  const unit = side / (map.bounds.x1 - map.bounds.x0); // the map is square: one scale
  const heaviest = Math.max(...components.map((c) => c.weight));
  for (const component of components) {
    const cov = mapCovariance(component.covariance, map.proj.axes);
    const { radii, angle } = ellipseOf(cov);
    const [cx, cy] = map.toPx(component.mean);
    const alpha = 0.25 + 0.75 * (component.weight / heaviest);
    ctx.strokeStyle = rgb ? `rgba(${rgb.join(", ")}, ${alpha.toFixed(3)})` : color;
    ctx.globalAlpha = rgb ? 1 : alpha;
    for (const k of [1, 2]) {
      ctx.beginPath();
      // canvas y grows downwards: the angle turns the other way
      ctx.ellipse(cx, cy, Math.max(k * radii[0] * unit, 0.5), Math.max(k * radii[1] * unit, 0.5),
        -angle, 0, 2 * Math.PI);
      ctx.lineWidth = k === 1 ? 2 : 1.25;
      ctx.setLineDash(k === 1 ? [] : [6, 4]);
      ctx.stroke();
    }
    ctx.setLineDash([]);
    ctx.globalAlpha = 1;
    ctx.fillStyle = rgb ? `rgba(${rgb.join(", ")}, ${alpha.toFixed(3)})` : color;
    ctx.fillRect(cx - 2, cy - 2, 4, 4);
    map.priorEllipses.push({
      mean: projectZ(map.model, component.mean, map.proj),
      covariance: cov,
      weight: component.weight,
      center: [cx, cy],
      sd: radii, // the 1σ half-axes in map units
      radii: radii.map((r) => r * unit), // ... and in CSS pixels
      angle,
      label,
    });
  }
  return status("drawn");
}

// The map panel's "fitted prior" checkbox: enabled where a shown model has a prior to draw,
// else disabled with the reason beside it; hidden in the manifold view (drawn on maps only).
export function updatePriorToggle() {
  const row = $("map-options");
  const box = $("prior-toggle");
  row.hidden = state.view === "manifold";
  const shown = allMaps().filter((m) => m?.model && !m.canvas.closest("[hidden]"));
  const names = [...new Set(shown.map((m) => m.model))];
  const fitted = names.filter(hasFitted);
  let reason = "";
  if (!fitted.length) {
    reason = names.length > 1 ? "neither model has a fitted prior" : "this model has no fitted prior";
  } else if (shown.every((m) => !hasFitted(m.model) || m.proj?.kind === "line")) {
    reason = "z_dim 1: a mixture on one axis is not drawn";
  }
  box.disabled = Boolean(reason);
  box.checked = state.showPrior && !reason;
  const parts = fitted.map((n) => {
    const body = state.priors.get(n)?.body;
    const k = body ? body.components.length : null;
    const what = k === null ? "" : `${k} component${k === 1 ? "" : "s"}`;
    return names.length > 1 ? `${n}: ${what}` : what;
  }).filter((s) => s && !s.endsWith(": "));
  const projected = fitted.some((n) => (modelInfo(n)?.z_dim ?? 2) > 2);
  $("prior-toggle-note").textContent = reason || [
    parts.join(", "),
    "1σ solid, 2σ dashed, darker = heavier",
    ...(projected ? ["projected on the map's plane"] : []),
    ...(state.highlight !== null && fitted.some(hasPerLabel) ? ["the picked label's own fit"] : []),
  ].filter(Boolean).join("; ");
}

// Wires the checkbox and the overlay (called once by app.js).
export function setupPriors() {
  addOverlay("points", drawPrior);
  $("prior-toggle").addEventListener("change", (e) => {
    state.showPrior = e.target.checked;
    for (const map of allMaps()) map.draw();
    updatePriorToggle();
  });
}
