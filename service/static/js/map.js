// The latent map: a canvas that draws a model's held-out encodings (or the manifold) in map
// coordinates, with axes, the prior's circles, pins, the input's encoding and the probe cursor,
// and turns pointer and keyboard input into probes and pins. Other panels draw on it through
// addOverlay().

import { MANIFOLD_N, MANIFOLD_P } from "./manifold.js";
import { normCdf, normPpf } from "./normal.js";
import { projection, projectZ } from "./projection.js";
import { state } from "./state.js";
import { ACCENT, fmt, labelColor } from "./util.js";

// The page's maps: the main one and the two of the VAE vs AE view (set up by app.js).
export const maps = { main: null, compare: [] };
export const allMaps = () => [maps.main, ...maps.compare];

// Extra drawing on the points view, inside the plot's clip: `points` right after the held-out
// points, `over` after the pins.
const overlays = { points: [], over: [] };
export function addOverlay(layer, draw) {
  overlays[layer].push(draw);
}

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

export class LatentMap {
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
      const hl = labels ? state.highlight : null;
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
    for (const draw of overlays.points) draw(this); // e.g. the fitted prior (priors.js)
    this.drawPins();
    for (const draw of overlays.over) draw(this); // e.g. interpolation paths (interpolate.js)
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

export function marker(ctx, x, y, r, fill, stroke) {
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.fillStyle = fill;
  ctx.fill();
  ctx.lineWidth = 2.5;
  ctx.strokeStyle = stroke;
  ctx.stroke();
}
