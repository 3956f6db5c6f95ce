// The book's analysis in the explorer, on top of app.js (its state, api() and maps; loaded
// after it): the Interpolate view (POST /interpolate, linear and slerp side by side, the paths
// drawn on the latent map) and, for a drawn or uploaded digit, POST /score: log p(x), a gauge
// of its percentile among held-out digits, and the error map beside the reconstruction.
"use strict";

(() => {
  const SLERP_COLOR = "#1c7ed6";
  const SCORE_SEED = 0; // the page's scores repeat: same digit, same numbers
  const STRIP_SCALE = 2;

  // An end of the path: {kind: "point", z, model} (a map click) or {kind: "image", blob, z,
  // model} (the digit on the pad; z: its mean under `model`, null until known).
  const interp = { a: null, b: null, next: "a", result: null, ticket: 0, requests: 0 };
  const scores = { result: null, ticket: 0 };

  // ------------------------------------------------------------ interpolation

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
    mainMap.draw();
    request();
  }

  function pick(model, xy) {
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

  async function request() {
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
      mainMap.draw();
      mainMap.canvas.dataset.ready = "interp";
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
    if (state.view !== "interp" || map !== mainMap) return;
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

  function onView() {
    const on = state.view === "interp";
    $("interp").hidden = !on;
    document.body.classList.toggle("interpolating", on);
    if (!on) return;
    $("map-title").textContent = "Interpolation between two points";
    $("map-hint").textContent = "Click the map for A, again for B (or use your digit for either), " +
      "and see both paths decoded: linear (solid) and spherical (dashed), which keeps |z| between " +
      "|A| and |B| instead of cutting toward the origin.";
    if (interp.a && interp.b && (!interp.result || interp.result.model !== state.model)) request();
    else mainMap.canvas.dataset.ready = interp.result ? "interp" : "points";
  }

  // ------------------------------------------------------------ scores

  function ordinal(value) {
    const n = Math.round(value);
    const tens = n % 100;
    const suffix = tens >= 11 && tens <= 13 ? "th" : ["th", "st", "nd", "rd"][n % 10] || "th";
    return `${n}${suffix}`;
  }

  function onClear() {
    scores.ticket += 1;
    scores.result = null;
    $("score").hidden = true;
    $("errmap").removeAttribute("src");
  }

  async function onResult() {
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

  // ------------------------------------------------------------ start

  $("interp-from-a").addEventListener("click", () => fromDigit("a"));
  $("interp-from-b").addEventListener("click", () => fromDigit("b"));
  $("interp-clear").addEventListener("click", () => {
    interp.a = interp.b = interp.result = null;
    interp.next = "a";
    interp.ticket += 1;
    renderEnds();
    clearStrips();
    mainMap.draw();
  });
  $("interp-steps").addEventListener("change", () => request());

  window.analysis = { pick, drawOn, onView, onClear, onResult };
  window.explorer.analysis = { interp, scores, request };
})();
