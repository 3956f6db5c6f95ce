// The Interpolate view (the book's analysis): POST /interpolate, linear and slerp side by
// side, both paths drawn on the latent map; the ends are map clicks or the drawn digit.

import { api, imageForm, query } from "./api.js";
import { addOverlay, maps, marker } from "./map.js";
import { fullZ, projectZ } from "./projection.js";
import { isDigitModel, setAspect, state } from "./state.js";
import { $, ACCENT, fmt, fmtZ, setStatus } from "./util.js";

const SLERP_COLOR = "#1c7ed6";
const STRIP_SCALE = 2;

// An end of the path: {kind: "point", z, model} (a map click) or {kind: "image", blob, z,
// model} (the digit on the pad; z: its mean under `model`, null until known).
export const interp = { a: null, b: null, next: "a", result: null, ticket: 0, requests: 0 };

function describe(end) {
  if (!end) return null;
  const z = end.z ? fmtZ(end.z) : "";
  return end.kind === "image" ? `your ${isDigitModel(end.model) ? "digit" : "image"} ${z}` : z;
}

function renderEnds() {
  $("interp-a").textContent = describe(interp.a) || "click the map";
  $("interp-b").textContent = describe(interp.b) || (interp.a ? "now click B" : "then click again");
}

function setEnd(which, end) {
  interp[which] = end;
  interp.next = which === "a" ? "b" : "a";
  interp.result = null;
  renderEnds();
  clearStrips();
  maps.main.draw();
  request();
}

export function pick(model, xy) {
  // a third click starts a new path
  if (interp.a && interp.b && interp.next === "a") interp.b = null;
  setEnd(interp.next, { kind: "point", z: fullZ(model, xy), model });
}

function fromDigit(which) {
  if (!state.input) {
    setStatus(`draw or upload ${isDigitModel(state.model) ? "a digit" : "an image"} first`);
    return;
  }
  const enc = state.encodings.get(state.model);
  setEnd(which, { kind: "image", blob: state.input, z: enc ? enc.mu || enc.z : null, model: state.model });
}

async function meanOf(end, model) {
  // a point picked on another model's map: the same map point (u, v) in this model's space
  if (end.kind === "point") return end.model === model ? end.z : fullZ(model, projectZ(end.model, end.z));
  if (end.model === model && end.z) return end.z;
  const json = await (await api(`encode?${query({ model })}`, { method: "POST", body: imageForm(end.blob) })).json();
  end.model = model;
  end.z = json.mu || json.z;
  return end.z;
}

// Both ends drawn digits: send the images (multipart start, end); otherwise two vectors.
async function body(model) {
  const { a, b } = interp;
  if (a.kind === "image" && b.kind === "image") {
    const form = new FormData();
    form.append("start", a.blob, "start.png");
    form.append("end", b.blob, "end.png");
    return { body: form };
  }
  const [start, end] = await Promise.all([meanOf(a, model), meanOf(b, model)]);
  return { headers: { "Content-Type": "application/json" }, body: JSON.stringify({ start, end }) };
}

function steps() {
  const n = Math.round(Number($("interp-steps").value));
  return Number.isFinite(n) ? Math.min(64, Math.max(2, n)) : 10;
}

export async function request() {
  if (state.view !== "interp" || !interp.a || !interp.b) return;
  const ticket = ++interp.ticket;
  const model = state.model;
  const n = steps();
  $("interp-note").textContent = "decoding the paths…";
  try {
    const answers = await Promise.all(["linear", "slerp"].map(async (method) => {
      const params = query({ model, method, steps: n, format: "json", scale: STRIP_SCALE });
      interp.requests += 1;
      const response = await api(`interpolate?${params}`, { method: "POST", ...(await body(model)) });
      return response.json();
    }));
    if (ticket !== interp.ticket || model !== state.model || state.view !== "interp") return;
    const [linear, slerp] = answers;
    interp.result = { model, steps: n, linear, slerp };
    for (const end of [interp.a, interp.b]) if (end.kind === "image") end.model = model;
    interp.a.z = linear.z[0];
    interp.b.z = linear.z.at(-1);
    renderEnds();
    renderStrips();
    maps.main.draw();
    maps.main.canvas.dataset.ready = "interp";
  } catch (err) {
    if (ticket === interp.ticket) {
      $("interp-note").textContent = "";
      setStatus(`interpolate: ${err.message}`, true);
    }
  }
}

function clearStrips() {
  $("strip-linear").replaceChildren();
  $("strip-slerp").replaceChildren();
  $("interp-note").textContent = "";
}

function renderStrips() {
  const { linear, slerp, steps: n } = interp.result;
  for (const [id, answer] of [["strip-linear", linear], ["strip-slerp", slerp]]) {
    const strip = $(id);
    strip.style.setProperty("--steps", String(n));
    strip.replaceChildren(...answer.images.map((b64, i) => {
      const img = setAspect(document.createElement("img"), interp.result.model);
      img.className = "digit cell";
      img.src = `data:image/png;base64,${b64}`;
      img.alt = `${answer.used} step ${i + 1} of ${n}: z = ${fmtZ(answer.z[i])}`;
      img.title = `t = ${fmt(answer.t[i], 2)}, |z| = ${fmt(answer.norms[i], 2)}`;
      return img;
    }));
  }
  const norms = (answer) => `|z| ${fmt(Math.min(...answer.norms))}–${fmt(Math.max(...answer.norms))}`;
  const parts = [`${n} steps; linear ${norms(linear)}, slerp ${norms(slerp)}.`];
  if (slerp.note) parts.push(slerp.note + ".");
  if (linear.endpoints === "images") parts.push("Both ends are your digits, encoded by the service (multipart).");
  $("interp-note").textContent = parts.join(" ");
}

// The paths on the main map (called from LatentMap.drawPoints, inside its clip).
function drawOn(map) {
  if (state.view !== "interp" || map !== maps.main) return;
  const ctx = map.ctx;
  const result = interp.result && interp.result.model === map.model ? interp.result : null;
  if (result) {
    for (const [answer, color, dash] of [[result.linear, ACCENT, []], [result.slerp, SLERP_COLOR, [6, 4]]]) {
      const points = answer.z.map((z) => map.toPx(z));
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.setLineDash(dash);
      ctx.beginPath();
      points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = color;
      for (const [x, y] of points.slice(1, -1)) {
        ctx.beginPath();
        ctx.arc(x, y, 3.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
  }
  for (const [end, label] of [[interp.a, "A"], [interp.b, "B"]]) {
    if (!end || !end.z) continue;
    const [x, y] = map.toPx(end.z);
    marker(ctx, x, y, 9, "#14181c", "#fff");
    ctx.fillStyle = "#fff";
    ctx.font = "bold 11px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(label, x, y + 0.5);
  }
}

export function onView() {
  const on = state.view === "interp";
  $("interp").hidden = !on;
  document.body.classList.toggle("interpolating", on);
  if (!on) return;
  $("map-title").textContent = "Interpolation between two points";
  $("map-hint").textContent = "Click the map for A, again for B (or use your digit for either), " +
    "and see both paths decoded: linear (solid) and spherical (dashed), which keeps |z| between " +
    "|A| and |B| instead of cutting toward the origin.";
  if (interp.a && interp.b && (!interp.result || interp.result.model !== state.model)) request();
  else maps.main.canvas.dataset.ready = interp.result ? "interp" : "points";
}

// Wires the view's controls (called once by app.js).
export function setupInterpolate() {
  $("interp-from-a").addEventListener("click", () => fromDigit("a"));
  $("interp-from-b").addEventListener("click", () => fromDigit("b"));
  $("interp-clear").addEventListener("click", () => {
    interp.a = interp.b = interp.result = null;
    interp.next = "a";
    interp.ticket += 1;
    renderEnds();
    clearStrips();
    maps.main.draw();
  });
  $("interp-steps").addEventListener("change", () => request());
  addOverlay("over", drawOn);
}
