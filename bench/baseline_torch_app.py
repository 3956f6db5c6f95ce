"""The peer: the book's VAE served the straightforward way, eager PyTorch behind FastAPI.

This is how the chapter's model would be put behind HTTP without this project: load the
training checkpoint's state dict into the PyTorch model, decode under `torch.no_grad()` in a
plain handler, save the grid with Pillow's defaults. It does not import `service` and shares
none of its choices (no onnxruntime, no session tuning, no PNG level); it serves the same
weights, so `/sample?n=16` here and on the service do the same arithmetic.

    python -m bench.baseline_torch_app --run runs/vae --port 8001
    python -m bench.baseline_torch_app --untrained --port 8001     # same compute, no checkpoint
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Query, Response
from PIL import Image

from training.config import ModelConfig, TrainConfig
from training.model import Autoencoder, VariationalAutoencoder, build_model


def load_model(run: Path | None) -> Autoencoder | VariationalAutoencoder:
    """The VAE of a training run's checkpoint, or (run None) the untrained full-size model."""
    if run is None:
        torch.manual_seed(0)
        return build_model(ModelConfig(kind="vae")).eval()
    checkpoint = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    config = TrainConfig.from_dict(checkpoint["config"])
    model = build_model(config.model)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def grid(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> one picture, ceil(sqrt(N)) columns, 2 px grey gaps."""
    count, h, w = images.shape
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    out = np.full((rows * (h + 2) - 2, cols * (w + 2) - 2), 128, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = image
    return out


def create_app(model: Autoencoder | VariationalAutoencoder) -> FastAPI:
    app = FastAPI(title="baseline: eager PyTorch VAE")
    z_dim = model.config.z_dim

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    @app.get("/sample")
    def sample(n: int = Query(16, ge=1, le=256), seed: int | None = None) -> Response:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            z = torch.randn(n, z_dim, generator=generator)
            images = model.decode(z)
        pixels = (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        buffer = io.BytesIO()
        Image.fromarray(grid(pixels)).save(buffer, "PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", type=Path, help="training run folder with checkpoint.pt")
    where.add_argument("--untrained", action="store_true", help="the untrained full-size VAE")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    app = create_app(load_model(None if args.untrained else args.run))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
