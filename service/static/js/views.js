// The views of the map panel: the latent map and the manifold (the main map), VAE vs AE (two
// maps side by side), the legend, and each model's latent points (fetched once).

import { api } from "./api.js";
import { encodeOthers, setInputText } from "./input.js";
import { onView as onInterpolateView } from "./interpolate.js";
import { MANIFOLD_N, manifold } from "./manifold.js";
import { allMaps, maps } from "./map.js";
import { updatePriorToggle } from "./priors.js";
import { probe } from "./probe.js";
import { projectZ } from "./projection.js";
import { imageShape, isDigitModel, labelName, modelInfo, modelLabel, state } from "./state.js";
import { $, labelColor, setStatus } from "./util.js";

export async function latentPoints(name) {
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

async function showMainMap() {
  const name = state.model;
  const info = modelInfo(name);
  const points = await latentPoints(name);
  if (name !== state.model) return;
  maps.main.setModel(name, info.kind, points);
  maps.main.encoding = state.encodings.get(name) || null;
  maps.main.pins = state.pins.filter((p) => p.model === name);
  maps.main.mode = state.view === "manifold" ? "manifold" : "points";
  maps.main.manifold = null;
  maps.main.draw();
  // a probe made with another model: decode the same point with this one
  if (state.probe && state.probe.model !== name) {
    maps.main.cursor = projectZ(state.probe.model, state.probe.z);
    probe(name, maps.main.cursor);
  }
  renderLegend(points, info.kind, name);
  const proj = maps.main.proj;
  maps.main.canvas.dataset.projection = proj.kind;
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
      maps.main.manifold = m;
      maps.main.draw();
      maps.main.canvas.dataset.ready = "manifold";
    } catch (err) {
      setStatus(`manifold: ${err.message}`, true);
    }
  } else {
    $("map-title").textContent = {
      plane: `The latent space (${info.z_dim}-D) on its principal plane`,
      line: "The latent line (z_dim 1)",
    }[proj.kind] || "The latent plane";
    $("map-hint").textContent = `Held-out ${things}, coloured by label (click a label in the ` +
      "legend to pick it out); grey dashed circles: 1σ and 2σ of N(0, I). Hover or drag to decode " +
      "any point, click to pin it; keyboard: arrows move (Shift: faster), Enter pins.";
    maps.main.canvas.dataset.ready = "points";
  }
}

// One VAE and one AE, preferably of the same image shape and z_dim (the same input makes
// sense to both), the active model's kind-mate first.
export function comparePair() {
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
    const map = maps.compare[i];
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
  maps.compare[0].canvas.dataset.ready = "compare";
  if (state.input) encodeOthers();
}

export async function render() {
  const compare = state.view === "compare";
  $("single-view").hidden = compare;
  $("compare-view").hidden = !compare;
  document.body.classList.toggle("comparing", compare);
  if (compare) await showCompare();
  else await showMainMap();
  onInterpolateView();
  updatePriorToggle();
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
  if (state.highlight !== null && !counts.has(state.highlight)) state.highlight = null;
  [...counts.keys()].sort((a, b) => a - b).forEach((label) => {
    const n = counts.get(label);
    const text = labelName(name, label);
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "legend-item";
    button.dataset.label = String(label);
    button.setAttribute("aria-pressed", String(state.highlight === label));
    button.title = digits
      ? `${n} held-out ${text}s: click to highlight them`
      : `${n} held-out images labelled ${text}${text !== String(label) ? ` (label ${label})` : ""}: click to highlight them`;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.backgroundColor = labelColor(label);
    button.append(sw, text);
    button.addEventListener("click", () => {
      state.highlight = state.highlight === label ? null : label;
      for (const b of legend.querySelectorAll(".legend-item")) {
        b.setAttribute("aria-pressed", String(b === button && state.highlight !== null));
      }
      for (const map of allMaps()) map.draw();
      updatePriorToggle(); // the picked label's own fit, where there is one
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
