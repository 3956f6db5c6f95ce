// The score of a drawn or uploaded image (the book's analysis): POST /score, log p(x), a gauge
// of its percentile among held-out images, and the error map beside the reconstruction.

import { api, imageForm, query } from "./api.js";
import { isDigitModel, setAspect, state } from "./state.js";
import { $, fmt, setStatus } from "./util.js";

const SCORE_SEED = 0; // the page's scores repeat: same digit, same numbers

export const scores = { result: null, ticket: 0 };

function ordinal(value) {
  const n = Math.round(value);
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ["th", "st", "nd", "rd"][n % 10] || "th";
  return `${n}${suffix}`;
}

export function onClear() {
  scores.ticket += 1;
  scores.result = null;
  $("score").hidden = true;
  $("errmap").removeAttribute("src");
}

export async function onResult() {
  const model = state.model;
  const blob = state.input;
  const ticket = ++scores.ticket;
  try {
    const response = await api(`score?${query({ model, format: "json", seed: SCORE_SEED })}`, {
      method: "POST",
      body: imageForm(blob),
    });
    const json = await response.json();
    if (ticket !== scores.ticket || model !== state.model) return;
    scores.result = json;
    showScore(json);
  } catch (err) {
    if (ticket === scores.ticket) setStatus(`score: ${err.message}`, true);
  }
}

function showScore(json) {
  $("score").hidden = false;
  setAspect($("errmap"), json.model || state.model).src = `data:image/png;base64,${json.error_map}`;
  const vae = json.kind === "vae";
  for (const id of ["logpx", "elbo", "bpd"]) {
    $(id).hidden = !vae;
    $(`${id}-label`).hidden = !vae;
  }
  if (vae) {
    $("logpx").textContent = `${fmt(json.log_px, 1)} nats`;
    $("logpx").title = `importance-weighted bound, k = ${json.k} samples, seed ${json.seed}`;
    $("elbo").textContent = `${fmt(json.elbo, 1)} (KL ${fmt(json.kl, 2)})`;
    $("elbo").title = `E_q log p(x|z) ${fmt(json.reconstruction_log_likelihood, 1)} − KL ${fmt(json.kl, 2)}`;
    $("bpd").textContent = fmt(json.bits_per_dim, 3);
  }
  const things = isDigitModel(json.model || state.model) ? "digits" : "images";
  const verdict = json.typicality;
  const gauge = $("gauge");
  gauge.hidden = !verdict;
  if (verdict) {
    const p = Math.min(100, Math.max(0, verdict.percentile));
    $("gauge-marker").style.left = `${p}%`;
    $("gauge-threshold").style.left = `${verdict.threshold_percentile}%`;
    gauge.style.setProperty("--threshold", `${verdict.threshold_percentile}%`);
    gauge.classList.toggle("atypical", !verdict.typical);
    gauge.setAttribute("aria-valuenow", String(p));
    gauge.setAttribute("aria-valuetext", `${fmt(p, 1)} percentile, ${verdict.typical ? "typical" : "atypical"}`);
    gauge.dataset.percentile = String(p);
    const names = { iwae_log_px: "log p(x)", kl: "KL", neg_mse: "−MSE" };
    const parts = verdict.components
      ? ` (${Object.entries(verdict.components).map(([k, v]) => `${names[k] || k}: ${ordinal(v)}`).join(", ")} percentile)`
      : ` (its ${names[verdict.score_name] || verdict.score_name})`;
    $("gauge-label").textContent = `${verdict.typical ? "Typical" : "Atypical"}: ranks above ` +
      `${fmt(p, 1)}% of held-out ${things}${parts}; threshold: the ` +
      `${ordinal(verdict.threshold_percentile)} percentile.`;
  } else {
    $("gauge-label").textContent = "This model's metadata has no held-out reference: no typicality verdict.";
  }
  $("score-note").textContent = vae
    ? `log p(x) under the model's own likelihood (${json.likelihood.name}` +
      (json.likelihood.sigma ? `, σ = ${fmt(json.likelihood.sigma, 3)}` : "") +
      `), a continuous density: compare ${things} with each other, not with other models.`
    : "A plain autoencoder has no likelihood: its score is reconstruction error only.";
}
