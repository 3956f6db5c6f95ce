// The latent-space explorer: plain JavaScript modules on top of the service's own API, no build
// step, no dependencies, no external requests. This entry module wires the panels (js/*.js)
// together; `window.explorer` exposes the state for the browser tests.

import { api } from "./js/api.js";
import { classes, setupClasses, showClassControls } from "./js/classes.js";
import { sendInput, setupPad } from "./js/input.js";
import { interp, request as requestInterpolation, setupInterpolate } from "./js/interpolate.js";
import { manifoldAxis } from "./js/manifold.js";
import { allMaps, LatentMap, maps } from "./js/map.js";
import { normCdf, normPpf } from "./js/normal.js";
import { setupPriors } from "./js/priors.js";
import { pin, probe, probeIdle, unpin } from "./js/probe.js";
import { setupSample, showSampleControls } from "./js/sample.js";
import { scores } from "./js/score.js";
import { imageShape, isDigitModel, modelLabel, state } from "./js/state.js";
import { $, setStatus } from "./js/util.js";
import { comparePair, render } from "./js/views.js";

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
  showSampleControls();
  showClassControls();
  if (state.input) sendInput(state.input, { fresh: false });
  await render();
}

async function start() {
  maps.main = new LatentMap($("map"), { onProbe: probe, onPin: pin, onUnpin: () => unpin() });
  maps.compare = [$("map-a"), $("map-b")].map(
    (c) => new LatentMap(c, { onProbe: probe, onPin: pin, onUnpin: () => unpin() }),
  );
  setupPad();
  setupInterpolate();
  setupPriors();
  setupSample();
  setupClasses();
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
  showSampleControls();
  showClassControls();
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
  probeIdle,
  analysis: { interp, scores, request: requestInterpolation },
  classes,
};
start();
