// The page's one state object (exposed as `window.explorer.state` for the browser tests) and
// what GET /models says about each model.

export const state = {
  models: [], // ModelInfo objects from GET /models
  model: null, // active model name
  view: "map", // map | manifold | compare
  points: new Map(), // name -> {z, labels, plane?} or null (no latent points)
  projections: new Map(), // name -> how its latent space lies on the 2-D map (projection())
  input: null, // the exact Blob last sent to the API
  inputBase64: null, // the same bytes, base64
  result: null, // the active model's /reconstruct?format=json answer
  encodings: new Map(), // name -> {mu, sigma} (VAE) or {z} (AE) of the current input
  probe: null, // {model, z}
  probeImage: null, // object URL of the probe's decoded PNG
  pins: [], // {id, model, z, url}
  manifolds: new Map(), // name -> Promise<{canvas, zx, zy}>
  decodes: 0, // /decode answers drawn into the probe (for tests)
  requests: 0, // guards against answers arriving out of order
  highlight: null, // a label picked in the legend, or null
  priors: new Map(), // name -> {pending, body}: GET /models/{name}/prior (js/priors.js)
  showPrior: true, // the fitted prior's ellipses on the map (its checkbox)
};

export function modelInfo(name) {
  return state.models.find((m) => m.name === name);
}

export function zDim(name) {
  return modelInfo(name)?.z_dim ?? 2;
}

// [C, H, W] of the model's images (GET /models: input.shape); 1x28x28 when unknown.
export function imageShape(name) {
  const shape = modelInfo(name)?.input?.shape;
  return Array.isArray(shape) && shape.length === 3 ? shape : [1, 28, 28];
}

// Width / height of the model's images: <img class="digit"> boxes take it from --ar (style.css),
// so non-square images keep their shape.
export function setAspect(img, name) {
  const [, h, w] = imageShape(name);
  img.style.setProperty("--ar", String(w / h));
  return img;
}

// A 1x28x28 model without class names: the book's digits. Anything else: "images".
export function isDigitModel(name) {
  const [c, h, w] = imageShape(name);
  return c === 1 && h === 28 && w === 28 && !modelInfo(name)?.label_names;
}

export function labelName(name, label) {
  const names = modelInfo(name)?.label_names;
  return Array.isArray(names) && names[label] !== undefined ? String(names[label]) : String(label);
}

export function modelLabel(name) {
  const info = modelInfo(name);
  return info && info.kind !== name ? `${name} (${info.kind.toUpperCase()})` : name.toUpperCase();
}
