// The "sample by class" panel: GET /sample?per_label=K&format=json, K samples from each class's
// own fitted mixture, one row per class in label order (the book's per-digit figure), each
// row with its class name and its share of the training data.

import { api, query } from "./api.js";
import { hasFitted, hasPerLabel } from "./priors.js";
import { isDigitModel, setAspect, state } from "./state.js";
import { $, fmt, labelColor, setStatus } from "./util.js";

const SCALE = 2;

export const classes = { result: null, ticket: 0 }; // the last answer shown (for the tests)

// A model's panel: the form enabled where the model has per-class fits, else the reason.
export function showClassControls() {
  const name = state.model;
  const ok = hasPerLabel(name);
  for (const el of $("class-form").elements) el.disabled = !ok;
  $("class-reason").textContent = ok ? "" : hasFitted(name)
    ? "This model's fitted prior has no per-class fits (its training data had no labels)."
    : "This model has no fitted prior, so no per-class fits to sample from.";
  $("class-panel").classList.toggle("unavailable", !ok);
  delete $("class-panel").dataset.ready;
  classes.ticket += 1;
  classes.result = null;
  $("class-rows").replaceChildren();
  $("class-note").textContent = ok
    ? "One row per class, each from that class's own fitted mixture: press Sample."
    : "";
}

function row(answer, entry) {
  const tr = document.createElement("div");
  tr.className = "class-row";
  tr.setAttribute("role", "row");
  tr.dataset.label = String(entry.label);
  const head = document.createElement("div");
  head.className = "class-name";
  head.setAttribute("role", "rowheader");
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.backgroundColor = labelColor(entry.label);
  const name = document.createElement("b");
  name.textContent = entry.name;
  const share = document.createElement("small");
  share.textContent = `${fmt(100 * entry.share, 1)}%`;
  share.title = "its share of the training data";
  head.append(swatch, name, share);
  const cells = document.createElement("div");
  cells.className = "class-cells";
  cells.setAttribute("role", "cell");
  cells.style.setProperty("--k", String(entry.images.length));
  cells.append(...entry.images.map((b64, i) => {
    const img = setAspect(document.createElement("img"), answer.model);
    img.className = "digit cell";
    img.src = `data:image/png;base64,${b64}`;
    img.alt = `${entry.name}, sample ${i + 1}`;
    return img;
  }));
  tr.append(head, cells);
  return tr;
}

async function sampleClasses(event) {
  event.preventDefault();
  if (!$("class-form").reportValidity()) return;
  const params = {
    model: state.model,
    per_label: $("class-k").value,
    seed: $("class-seed").value,
    temperature: $("class-t").value,
    format: "json",
    scale: SCALE,
  };
  const ticket = ++classes.ticket;
  $("class-go").disabled = true;
  try {
    const response = await api(`sample?${query(params)}`);
    const answer = await response.json();
    if (ticket !== classes.ticket || answer.model !== state.model) return;
    classes.result = answer;
    $("class-rows").replaceChildren(...answer.labels.map((entry) => row(answer, entry)));
    const things = isDigitModel(answer.model) ? "digit" : "class";
    $("class-note").textContent = `${params.per_label} per ${things} from each ${things}'s own ` +
      `fitted mixture (X-Prior: ${response.headers.get("X-Prior") || answer.prior}), seed ` +
      `${params.seed === "" ? "random" : params.seed}, T = ${params.temperature}.`;
    $("class-panel").dataset.ready = "true";
  } catch (err) {
    if (ticket === classes.ticket) setStatus(`sample by class: ${err.message}`, true);
  } finally {
    $("class-go").disabled = !hasPerLabel(state.model);
  }
}

// Wires the form (called once by app.js).
export function setupClasses() {
  $("class-form").addEventListener("submit", sampleClasses);
}
