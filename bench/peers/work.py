"""The work every Python peer does per request, the service's own: numpy, onnxruntime, Pillow.

Imported inside each peer's environment (.venv-<peer>/, which has numpy, onnxruntime and
Pillow at the service's versions), with the repository root on sys.path so that
`service.imaging` is the service's own code: the grid layout and PNG writer
(service.imaging.png) and the MNIST-style preparation of an upload (service.imaging.prepare).
What differs between the peers is then the serving stack, not the work.

    graphs = Graphs(Path("models/vae"))          # the two onnxruntime sessions
    png = sample_png(graphs, 16, seed=0)         # GET /sample?n=16&seed=0's bytes
    body = encoding(graphs, png_upload)          # POST /encode's JSON body
    out = pipeline(graphs, [png_upload])         # OIP "vae": {mu: (N, z), log_var: (N, z)}

Settings, from the environment: VAE_PEER_MODEL_DIR (default models/vae), VAE_PEER_ORT_THREADS
(onnxruntime intra-op threads per session; unset: one per core, onnxruntime's default).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from service.imaging.png import grid, png_bytes, to_uint8  # noqa: E402
from service.imaging.prepare import preprocess_bytes  # noqa: E402


def model_dir() -> Path:
    return Path(os.environ.get("VAE_PEER_MODEL_DIR") or ROOT / "models" / "vae")


def ort_threads() -> int | None:
    value = os.environ.get("VAE_PEER_ORT_THREADS", "").strip()
    return int(value) if value else None


class Convention:
    """metadata.json's pixel convention: [0, 1] light-on-dark <-> the model's own."""

    def __init__(self, metadata: dict[str, Any]):
        self.name = metadata["name"]
        self.z_dim = int(metadata["z_dim"])
        spec = metadata["input"]
        self.shape = tuple(spec["shape"])
        self.low, self.high = spec["range"]
        self.dark = spec["foreground"] == "dark"

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """(N, H, W) or (H, W) in [0, 1] -> (N, C, H, W) in the model's convention."""
        x = (1.0 - x) if self.dark else x
        x = self.low + x * (self.high - self.low)
        return np.ascontiguousarray(x.reshape(-1, *self.shape), dtype=np.float32)

    def to_unit(self, images: np.ndarray) -> np.ndarray:
        return np.clip((images - self.low) / (self.high - self.low), 0.0, 1.0)


class Graphs:
    """The model folder's two onnxruntime sessions, its names and its pixel convention."""

    def __init__(self, folder: Path | None = None, threads: int | None = None):
        folder = folder or model_dir()
        self.metadata = json.loads((folder / "metadata.json").read_text())
        if self.metadata["kind"] != "vae":
            raise ValueError(f"{folder}: the peers serve a VAE, not {self.metadata['kind']!r}")
        self.convention = Convention(self.metadata)
        options = ort.SessionOptions()
        threads = threads if threads is not None else ort_threads()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        meta = self.metadata
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(
            str(folder / meta["encoder"]["file"]), options, providers=providers
        )
        self.decoder = ort.InferenceSession(
            str(folder / meta["decoder"]["file"]), options, providers=providers
        )
        self.z_input = meta["decoder"]["input"]
        self.image_output = meta["decoder"]["output"]
        self.image_input = meta["encoder"]["input"]
        self.code_outputs: list[str] = list(meta["encoder"]["outputs"])

    def decode(self, z: np.ndarray) -> np.ndarray:
        """(N, z_dim) -> (N, C, H, W), the model's convention (the OIP decoder's output)."""
        (images,) = self.decoder.run([self.image_output], {self.z_input: z.astype(np.float32)})
        return np.asarray(images)

    def encode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(N, C, H, W) in the model's convention -> {mu: (N, z), log_var: (N, z)}."""
        outs = self.encoder.run(self.code_outputs, {self.image_input: images})
        return dict(zip(self.code_outputs, (np.asarray(o) for o in outs), strict=True))


def latents(graphs: Graphs, n: int, seed: int | None) -> np.ndarray:
    """z ~ N(0, I) as the service draws it for /sample?n=N&seed=S."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, graphs.convention.z_dim)).astype(np.float32)


def grid_png(graphs: Graphs, decoded: np.ndarray) -> bytes:
    """Decoded images -> the service's PNG grid (ceil(sqrt(N)) columns, 2 px gaps)."""
    return png_bytes(grid(to_uint8(graphs.convention.to_unit(decoded))))


def sample_png(graphs: Graphs, n: int = 16, seed: int | None = None) -> bytes:
    """The bytes of the service's GET /sample?n=N&seed=S."""
    return grid_png(graphs, graphs.decode(latents(graphs, n, seed)))


def prepared(graphs: Graphs, uploads: list[bytes]) -> np.ndarray:
    """Image files -> (N, C, H, W): the service's digit preparation, then the convention."""
    size = graphs.convention.shape[1]
    return graphs.convention.to_model(
        np.stack([preprocess_bytes(d, "auto", size) for d in uploads])
    )


def pipeline(graphs: Graphs, uploads: list[bytes]) -> dict[str, np.ndarray]:
    """The OIP "vae" model: image files -> mu and log_var (N, z_dim) each."""
    return graphs.encode(prepared(graphs, uploads))


def encoding(graphs: Graphs, upload: bytes) -> dict[str, Any]:
    """The JSON body of the service's POST /encode for one upload."""
    codes = pipeline(graphs, [upload])
    mu, log_var = (codes[name][0].tolist() for name in graphs.code_outputs[:2])
    return {"model": graphs.convention.name, "mu": mu, "log_var": log_var}
