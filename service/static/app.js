// The latent-space explorer: plain JavaScript on top of the service's own API, no build step,
// no dependencies, no external requests. URLs are relative so the page also works behind a
// path prefix. `window.explorer` exposes the state for the browser tests.
"use strict";

// matplotlib's tab10, one colour per digit.
const DIGIT_COLORS = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];
// Labels past 10 (models with more classes): evenly spread hues.
const labelColor = (label) => DIGIT_COLORS[label] ?? `hsl(${(label * 137.508) % 360}, 62%, 45%)`;
const ACCENT = "#d6336c";
const MANIFOLD_N = 20; // 20x20 decoded grid
const MANIFOLD_P = [0.05, 0.95]; // evenly spaced probabilities, z = Phi^-1(p)
const MANIFOLD_CHUNK = 100; // vectors per /decode request (well under VAE_MAX_BATCH)
const MAX_PINS = 12;
const PAD_SIZE = 280;
const PAD_LINE = 22;

const $ = (id) => document.getElementById(id);

const state = {
  models: [], // ModelInfo objects from GET /models
  model: null, // active model name
  view: "map", // map | manifold | compare
  points: new Map(), // name -> {z, labels, plane?} or null (no latent points)
  projections: new Map(), // name -> how its latent space lies on the 2-D map (projection())
  input: null, // the exact Blob last sent to the API
  inputBase64: null, // the same bytes, base64
  result: null, // the active model's /reconstruct?format=json answer
  encodings: new Map(), // name -> {mu, sigma} (VAE) or {z} (AE) of the current input
  probe: null, // {model, z}
  probeImage: null, // object URL of the probe's decoded PNG
  pins: [], // {id, model, z, url}
  manifolds: new Map(), // name -> Promise<{canvas, zx, zy}>
  decodes: 0, // /decode answers drawn into the probe (for tests)
  requests: 0, // guards against answers arriving out of order
};

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

// API keys (VAE_API_KEYS on the server): a 401 asks for a key, kept for this tab only
// (sessionStorage) and sent as `Authorization: Bearer <key>`; then the request is retried.
const KEY_STORE = "vae-api-key";
let keyPrompt = null; // one dialog at a time, shared by every request that got a 401
let keyDeclined = false;

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORE);
  } catch {
    return null; // storage blocked: ask each time
  }
}

function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
  } catch {
    /* storage blocked */
  }
}

// Resolves with the key entered, or null when the dialog is dismissed.
function askForKey(rejected) {
  if (keyPrompt) return keyPrompt;
  keyPrompt = new Promise((resolve) => {
    const dialog = document.createElement("dialog");
    dialog.id = "key-dialog";
    dialog.className = "key-dialog";
    dialog.setAttribute("aria-labelledby", "key-h");
    dialog.innerHTML = `<form method="dialog" id="key-form">
        <h2 id="key-h">API key</h2>
        <p id="key-note"></p>
        <label for="api-key">Key</label>
        <input id="api-key" name="key" type="password" autocomplete="off" spellcheck="false" required>
        <div class="row buttons">
          <button type="submit" id="key-go">Use this key</button>
          <button type="button" id="key-cancel">Cancel</button>
        </div>
      </form>`;
    dialog.querySelector("#key-note").textContent = rejected
      ? "The service did not accept that key. Enter another one."
      : "This service needs an API key. It is kept for this tab only.";
    const input = dialog.querySelector("#api-key");
    const finish = (key) => {
      if (dialog.open) dialog.close();
      dialog.remove();
      keyPrompt = null;
      keyDeclined = !key;
      resolve(key);
    };
    dialog.querySelector("#key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      storeKey(key);
      finish(key);
    });
    dialog.querySelector("#key-cancel").addEventListener("click", () => finish(null));
    dialog.addEventListener("cancel", (e) => {
      e.preventDefault();
      finish(null);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
  return keyPrompt;
}

async function api(path, options = {}) {
  let response;
  for (;;) {
    const key = storedKey();
    const headers = new Headers(options.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    try {
      response = await fetch(path, { ...options, headers });
    } catch (err) {
      throw new ApiError(`cannot reach the service (${err.message})`);
    }
    if (response.status !== 401) break;
    const now = storedKey();
    if (now && now !== key) continue; // a key entered meanwhile: use it
    if (key) storeKey(null);
    if (keyDeclined && !keyPrompt) {
      throw new ApiError("this service needs an API key (reload the page to enter one)", 401);
    }
    if (!(await askForKey(Boolean(key)))) {
      throw new ApiError("this service needs an API key (reload the page to enter one)", 401);
    }
  }
  if (!response.ok) {
    let detail = response.statusText || `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (typeof body.detail === "string") detail = body.detail;
      else if (Array.isArray(body.detail)) detail = body.detail.map((e) => e.msg).join("; ");
    } catch {
      /* not JSON: keep the status text */
    }
    throw new ApiError(detail, response.status);
  }
  return response;
}

const query = (params) => {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  return q.toString();
};

async function decodePng(model, zs, scale = 1) {
  const response = await api(`decode?${query({ model, format: "png", scale })}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ z: zs }),
  });
  return response.blob();
}

function imageForm(blob) {
  const form = new FormData();
  form.append("file", blob, "digit.png");
  return form;
}

function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
  el.classList.toggle("shown", Boolean(text));
  clearTimeout(setStatus.timer);
  if (text && !isError) setStatus.timer = setTimeout(() => setStatus(""), 2500);
}

function modelInfo(name) {
  return state.models.find((m) => m.name === name);
}

function zDim(name) {
  return modelInfo(name)?.z_dim ?? 2;
}

// [C, H, W] of the model's images (GET /models: input.shape); 1x28x28 when unknown.
function imageShape(name) {
  const shape = modelInfo(name)?.input?.shape;
  return Array.isArray(shape) && shape.length === 3 ? shape : [1, 28, 28];
}

// Width / height of the model's images: <img class="digit"> boxes take it from --ar (style.css),
// so non-square images keep their shape.
function setAspect(img, name) {
  const [, h, w] = imageShape(name);
  img.style.setProperty("--ar", String(w / h));
  return img;
}

// A 1x28x28 model without class names: the book's digits. Anything else: "images".
function isDigitModel(name) {
  const [c, h, w] = imageShape(name);
  return c === 1 && h === 28 && w === 28 && !modelInfo(name)?.label_names;
}

function labelName(name, label) {
  const names = modelInfo(name)?.label_names;
  return Array.isArray(names) && names[label] !== undefined ? String(names[label]) : String(label);
}

const unitVector = (n, i) => Array.from({ length: n }, (_, k) => (k === i ? 1 : 0));
const dot = (a, b) => a.reduce((sum, x, i) => sum + x * (b[i] ?? 0), 0);

function validPlane(plane, n) {
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
function projection(name) {
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
function projectZ(name, z, p = projection(name)) {
  const d = p.origin.map((o, i) => (z[i] ?? 0) - o);
  return [dot(d, p.axes[0]), dot(d, p.axes[1])];
}

// A map point [u, v] -> the model's z (length z_dim).
function fullZ(name, uv) {
  const p = projection(name);
  return p.origin.map((o, i) => o + uv[0] * p.axes[0][i] + uv[1] * p.axes[1][i]);
}

// Fixed decimals, never "-0.00".
const fmt = (v, digits = 2) => {
  const text = v.toFixed(digits);
  return /^-0(\.0*)?$/.test(text) ? text.slice(1) : text;
};
const fmtVec = (v, digits = 2) => `(${v.map((x) => fmt(x, digits)).join(", ")})`;
// Short enough for a line of text at any z_dim: up to 3 numbers in full, else the first two,
// "…" and the last.
const fmtZ = (v, digits = 2) => v.length <= 3
  ? fmtVec(v, digits)
  : `(${v.slice(0, 2).map((x) => fmt(x, digits)).join(", ")}, …, ${fmt(v.at(-1), digits)})`;

// ------------------------------------------------------- normal distribution

// Acklam's rational approximation of the standard normal quantile (rel. error < 1.2e-9).
function normPpf(p) {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2,
    1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2,
    6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838,
    -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p <= 0) return -Infinity;
  if (p >= 1) return Infinity;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
      ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  if (p > 1 - lo) return -normPpf(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

// Standard normal CDF (Abramowitz-Stegun 7.1.26 erf, abs. error < 1.5e-7).
function normCdf(x) {
  const t = 1 / (1 + 0.3275911 * Math.abs(x) / Math.SQRT2);
  const y = 1 - t * Math.exp(-(x * x) / 2) *
    (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  return x >= 0 ? (1 + y) / 2 : (1 - y) / 2;
}

function manifoldAxis() {
  const [p0, p1] = MANIFOLD_P;
  return Array.from({ length: MANIFOLD_N }, (_, i) => normPpf(p0 + ((p1 - p0) * i) / (MANIFOLD_N - 1)));
}

// --------------------------------------------------------------- the map

function niceStep(span, target) {
  const raw = span / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

// A square view over the held-out encodings (their map coordinates `uv`; 0.5-99.5
// percentiles, so a few outliers do not squash the rest) that always includes the prior's
// 2-sigma circle.
function computeBounds(uv) {
  let [x0, x1, y0, y1] = [-2.5, 2.5, -2.5, 2.5];
  if (uv && uv.length) {
    const pick = (k) => uv.map((p) => p[k]).sort((a, b) => a - b);
    const xs = pick(0);
    const ys = pick(1);
    const lo = (a) => a[Math.floor(0.005 * (a.length - 1))];
    const hi = (a) => a[Math.ceil(0.995 * (a.length - 1))];
    x0 = Math.min(x0, lo(xs));
    x1 = Math.max(x1, hi(xs));
    y0 = Math.min(y0, lo(ys));
    y1 = Math.max(y1, hi(ys));
  }
  const half = Math.max(x1 - x0, y1 - y0) / 2 * 1.08;
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  return { x0: cx - half, x1: cx + half, y0: cy - half, y1: cy + half };
}

class LatentMap {
  constructor(canvas, { onProbe, onPin, onUnpin }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onProbe = onProbe;
    this.onPin = onPin;
    this.onUnpin = onUnpin;
    this.model = null;
    this.kind = "vae";
    this.points = null;
    this.proj = null; // projection(model): the model's z <-> map coordinates
    this.uv = null; // the points' map coordinates
    this.bounds = computeBounds(null);
    this.mode = "points"; // points | manifold
    this.manifold = null; // {canvas, zx, zy}
    this.cursor = null; // [x, y] in latent units
    this.encoding = null;
    this.pins = [];
    this.size = 0;
    this.drag = null;
    this.listen();
    new ResizeObserver(() => this.resize()).observe(canvas);
  }

  setModel(name, kind, points) {
    this.model = name;
    this.kind = kind;
    this.points = points;
    this.proj = projection(name);
    this.uv = points ? points.z.map((z) => projectZ(name, z, this.proj)) : null;
    this.bounds = computeBounds(this.uv);
    this.draw();
  }

  // Geometry: a square plot with room for tick labels on the left and at the bottom.
  plot() {
    const s = this.size;
    const left = 46;
    const bottom = 36;
    const side = Math.max(10, s - left - 10);
    return { left, top: 10, side: Math.min(side, s - bottom - 10) };
  }

  // The model's z (any z_dim) -> canvas pixels, through the map's projection.
  toPx(z) {
    return this.uvToPx(this.proj ? projectZ(this.model, z, this.proj) : [z[0], z[1] ?? 0]);
  }

  // Map coordinates [u, v] -> canvas pixels.
  uvToPx([x, y]) {
    const { left, top, side } = this.plot();
    if (this.mode === "manifold" && this.manifold) {
      const u = (p) => {
        const [p0, p1] = MANIFOLD_P;
        const cells = ((normCdf(p) - p0) / (p1 - p0)) * (MANIFOLD_N - 1) + 0.5;
        return Math.min(Math.max(cells / MANIFOLD_N, 0), 1);
      };
      return [left + u(x) * side, top + (1 - u(y)) * side];
    }
    const b = this.bounds;
    return [
      left + ((x - b.x0) / (b.x1 - b.x0)) * side,
      top + (1 - (y - b.y0) / (b.y1 - b.y0)) * side,
    ];
  }

  toZ(px, py) {
    const { left, top, side } = this.plot();
    const fx = Math.min(Math.max((px - left) / side, 0), 1);
    const fy = Math.min(Math.max(1 - (py - top) / side, 0), 1);
    if (this.mode === "manifold" && this.manifold) {
      const [p0, p1] = MANIFOLD_P;
      // cell centres sit at p0..p1; the outer half-cells extrapolate (clamped inside (0, 1))
      const p = (f) => {
        const cells = f * MANIFOLD_N - 0.5;
        return Math.min(Math.max(p0 + (cells / (MANIFOLD_N - 1)) * (p1 - p0), 0.001), 0.999);
      };
      return [normPpf(p(fx)), normPpf(p(fy))];
    }
    const b = this.bounds;
    return [b.x0 + fx * (b.x1 - b.x0), b.y0 + fy * (b.y1 - b.y0)];
  }

  resize() {
    const css = this.canvas.clientWidth;
    if (!css) return;
    const dpr = window.devicePixelRatio || 1;
    this.size = css;
    this.canvas.width = Math.round(css * dpr);
    this.canvas.height = Math.round(css * dpr);
    this.ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    this.draw();
  }

  eventZ(event) {
    const rect = this.canvas.getBoundingClientRect();
    return this.toZ(event.clientX - rect.left, event.clientY - rect.top);
  }

  listen() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      c.setPointerCapture(e.pointerId);
      this.drag = { x: e.clientX, y: e.clientY, moved: false };
      this.moveTo(this.eventZ(e));
    });
    c.addEventListener("pointermove", (e) => {
      if (this.drag && Math.hypot(e.clientX - this.drag.x, e.clientY - this.drag.y) > 4) {
        this.drag.moved = true;
      }
      if (this.drag || e.pointerType === "mouse") this.moveTo(this.eventZ(e));
    });
    c.addEventListener("pointerup", (e) => {
      if (this.drag && !this.drag.moved) this.onPin(this.model, this.eventZ(e));
      this.drag = null;
    });
    c.addEventListener("pointercancel", () => {
      this.drag = null;
    });
    c.addEventListener("keydown", (e) => {
      const b = this.bounds;
      const step = ((b.x1 - b.x0) / 50) * (e.shiftKey ? 5 : 1);
      const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1] };
      if (e.key in moves) {
        e.preventDefault();
        const [x, y] = this.cursor || [0, 0];
        const [dx, dy] = moves[e.key];
        let next = [x + dx * step, y + dy * step];
        if (this.mode === "manifold" && this.manifold) {
          // move by one manifold cell
          const [px, py] = this.uvToPx([x, y]);
          const cell = this.plot().side / MANIFOLD_N * (e.shiftKey ? 4 : 1);
          next = this.toZ(px + dx * cell, py - dy * cell);
        } else {
          next = [Math.min(Math.max(next[0], b.x0), b.x1), Math.min(Math.max(next[1], b.y0), b.y1)];
        }
        this.moveTo(next);
      } else if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        this.onPin(this.model, this.cursor || [0, 0]);
      } else if (e.key === "Delete" || e.key === "Backspace") {
        e.preventDefault();
        this.onUnpin();
      }
    });
    c.addEventListener("focus", () => {
      if (!this.cursor) this.moveTo([0, 0]);
    });
  }

  moveTo(z) {
    // one latent dimension: the probe stays on the axis (v does not change z)
    if (this.proj?.kind === "line" && this.mode !== "manifold") z = [z[0], 0];
    this.cursor = z;
    this.draw();
    this.onProbe(this.model, z);
  }

  draw() {
    const ctx = this.ctx;
    const s = this.size;
    if (!s) return;
    ctx.clearRect(0, 0, s, s);
    if (this.mode === "manifold") this.drawManifold();
    else this.drawPoints();
  }

  drawFrame(ticksX, ticksY, [labelX, labelY]) {
    const ctx = this.ctx;
    const { left, top, side } = this.plot();
    ctx.strokeStyle = "#9aa3ad";
    ctx.lineWidth = 1;
    ctx.strokeRect(left + 0.5, top + 0.5, side - 1, side - 1);
    ctx.fillStyle = "#4a5560";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const [px, text] of ticksX) {
      ctx.fillRect(px, top + side, 1, 4);
      ctx.fillText(text, px, top + side + 6);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const [py, text] of ticksY) {
      ctx.fillRect(left - 4, py, 4, 1);
      ctx.fillText(text, left - 6, py);
    }
    ctx.font = "italic 12px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "alphabetic";
    ctx.fillText(labelX, left + side / 2, top + side + 32);
    ctx.save();
    ctx.translate(12, top + side / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle";
    ctx.fillText(labelY, 0, 0);
    ctx.restore();
  }

  drawPoints() {
    const ctx = this.ctx;
    const { left, top, side } = this.plot();
    const b = this.bounds;
    const step = niceStep(b.x1 - b.x0, 6);
    const ticks = (lo, hi) => {
      const out = [];
      for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(v);
      return out;
    };
    const digits = step >= 1 ? 0 : Math.ceil(-Math.log10(step));
    ctx.fillStyle = "#fff";
    ctx.fillRect(left, top, side, side);
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, side, side);
    ctx.clip();
    // grid
    ctx.strokeStyle = "#eef0f3";
    ctx.lineWidth = 1;
    for (const v of ticks(b.x0, b.x1)) {
      const [px] = this.uvToPx([v, 0]);
      ctx.beginPath();
      ctx.moveTo(Math.round(px) + 0.5, top);
      ctx.lineTo(Math.round(px) + 0.5, top + side);
      ctx.stroke();
    }
    const line = this.proj?.kind === "line"; // one latent dimension: v has no ticks
    for (const v of line ? [0] : ticks(b.y0, b.y1)) {
      const [, py] = this.uvToPx([0, v]);
      ctx.beginPath();
      ctx.moveTo(left, Math.round(py) + 0.5);
      ctx.lineTo(left + side, Math.round(py) + 0.5);
      ctx.stroke();
    }
    // the prior N(0, I): 1- and 2-sigma circles, for reference on both kinds of model (its
    // projection on a plane of orthonormal axes is N(0, I) there too, centred at z = 0's
    // place); with one latent dimension, lines at ±1σ and ±2σ
    const unit = side / (b.x1 - b.x0);
    const [ox, oy] = this.toPx(this.proj ? this.proj.origin.map(() => 0) : [0, 0]);
    ctx.strokeStyle = "#b5bcc4";
    ctx.setLineDash([4, 4]);
    for (const r of [1, 2]) {
      ctx.beginPath();
      if (this.proj?.kind === "line") {
        for (const x of [ox - r * unit, ox + r * unit]) {
          ctx.moveTo(Math.round(x) + 0.5, top);
          ctx.lineTo(Math.round(x) + 0.5, top + side);
        }
      } else {
        ctx.arc(ox, oy, r * unit, 0, 2 * Math.PI);
      }
      ctx.stroke();
    }
    ctx.setLineDash([]);
    // held-out encodings
    if (this.points) {
      const { labels } = this.points;
      const z = this.uv;
      const r = Math.max(1.6, Math.min(3, side / 190));
      // a highlighted digit (legend) is drawn last, on top, the others faded
      const hl = labels ? highlight : null;
      for (const pass of hl === null ? [null] : ["rest", "digit"]) {
        ctx.globalAlpha = pass === "rest" ? 0.12 : 0.75;
        for (let i = 0; i < z.length; i++) {
          if (pass !== null && (labels[i] === hl) !== (pass === "digit")) continue;
          const [px, py] = this.uvToPx(z[i]);
          ctx.fillStyle = labels ? labelColor(labels[i]) : "#5b6670";
          ctx.beginPath();
          ctx.arc(px, py, pass === "digit" ? r * 1.3 : r, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
      ctx.globalAlpha = 1;
    }
    this.drawPins();
    window.analysis?.drawOn(this); // interpolation paths (analysis.js)
    this.drawEncoding(unit);
    this.drawCursor(true);
    ctx.restore();
    const fmtTick = (v) => fmt(v, digits);
    this.drawFrame(
      ticks(b.x0, b.x1).map((v) => [this.uvToPx([v, 0])[0], fmtTick(v)]),
      line ? [] : ticks(b.y0, b.y1).map((v) => [this.uvToPx([0, v])[1], fmtTick(v)]),
      this.axisLabels(),
    );
    if (!this.points) {
      ctx.fillStyle = "#6b7580";
      ctx.font = "13px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("this model ships no held-out encodings", left + side / 2, top + 22);
    }
  }

  drawManifold() {
    const ctx = this.ctx;
    const { left, top, side } = this.plot();
    ctx.fillStyle = "#000";
    ctx.fillRect(left, top, side, side);
    if (!this.manifold) {
      ctx.fillStyle = "#ccc";
      ctx.font = "13px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("decoding 400 points…", left + side / 2, top + side / 2);
      return;
    }
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.manifold.canvas, left, top, side, side);
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, side, side);
    ctx.clip();
    if (this.encoding) {
      const [px, py] = this.toPx(this.encoding.mu || this.encoding.z);
      marker(ctx, px, py, 6, "#fff", ACCENT);
    }
    this.drawCursor(false);
    ctx.restore();
    const cell = side / MANIFOLD_N;
    const idx = [0, 4, 9, 14, 19];
    const axis = this.manifold.zx;
    this.drawFrame(
      idx.map((i) => [left + (i + 0.5) * cell, fmt(axis[i], 2)]),
      idx.map((i) => [top + (MANIFOLD_N - 1 - i + 0.5) * cell, fmt(axis[i], 2)]),
      this.axisLabels(),
    );
  }

  axisLabels() {
    return this.proj ? this.proj.labels : ["z₁", "z₂"];
  }

  drawPins() {
    const ctx = this.ctx;
    for (const pin of this.pins) {
      const [px, py] = this.toPx(pin.z);
      ctx.fillStyle = ACCENT;
      ctx.beginPath();
      ctx.arc(px, py, 8, 0, 2 * Math.PI);
      ctx.fill();
      ctx.fillStyle = "#fff";
      ctx.font = "bold 10px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText(String(pin.id), px, py + 0.5);
    }
  }

  drawEncoding(unit) {
    const e = this.encoding;
    if (!e) return;
    const ctx = this.ctx;
    const center = e.mu || e.z;
    const [px, py] = this.toPx(center);
    if (e.sigma) {
      // sigma along each map axis: sqrt(sum_i a_i^2 sigma_i^2) (the posterior is diagonal);
      // one latent dimension: a flat ellipse along the axis
      const axes = this.proj ? this.proj.axes : [[1, 0], [0, 1]];
      const [su, sv] = axes.map((a) => Math.sqrt(a.reduce((s, x, i) => s + (x * (e.sigma[i] ?? 0)) ** 2, 0)));
      const flat = this.proj?.kind === "line";
      for (const k of [2, 1]) {
        ctx.beginPath();
        ctx.ellipse(px, py, Math.max(k * su * unit, 1), flat ? 4 * k : Math.max(k * sv * unit, 1),
          0, 0, 2 * Math.PI);
        ctx.fillStyle = k === 1 ? "rgba(20, 24, 28, 0.16)" : "rgba(20, 24, 28, 0.07)";
        ctx.fill();
        ctx.strokeStyle = "#14181c";
        ctx.lineWidth = 1.5;
        ctx.setLineDash(k === 2 ? [5, 4] : []);
        ctx.stroke();
      }
      ctx.setLineDash([]);
    }
    marker(ctx, px, py, 6, "#fff", "#14181c");
  }

  drawCursor(cross) {
    if (!this.cursor) return;
    const ctx = this.ctx;
    const { left, top, side } = this.plot();
    const [px, py] = this.uvToPx(this.cursor);
    ctx.strokeStyle = "rgba(214, 51, 108, 0.45)";
    ctx.lineWidth = 1;
    if (cross) {
      ctx.beginPath();
      ctx.moveTo(left, py);
      ctx.lineTo(left + side, py);
      ctx.moveTo(px, top);
      ctx.lineTo(px, top + side);
      ctx.stroke();
    } else {
      const cell = side / MANIFOLD_N;
      ctx.strokeStyle = ACCENT;
      ctx.lineWidth = 2;
      ctx.strokeRect(px - cell / 2, py - cell / 2, cell, cell);
    }
    ctx.strokeStyle = ACCENT;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(px, py, 7, 0, 2 * Math.PI);
    ctx.stroke();
  }
}

function marker(ctx, x, y, r, fill, stroke) {
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.fillStyle = fill;
  ctx.fill();
  ctx.lineWidth = 2.5;
  ctx.strokeStyle = stroke;
  ctx.stroke();
}

// --------------------------------------------------------------- probing

let probeBusy = false;
let probeWanted = null;

function probe(model, xy) {
  state.probe = { model, z: fullZ(model, xy) };
  probeWanted = state.probe;
  showProbeText(model, state.probe.z);
  if (!probeBusy) pumpProbe();
}

// One decode in flight at a time; the newest wish wins (so fast drags never queue up).
async function pumpProbe() {
  probeBusy = true;
  try {
    while (probeWanted) {
      const want = probeWanted;
      probeWanted = null;
      try {
        const blob = await decodePng(want.model, [want.z]);
        if (state.probeImage) URL.revokeObjectURL(state.probeImage);
        state.probeImage = URL.createObjectURL(blob);
        const img = setAspect($("probe-img"), want.model);
        img.src = state.probeImage;
        // over the map where the panel is off-screen
        setAspect($("probe-mini"), want.model).src = state.probeImage;
        img.dataset.z = JSON.stringify(want.z);
        img.dataset.model = want.model;
        img.alt = `${want.model} decoded at z = ${fmtZ(want.z)}`;
        state.decodes += 1;
        showProbeText(want.model, want.z);
      } catch (err) {
        setStatus(`decode: ${err.message}`, true);
      }
    }
  } finally {
    probeBusy = false;
  }
}

function showProbeText(model, z) {
  const el = $("probe-z");
  const name = document.createElement("strong");
  name.textContent = modelLabel(model);
  const vector = document.createElement("span");
  if (z.length <= 2) vector.className = "nowrap"; // longer vectors wrap inside the panel
  vector.textContent = `z = ${fmtZ(z)}`;
  vector.title = z.length > 3 ? `z (${z.length}-D) = ${fmtVec(z)}` : "";
  el.replaceChildren(name, document.createElement("br"), vector);
  const p = projection(model);
  if (p.kind === "plane") {
    const [u, v] = projectZ(model, z, p);
    const where = document.createElement("span");
    where.className = "nowrap";
    where.textContent = `${p.short[0]} ${fmt(u)}, ${p.short[1]} ${fmt(v)}`;
    el.append(document.createElement("br"), where);
  }
}

let pinCounter = 0;

async function pin(model, xy) {
  // the Interpolate view picks path ends instead (analysis.js)
  if (state.view === "interp" && window.analysis) return window.analysis.pick(model, xy);
  const z = fullZ(model, xy);
  pinCounter += 1;
  const entry = { id: pinCounter, model, z, url: null };
  state.pins.push(entry);
  if (state.pins.length > MAX_PINS) {
    const old = state.pins.shift();
    if (old.url) URL.revokeObjectURL(old.url);
  }
  renderPins();
  try {
    entry.url = URL.createObjectURL(await decodePng(model, [z]));
    renderPins();
  } catch (err) {
    setStatus(`decode: ${err.message}`, true);
  }
}

function unpin(id) {
  const i = id === undefined ? state.pins.length - 1 : state.pins.findIndex((p) => p.id === id);
  if (i < 0) return;
  const [old] = state.pins.splice(i, 1);
  if (old.url) URL.revokeObjectURL(old.url);
  renderPins();
}

function renderPins() {
  const list = $("pins");
  list.replaceChildren();
  for (const p of state.pins) {
    const li = document.createElement("li");
    li.className = "pin";
    const img = document.createElement("img");
    img.className = "digit";
    img.width = 56;
    img.height = 56;
    setAspect(img, p.model);
    img.alt = `pin ${p.id}: ${p.model} at z = ${fmtZ(p.z)}`;
    if (p.url) img.src = p.url;
    const text = document.createElement("span");
    text.className = "pin-text";
    const num = document.createElement("b");
    num.textContent = String(p.id);
    text.append(num, ` ${modelLabel(p.model)}`, document.createElement("br"), fmtZ(p.z));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "small remove";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `remove pin ${p.id}`);
    remove.addEventListener("click", () => unpin(p.id));
    li.append(img, text, remove);
    list.append(li);
  }
  $("pins-empty").hidden = state.pins.length > 0;
  $("clear-pins").disabled = state.pins.length === 0;
  for (const map of allMaps()) {
    map.pins = state.pins.filter((p) => p.model === map.model);
    map.draw();
  }
}

// --------------------------------------------------------------- maps and views

let mainMap;
let compareMaps = [];
let highlight = null; // a label picked in the legend, or null

function allMaps() {
  return [mainMap, ...compareMaps];
}

function modelLabel(name) {
  const info = modelInfo(name);
  return info && info.kind !== name ? `${name} (${info.kind.toUpperCase()})` : name.toUpperCase();
}

async function latentPoints(name) {
  if (!state.points.has(name)) {
    const info = modelInfo(name);
    let points = null;
    if (info && info.latent_points) {
      try {
        points = await (await api(`models/${encodeURIComponent(name)}/latent-points`)).json();
      } catch (err) {
        setStatus(`latent points of ${name}: ${err.message}`, true);
      }
    }
    state.points.set(name, points);
  }
  return state.points.get(name);
}

// The manifold: decode a 20x20 grid of z at normal quantiles, in chunks of /decode?format=png
// grids, and copy each cell into one 560x560 canvas (top row = largest z2, like the book).
// The quantiles are map coordinates: with a principal plane, offsets from the points' mean
// along PC1 and PC2. Non-square images sit in square cells (black bars), keeping their shape.
function manifold(name) {
  if (!state.manifolds.has(name)) {
    const build = (async () => {
      const axis = manifoldAxis();
      const [, h, w] = imageShape(name);
      const size = Math.max(h, w);
      const [dx, dy] = [Math.floor((size - w) / 2), Math.floor((size - h) / 2)];
      const cells = [];
      for (let r = 0; r < MANIFOLD_N; r++) {
        for (let c = 0; c < MANIFOLD_N; c++) cells.push({ r, c, z: fullZ(name, [axis[c], axis[MANIFOLD_N - 1 - r]]) });
      }
      const canvas = document.createElement("canvas");
      canvas.width = canvas.height = MANIFOLD_N * size;
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      const chunks = [];
      for (let i = 0; i < cells.length; i += MANIFOLD_CHUNK) chunks.push(cells.slice(i, i + MANIFOLD_CHUNK));
      // One /decode?format=png grid per chunk (ceil(sqrt(n)) columns, 2 px gaps): each cell is
      // copied to its place. A server with a smaller VAE_MAX_BATCH answers 422: halve and retry.
      const decodeCells = async (chunk) => {
        let blob;
        try {
          blob = await decodePng(name, chunk.map((cell) => cell.z));
        } catch (err) {
          if (err.status !== 422 || chunk.length === 1) throw err;
          const half = Math.ceil(chunk.length / 2);
          await Promise.all([decodeCells(chunk.slice(0, half)), decodeCells(chunk.slice(half))]);
          return;
        }
        const grid = await createImageBitmap(blob);
        const cols = Math.ceil(Math.sqrt(chunk.length));
        chunk.forEach((cell, j) => {
          const sx = (j % cols) * (w + 2);
          const sy = Math.floor(j / cols) * (h + 2);
          ctx.drawImage(grid, sx, sy, w, h, cell.c * size + dx, cell.r * size + dy, w, h);
        });
      };
      await Promise.all(chunks.map(decodeCells));
      return { canvas, zx: axis, zy: axis };
    })();
    build.catch(() => state.manifolds.delete(name));
    state.manifolds.set(name, build);
  }
  return state.manifolds.get(name);
}

async function showMainMap() {
  const name = state.model;
  const info = modelInfo(name);
  const points = await latentPoints(name);
  if (name !== state.model) return;
  mainMap.setModel(name, info.kind, points);
  mainMap.encoding = state.encodings.get(name) || null;
  mainMap.pins = state.pins.filter((p) => p.model === name);
  mainMap.mode = state.view === "manifold" ? "manifold" : "points";
  mainMap.manifold = null;
  mainMap.draw();
  // a probe made with another model: decode the same point with this one
  if (state.probe && state.probe.model !== name) {
    mainMap.cursor = projectZ(state.probe.model, state.probe.z);
    probe(name, mainMap.cursor);
  }
  renderLegend(points, info.kind, name);
  const proj = mainMap.proj;
  mainMap.canvas.dataset.projection = proj.kind;
  const [c, h, w] = imageShape(name);
  const things = isDigitModel(name) ? "digits" : "images";
  const count = points ? `${points.z.length} held-out ${things}` : `no held-out ${things}`;
  $("model-info").textContent = [
    info.kind.toUpperCase(),
    `${c === 3 ? "RGB" : "grayscale"} ${w}×${h}`,
    `z_dim ${info.z_dim}`,
    count,
    ...(proj.note ? [proj.note] : []),
  ].join(" · ");
  setInputText(name);
  if (state.view === "manifold") {
    $("map-title").textContent = `Manifold: ${MANIFOLD_N}×${MANIFOLD_N} decodes at z = Φ⁻¹(p)`;
    const where = proj.kind === "plane"
      ? " The grid lies on the principal plane: PC1 and PC2 offsets from the held-out mean."
      : proj.kind === "line" ? " One latent dimension: each column repeats down the grid." : "";
    $("map-hint").textContent = (info.kind === "ae"
      ? "Decoded at normal quantiles, p = 0.05 … 0.95. The plain AE has no prior, so much of " +
        `this grid lies where it never put ${isDigitModel(name) ? "a digit" : "an image"}: compare with its map.`
      : "Decoded at normal quantiles, p = 0.05 … 0.95, so each cell holds equal prior mass. " +
        "Hover or arrow keys to decode a point, click or Enter to pin.") + where;
    try {
      const m = await manifold(name);
      if (name !== state.model || state.view !== "manifold") return;
      mainMap.manifold = m;
      mainMap.draw();
      mainMap.canvas.dataset.ready = "manifold";
    } catch (err) {
      setStatus(`manifold: ${err.message}`, true);
    }
  } else {
    $("map-title").textContent = {
      plane: `The latent space (${info.z_dim}-D) on its principal plane`,
      line: "The latent line (z_dim 1)",
    }[proj.kind] || "The latent plane";
    $("map-hint").textContent = `Held-out ${things}, coloured by label (click a label in the ` +
      "legend to pick it out); dashed: 1σ and 2σ of N(0, I). Hover or drag to decode " +
      "any point, click to pin it; keyboard: arrows move (Shift: faster), Enter pins.";
    mainMap.canvas.dataset.ready = "points";
  }
}

// One VAE and one AE, preferably of the same image shape and z_dim (the same input makes
// sense to both), the active model's kind-mate first.
function comparePair() {
  const same = (a, b) => a.z_dim === b.z_dim &&
    JSON.stringify(imageShape(a.name)) === JSON.stringify(imageShape(b.name));
  const vaes = state.models.filter((m) => m.kind === "vae");
  const aes = state.models.filter((m) => m.kind === "ae");
  const pairs = vaes.flatMap((v) => aes.map((a) => [v, a]));
  if (!pairs.length) return null;
  const score = ([v, a]) => (same(v, a) ? 2 : 0) + (v.name === state.model || a.name === state.model ? 1 : 0);
  const best = pairs.reduce((x, y) => (score(y) > score(x) ? y : x));
  return [best[0].name, best[1].name];
}

async function showCompare() {
  const pair = comparePair();
  if (!pair) return;
  const notes = {
    vae: "the KL term pulls the codes toward N(0, I): centred, unit scale, few gaps",
    ae: "no prior: nothing ties the codes to N(0, I); their place, scale and gaps are " +
      "whatever training left",
  };
  const ids = [["map-a", "cmp-a-name", "cmp-a-note"], ["map-b", "cmp-b-name", "cmp-b-note"]];
  await Promise.all(pair.map(async (name, i) => {
    const info = modelInfo(name);
    $(ids[i][1]).textContent = modelLabel(name);
    $(ids[i][2]).textContent = notes[info.kind];
    const points = await latentPoints(name);
    const map = compareMaps[i];
    map.setModel(name, info.kind, points);
    map.pins = state.pins.filter((p) => p.model === name);
    map.encoding = state.encodings.get(name) || null;
    map.draw();
    if (i === 0) renderLegend(points, "vae", name);
  }));
  $("map-title").textContent = "VAE vs AE, side by side";
  $("map-hint").textContent = "Same digits, two latent spaces; dashed circles: 1σ and 2σ of " +
    "N(0, I). Hover, drag or use the arrow keys on either map to decode with that model.";
  $("model-info").textContent = "";
  compareMaps[0].canvas.dataset.ready = "compare";
  if (state.input) encodeOthers();
}

async function render() {
  const compare = state.view === "compare";
  $("single-view").hidden = compare;
  $("compare-view").hidden = !compare;
  document.body.classList.toggle("comparing", compare);
  if (compare) await showCompare();
  else await showMainMap();
  window.analysis?.onView();
}

// One entry per label present (its class name when the model has label_names), then "you".
function renderLegend(points, kind, name) {
  const legend = $("legend");
  legend.replaceChildren();
  if (!points || !points.labels) return;
  const digits = isDigitModel(name);
  legend.setAttribute("aria-label", `Legend: held-out ${digits ? "digits" : "images"} by label`);
  const counts = new Map();
  for (const l of points.labels) counts.set(l, (counts.get(l) || 0) + 1);
  if (highlight !== null && !counts.has(highlight)) highlight = null;
  [...counts.keys()].sort((a, b) => a - b).forEach((label) => {
    const n = counts.get(label);
    const text = labelName(name, label);
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "legend-item";
    button.dataset.label = String(label);
    button.setAttribute("aria-pressed", String(highlight === label));
    button.title = digits
      ? `${n} held-out ${text}s: click to highlight them`
      : `${n} held-out images labelled ${text}${text !== String(label) ? ` (label ${label})` : ""}: click to highlight them`;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.backgroundColor = labelColor(label);
    button.append(sw, text);
    button.addEventListener("click", () => {
      highlight = highlight === label ? null : label;
      for (const b of legend.querySelectorAll(".legend-item")) {
        b.setAttribute("aria-pressed", String(b === button && highlight !== null));
      }
      for (const map of allMaps()) map.draw();
    });
    li.append(button);
    legend.append(li);
  });
  const you = document.createElement("li");
  you.className = "you";
  const sw = document.createElement("span");
  sw.className = "swatch ring";
  const yours = digits ? "your digit" : "your image";
  you.append(sw, kind === "ae" ? `${yours} (z)` : `${yours} (μ, 1σ and 2σ)`);
  legend.append(you);
}

// --------------------------------------------------------------- input: pad, upload

const pad = { ctx: null, drawing: false, last: null, dirty: false, timer: null };

function clearPad() {
  pad.ctx.fillStyle = "#000";
  pad.ctx.fillRect(0, 0, PAD_SIZE, PAD_SIZE);
  pad.dirty = false;
  $("pad-hint").hidden = false;
}

function padPoint(e) {
  const canvas = $("draw");
  const rect = canvas.getBoundingClientRect();
  return [((e.clientX - rect.left) / rect.width) * PAD_SIZE, ((e.clientY - rect.top) / rect.height) * PAD_SIZE];
}

function stroke(from, to) {
  const ctx = pad.ctx;
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = PAD_LINE;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from[0], from[1]);
  ctx.lineTo(to[0], to[1]);
  ctx.stroke();
  pad.dirty = true;
  $("pad-hint").hidden = true;
}

function setupPad() {
  const canvas = $("draw");
  pad.ctx = canvas.getContext("2d");
  clearPad();
  canvas.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    clearTimeout(pad.timer);
    pad.drawing = true;
    pad.last = padPoint(e);
    stroke(pad.last, pad.last);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!pad.drawing) return;
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
    for (const ev of events.length ? events : [e]) {
      const p = padPoint(ev);
      stroke(pad.last, p);
      pad.last = p;
    }
  });
  const end = () => {
    if (!pad.drawing) return;
    pad.drawing = false;
    clearTimeout(pad.timer);
    pad.timer = setTimeout(submitPad, 250); // lets a second stroke start first
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    if (file) useFile(file);
  });
  $("file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) useFile(file);
    e.target.value = "";
  });
  $("clear").addEventListener("click", () => {
    clearTimeout(pad.timer);
    clearPad();
    clearInput();
  });
  $("example").addEventListener("click", drawExample);
}

function padBlob() {
  return new Promise((resolve) => $("draw").toBlob(resolve, "image/png"));
}

async function submitPad() {
  if (!pad.dirty) return;
  await sendInput(await padBlob());
}

async function useFile(file) {
  // Show it on the pad (fitted, on black), but send the file's own bytes.
  try {
    const bitmap = await createImageBitmap(file);
    clearPad();
    const k = Math.min(PAD_SIZE / bitmap.width, PAD_SIZE / bitmap.height);
    const w = bitmap.width * k;
    const h = bitmap.height * k;
    pad.ctx.drawImage(bitmap, (PAD_SIZE - w) / 2, (PAD_SIZE - h) / 2, w, h);
    pad.dirty = true;
    $("pad-hint").hidden = true;
  } catch {
    /* the browser cannot show it; the service may still read it (e.g. TIFF) */
  }
  await sendInput(file);
}

// Example strokes (in pad units), for a quick start and for keyboard users.
const EXAMPLES = [
  [[[95, 60], [190, 60], [120, 225]], [[115, 140], [175, 140]]], // 7
  [[[140, 50], [140, 230]]], // 1
  Array.of(Array.from({ length: 33 }, (_, i) => {
    const t = (i / 32) * 2 * Math.PI;
    return [140 + 55 * Math.sin(t), 140 - 85 * Math.cos(t)];
  })), // 0
  [[[95, 80], [120, 55], [165, 55], [185, 85], [170, 125], [120, 225], [195, 225]]], // 2
];
let exampleIndex = 0;

function drawExample() {
  clearTimeout(pad.timer);
  clearPad();
  for (const line of EXAMPLES[exampleIndex % EXAMPLES.length]) {
    for (let i = 0; i < line.length; i++) stroke(line[Math.max(i - 1, 0)], line[i]);
  }
  exampleIndex += 1;
  submitPad();
}

function clearInput() {
  state.input = null;
  state.inputBase64 = null;
  state.result = null;
  state.encodings.clear();
  $("result").hidden = true;
  window.analysis?.onClear();
  for (const map of allMaps()) {
    map.encoding = null;
    map.draw();
  }
}

function encodingOf(json) {
  if (json.mu) return { mu: json.mu, sigma: json.log_var.map((v) => Math.exp(0.5 * v)), log_var: json.log_var };
  return { z: json.z };
}

// Send `blob` (its exact bytes) to /reconstruct with the active model. `fresh`: a new input,
// so the other models' encodings are stale; false when only the model changed.
async function sendInput(blob, { fresh = true } = {}) {
  const model = state.model;
  const ticket = ++state.requests;
  state.input = blob;
  state.inputBase64 = await blobToBase64(blob);
  if (fresh) state.encodings.clear();
  setStatus("encoding…");
  let json;
  try {
    const response = await api(`reconstruct?${query({ model, format: "json", scale: 1 })}`, {
      method: "POST",
      body: imageForm(blob),
    });
    json = await response.json();
  } catch (err) {
    if (ticket === state.requests) {
      setStatus(err.message, true);
      clearInputView();
    }
    return;
  }
  if (ticket !== state.requests || model !== state.model) return;
  state.result = json;
  // /reconstruct decodes from mu (VAE) or the code (AE): that is the point on the map
  state.encodings.set(model, json.mu ? encodingOf(json) : { z: json.z[0] });
  showResult(json);
  setStatus("");
  updateEncodingMarks();
  if (state.view === "compare") encodeOthers();
}

function clearInputView() {
  $("result").hidden = true;
  window.analysis?.onClear();
  state.encodings.clear();
  updateEncodingMarks();
}

// The input's place on the other models' maps (compare view): plain /encode.
async function encodeOthers() {
  const ticket = state.requests;
  const blob = state.input;
  for (const info of state.models) {
    if (state.encodings.has(info.name)) continue;
    try {
      const response = await api(`encode?${query({ model: info.name })}`, { method: "POST", body: imageForm(blob) });
      const json = await response.json();
      if (ticket !== state.requests) return;
      state.encodings.set(info.name, encodingOf(json));
    } catch (err) {
      setStatus(`encode (${info.name}): ${err.message}`, true);
    }
  }
  updateEncodingMarks();
}

function updateEncodingMarks() {
  for (const map of allMaps()) {
    map.encoding = state.encodings.get(map.model) || null;
    map.draw();
  }
}

// The input panel's words for the active model: digits for the book's models, images else.
function setInputText(name) {
  const [c, h, w] = imageShape(name);
  const digits = isDigitModel(name);
  $("input-title").textContent = digits ? "Draw a digit" : "Draw or drop an image";
  $("seen-size").textContent = `${w}×${h}${c === 3 ? " RGB" : ""}, preprocessed`;
  $("seen").alt = `the ${w} by ${h} ${c === 3 ? "colour " : ""}image the model sees`;
}

// A latent vector in full up to 16 numbers; longer ones shortened (all of it in the title).
function showVector(el, v) {
  el.textContent = v.length <= 16 ? fmtVec(v, 3) : fmtZ(v, 3);
  el.title = v.length <= 16 ? "" : fmtVec(v, 3);
}

function showResult(json) {
  $("result").hidden = false;
  const model = json.model || state.model;
  setAspect($("seen"), model).src = `data:image/png;base64,${json.input}`;
  setAspect($("recon"), model).src = `data:image/png;base64,${json.images[0]}`;
  setAspect($("errmap"), model);
  $("mse").textContent = `MSE ${json.mse.toFixed(4)}`;
  const vae = Boolean(json.mu);
  $("mu-label").textContent = vae ? "μ" : "z";
  showVector($("mu"), vae ? json.mu : json.z[0]);
  $("sigma-label").hidden = !vae;
  $("sigma").hidden = !vae;
  if (vae) showVector($("sigma"), json.log_var.map((v) => Math.exp(0.5 * v)));
  $("result-note").textContent = vae
    ? "The encoder gives a distribution, N(μ, σ²); the reconstruction is decoded from μ."
    : "A plain autoencoder maps the image to one point z, with no uncertainty.";
  window.analysis?.onResult(json); // log p(x), typicality, error map (analysis.js)
}

// --------------------------------------------------------------- samples

let sampleUrl = null;

async function sample(event) {
  event.preventDefault();
  const form = $("sample-form");
  if (!form.reportValidity()) return;
  const params = {
    model: state.model,
    n: $("sample-n").value,
    seed: $("sample-seed").value,
    temperature: $("sample-t").value,
    format: "png",
    scale: 2,
  };
  $("sample-go").disabled = true;
  try {
    const response = await api(`sample?${query(params)}`);
    const blob = await response.blob();
    if (sampleUrl) URL.revokeObjectURL(sampleUrl);
    sampleUrl = URL.createObjectURL(blob);
    const img = $("samples");
    img.src = sampleUrl;
    img.hidden = false;
    img.alt = `${params.n} samples from ${params.model}`;
    img.dataset.query = query(params);
    $("sample-note").textContent = response.headers.get("X-Note") || "";
  } catch (err) {
    setStatus(`sample: ${err.message}`, true);
  } finally {
    $("sample-go").disabled = false;
  }
}

// --------------------------------------------------------------- start

function buildModelSwitch(list) {
  const box = $("model-switch");
  box.querySelector(".loading-note")?.remove();
  // the default model first, then the others as listed
  const ordered = [...list.models].sort((a, b) => (b.name === list.default) - (a.name === list.default));
  for (const info of ordered) {
    const input = document.createElement("input");
    input.type = "radio";
    input.name = "model";
    input.id = `model-${info.name}`;
    input.value = info.name;
    input.checked = info.name === state.model;
    const label = document.createElement("label");
    label.htmlFor = input.id;
    label.textContent = modelLabel(info.name);
    const [c, h, w] = imageShape(info.name);
    label.title = `${info.kind.toUpperCase()} · ${c === 3 ? "RGB" : "grayscale"} ${w}×${h} · z_dim ${info.z_dim}`;
    box.append(input, label);
    input.addEventListener("change", () => switchModel(info.name));
  }
}

async function switchModel(name) {
  state.model = name;
  $("samples").hidden = true;
  $("sample-note").textContent = "";
  if (state.input) sendInput(state.input, { fresh: false });
  await render();
}

async function start() {
  mainMap = new LatentMap($("map"), { onProbe: probe, onPin: pin, onUnpin: () => unpin() });
  compareMaps = [$("map-a"), $("map-b")].map(
    (c) => new LatentMap(c, { onProbe: probe, onPin: pin, onUnpin: () => unpin() }),
  );
  setupPad();
  $("sample-form").addEventListener("submit", sample);
  $("clear-pins").addEventListener("click", () => {
    while (state.pins.length) unpin();
  });
  for (const input of document.querySelectorAll("input[name=view]")) {
    input.addEventListener("change", () => {
      state.view = input.value;
      render();
    });
  }
  let list;
  try {
    list = await (await api("models")).json();
  } catch (err) {
    setStatus(`cannot load the models: ${err.message}`, true);
    return;
  }
  state.models = list.models;
  state.model = list.default;
  if (!state.models.some((m) => isDigitModel(m.name))) {
    $("tagline").textContent = "Variational autoencoders and plain autoencoders served by this " +
      "service: draw or drop an image, see where each model puts it in its latent space.";
  }
  buildModelSwitch(list);
  if (!comparePair()) {
    const radio = $("view-compare");
    radio.disabled = true;
    radio.nextElementSibling.title = "needs one VAE and one AE model";
  }
  await render();
  document.body.dataset.ready = "true";
}

window.explorer = {
  state,
  normPpf,
  normCdf,
  manifoldAxis,
  maps: () => allMaps(),
  probeIdle: () => !probeBusy && !probeWanted,
};
start();
