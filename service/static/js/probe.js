// The decoded point (the probe under the pointer, one /decode in flight at a time) and the
// pinned points.

import { decodePng } from "./api.js";
import { pick as pickEnd } from "./interpolate.js";
import { allMaps } from "./map.js";
import { fullZ, projection, projectZ } from "./projection.js";
import { modelLabel, setAspect, state } from "./state.js";
import { $, fmt, fmtVec, fmtZ, setStatus } from "./util.js";

const MAX_PINS = 12;

let probeBusy = false;
let probeWanted = null;

export function probe(model, xy) {
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

export async function pin(model, xy) {
  // the Interpolate view picks path ends instead (interpolate.js)
  if (state.view === "interp") return pickEnd(model, xy);
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

export function unpin(id) {
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

// True when no decode is in flight or wanted (for the browser tests).
export const probeIdle = () => !probeBusy && !probeWanted;
