// The sample panel: GET /sample as a PNG grid.

import { api, query } from "./api.js";
import { state } from "./state.js";
import { $, setStatus } from "./util.js";

let sampleUrl = null;

export async function sample(event) {
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
