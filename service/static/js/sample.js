// The sample panel: GET /sample as a PNG grid, from N(0, T²I) or the model's fitted prior (the
// picker), of any class or one (label=, which samples that class's own fit).

import { api, query } from "./api.js";
import { hasFitted, hasPerLabel, priorsOf } from "./priors.js";
import { state } from "./state.js";
import { $, setStatus } from "./util.js";

let sampleUrl = null;

const chosenPrior = () => document.querySelector("input[name=prior]:checked")?.value || "normal";

function setPrior(value) {
  $(value === "fitted" ? "prior-fitted" : "prior-normal").checked = true;
}

// The heading and the note say what the next request draws from.
function describe() {
  const name = state.model;
  const label = $("sample-label").value;
  const fitted = chosenPrior() === "fitted";
  const option = $("sample-label").selectedOptions[0];
  $("sample-title").textContent = label !== ""
    ? `Sample class ${option.textContent}`
    : fitted ? "Sample z ~ fitted prior" : "Sample z ~ N(0, T²I)";
  const priors = priorsOf(name);
  const parts = [];
  if (!hasFitted(name)) {
    parts.push("This model has no fitted prior: N(0, T²I) only, and no sampling by class.");
  } else {
    if (fitted) {
      parts.push("z from the Gaussian mixture fitted to the training encodings; T scales each " +
        "component's spread.");
    }
    if (priors.default === "fitted" && !fitted) parts.push("(The fitted prior is this model's default.)");
    if (!hasPerLabel(name)) parts.push("Its prior has no per-class fits: no sampling by class.");
  }
  $("prior-note").textContent = parts.join(" ");
}

// A model's controls: the prior it samples by default, its classes, what it cannot do
// (disabled, with the reason as the control's title and in the note).
export function showSampleControls() {
  const name = state.model;
  const priors = priorsOf(name);
  const fitted = hasFitted(name);
  const radio = $("prior-fitted");
  radio.disabled = !fitted;
  radio.nextElementSibling.title = fitted
    ? "z from the mixture fitted to the training encodings"
    : "this model has no fitted prior";
  setPrior(fitted ? priors.default : "normal");
  const select = $("sample-label");
  select.replaceChildren(new Option("any", ""));
  for (const l of hasPerLabel(name) ? priors.labels : []) {
    const option = new Option(String(l.name), String(l.label));
    option.title = `${(100 * l.share).toFixed(1)}% of the training data`;
    select.append(option);
  }
  select.disabled = !hasPerLabel(name);
  select.title = select.disabled ? "needs a fitted prior with per-class fits" : "sample one class's own fit";
  describe();
}

async function sample(event) {
  event.preventDefault();
  const form = $("sample-form");
  if (!form.reportValidity()) return;
  const label = $("sample-label").value;
  const params = {
    model: state.model,
    n: $("sample-n").value,
    seed: $("sample-seed").value,
    temperature: $("sample-t").value,
    prior: chosenPrior(),
    label,
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
    const from = response.headers.get("X-Prior") || params.prior;
    const what = label !== "" ? ` of class ${$("sample-label").selectedOptions[0].textContent}` : "";
    img.alt = `${params.n} samples${what} from ${params.model}, z from the ${from === "fitted" ? "fitted prior" : "N(0, T²I)"}`;
    img.dataset.query = query(params);
    img.dataset.prior = from;
    $("sample-note").textContent = response.headers.get("X-Note") || "";
  } catch (err) {
    setStatus(`sample: ${err.message}`, true);
  } finally {
    $("sample-go").disabled = false;
  }
}

// Wires the form (called once by app.js).
export function setupSample() {
  $("sample-form").addEventListener("submit", sample);
  for (const radio of document.querySelectorAll("input[name=prior]")) {
    radio.addEventListener("change", () => {
      if (chosenPrior() === "normal") $("sample-label").value = ""; // a class is a fitted one
      describe();
    });
  }
  $("sample-label").addEventListener("change", () => {
    if ($("sample-label").value !== "") setPrior("fitted");
    describe();
  });
}
