// The manifold view: a 20x20 grid decoded at normal quantiles, drawn into one canvas.

import { decodePng } from "./api.js";
import { normPpf } from "./normal.js";
import { fullZ } from "./projection.js";
import { imageShape, state } from "./state.js";

export const MANIFOLD_N = 20; // 20x20 decoded grid
export const MANIFOLD_P = [0.05, 0.95]; // evenly spaced probabilities, z = Phi^-1(p)
const MANIFOLD_CHUNK = 100; // vectors per /decode request (well under VAE_MAX_BATCH)

export function manifoldAxis() {
  const [p0, p1] = MANIFOLD_P;
  return Array.from({ length: MANIFOLD_N }, (_, i) => normPpf(p0 + ((p1 - p0) * i) / (MANIFOLD_N - 1)));
}

// The manifold: decode a 20x20 grid of z at normal quantiles, in chunks of /decode?format=png
// grids, and copy each cell into one 560x560 canvas (top row = largest z2, like the book).
// The quantiles are map coordinates: with a principal plane, offsets from the points' mean
// along PC1 and PC2. Non-square images sit in square cells (black bars), keeping their shape.
export function manifold(name) {
  if (!state.manifolds.has(name)) {
    const build = (async () => {
      const axis = manifoldAxis();
      const [, h, w] = imageShape(name);
      const size = Math.max(h, w);
      const [dx, dy] = [Math.floor((size - w) / 2), Math.floor((size - h) / 2)];
      const cells = [];
      for (let r = 0; r < MANIFOLD_N; r++) {
        for (let c = 0; c < MANIFOLD_N; c++) cells.push({ r, c, z: fullZ(name, [axis[c], axis[MANIFOLD_N - 1 - r]]) });
      }
      const canvas = document.createElement("canvas");
      canvas.width = canvas.height = MANIFOLD_N * size;
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      const chunks = [];
      for (let i = 0; i < cells.length; i += MANIFOLD_CHUNK) chunks.push(cells.slice(i, i + MANIFOLD_CHUNK));
      // One /decode?format=png grid per chunk (ceil(sqrt(n)) columns, 2 px gaps): each cell is
      // copied to its place. A server with a smaller VAE_MAX_BATCH answers 422: halve and retry.
      const decodeCells = async (chunk) => {
        let blob;
        try {
          blob = await decodePng(name, chunk.map((cell) => cell.z));
        } catch (err) {
          if (err.status !== 422 || chunk.length === 1) throw err;
          const half = Math.ceil(chunk.length / 2);
          await Promise.all([decodeCells(chunk.slice(0, half)), decodeCells(chunk.slice(half))]);
          return;
        }
        const grid = await createImageBitmap(blob);
        const cols = Math.ceil(Math.sqrt(chunk.length));
        chunk.forEach((cell, j) => {
          const sx = (j % cols) * (w + 2);
          const sy = Math.floor(j / cols) * (h + 2);
          ctx.drawImage(grid, sx, sy, w, h, cell.c * size + dx, cell.r * size + dy, w, h);
        });
      };
      await Promise.all(chunks.map(decodeCells));
      return { canvas, zx: axis, zy: axis };
    })();
    build.catch(() => state.manifolds.delete(name));
    state.manifolds.set(name, build);
  }
  return state.manifolds.get(name);
}
