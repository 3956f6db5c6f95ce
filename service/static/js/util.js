// Small shared helpers: label colours, DOM lookup, the status line, number formatting.

// matplotlib's tab10, one colour per digit.
export const DIGIT_COLORS = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];
// Labels past 10 (models with more classes): evenly spread hues.
export const labelColor = (label) => DIGIT_COLORS[label] ?? `hsl(${(label * 137.508) % 360}, 62%, 45%)`;
export const ACCENT = "#d6336c";

// By id.
export const $ = (id) => document.getElementById(id);

export function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
  el.classList.toggle("shown", Boolean(text));
  clearTimeout(setStatus.timer);
  if (text && !isError) setStatus.timer = setTimeout(() => setStatus(""), 2500);
}

// Fixed decimals, never "-0.00".
export const fmt = (v, digits = 2) => {
  const text = v.toFixed(digits);
  return /^-0(\.0*)?$/.test(text) ? text.slice(1) : text;
};
export const fmtVec = (v, digits = 2) => `(${v.map((x) => fmt(x, digits)).join(", ")})`;
// Short enough for a line of text at any z_dim: up to 3 numbers in full, else the first two,
// "…" and the last.
export const fmtZ = (v, digits = 2) => v.length <= 3
  ? fmtVec(v, digits)
  : `(${v.slice(0, 2).map((x) => fmt(x, digits)).join(", ")}, …, ${fmt(v.at(-1), digits)})`;
