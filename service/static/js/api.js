// The API client: fetch with the API-key dialog (401 -> ask, retry), clear errors, and the
// request helpers every panel uses. URLs are relative so the page works behind a path prefix.

export class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

// API keys (VAE_API_KEYS on the server): a 401 asks for a key, kept for this tab only
// (sessionStorage) and sent as `Authorization: Bearer <key>`; then the request is retried.
const KEY_STORE = "vae-api-key";
let keyPrompt = null; // one dialog at a time, shared by every request that got a 401
let keyDeclined = false;

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORE);
  } catch {
    return null; // storage blocked: ask each time
  }
}

function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
  } catch {
    /* storage blocked */
  }
}

// Resolves with the key entered, or null when the dialog is dismissed.
function askForKey(rejected) {
  if (keyPrompt) return keyPrompt;
  keyPrompt = new Promise((resolve) => {
    const dialog = document.createElement("dialog");
    dialog.id = "key-dialog";
    dialog.className = "key-dialog";
    dialog.setAttribute("aria-labelledby", "key-h");
    dialog.innerHTML = `<form method="dialog" id="key-form">
        <h2 id="key-h">API key</h2>
        <p id="key-note"></p>
        <label for="api-key">Key</label>
        <input id="api-key" name="key" type="password" autocomplete="off" spellcheck="false" required>
        <div class="row buttons">
          <button type="submit" id="key-go">Use this key</button>
          <button type="button" id="key-cancel">Cancel</button>
        </div>
      </form>`;
    dialog.querySelector("#key-note").textContent = rejected
      ? "The service did not accept that key. Enter another one."
      : "This service needs an API key. It is kept for this tab only.";
    const input = dialog.querySelector("#api-key");
    const finish = (key) => {
      if (dialog.open) dialog.close();
      dialog.remove();
      keyPrompt = null;
      keyDeclined = !key;
      resolve(key);
    };
    dialog.querySelector("#key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      storeKey(key);
      finish(key);
    });
    dialog.querySelector("#key-cancel").addEventListener("click", () => finish(null));
    dialog.addEventListener("cancel", (e) => {
      e.preventDefault();
      finish(null);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
  return keyPrompt;
}

export async function api(path, options = {}) {
  let response;
  for (;;) {
    const key = storedKey();
    const headers = new Headers(options.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    try {
      response = await fetch(path, { ...options, headers });
    } catch (err) {
      throw new ApiError(`cannot reach the service (${err.message})`);
    }
    if (response.status !== 401) break;
    const now = storedKey();
    if (now && now !== key) continue; // a key entered meanwhile: use it
    if (key) storeKey(null);
    if (keyDeclined && !keyPrompt) {
      throw new ApiError("this service needs an API key (reload the page to enter one)", 401);
    }
    if (!(await askForKey(Boolean(key)))) {
      throw new ApiError("this service needs an API key (reload the page to enter one)", 401);
    }
  }
  if (!response.ok) {
    let detail = response.statusText || `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (typeof body.detail === "string") detail = body.detail;
      else if (Array.isArray(body.detail)) detail = body.detail.map((e) => e.msg).join("; ");
    } catch {
      /* not JSON: keep the status text */
    }
    throw new ApiError(detail, response.status);
  }
  return response;
}

export const query = (params) => {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  return q.toString();
};

export async function decodePng(model, zs, scale = 1) {
  const response = await api(`decode?${query({ model, format: "png", scale })}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ z: zs }),
  });
  return response.blob();
}

export function imageForm(blob) {
  const form = new FormData();
  form.append("file", blob, "digit.png");
  return form;
}

export function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}
