// The input panel: the drawing pad, uploads and drops, the example digits, and the input's
// reconstruction and encoding (POST /reconstruct, /encode for the other models' maps).

import { api, blobToBase64, imageForm, query } from "./api.js";
import { allMaps } from "./map.js";
import { onClear as onScoreClear, onResult as onScoreResult } from "./score.js";
import { imageShape, isDigitModel, setAspect, state } from "./state.js";
import { $, fmtVec, fmtZ, setStatus } from "./util.js";

const PAD_SIZE = 280;
const PAD_LINE = 22;

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

export function setupPad() {
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
  onScoreClear();
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
export async function sendInput(blob, { fresh = true } = {}) {
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
  onScoreClear();
  state.encodings.clear();
  updateEncodingMarks();
}

// The input's place on the other models' maps (compare view): plain /encode.
export async function encodeOthers() {
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
export function setInputText(name) {
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
  onScoreResult(json); // log p(x), typicality, error map (score.js)
}
