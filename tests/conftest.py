"""Shared fixtures: tiny real models of each kind, exported as the service expects them."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_ARCH = {
    "encoder_conv_filters": [4, 8],
    "encoder_conv_kernel_size": [3, 3],
    "encoder_conv_strides": [1, 2],
    "decoder_conv_t_filters": [8, 1],
    "decoder_conv_t_kernel_size": [3, 3],
    "decoder_conv_t_strides": [2, 1],
}
TINY_FIGURE = "training_curves.png"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(process: subprocess.Popen, base: str, log_path: Path, timeout: float) -> None:
    """Poll `base`/readyz until 200; fail with the server's log if it exits or times out."""
    import httpx

    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 1):  # bounded in count and in time
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}: {log_path.read_text()}")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    pytest.fail(f"server not ready in {timeout} s: {log_path.read_text()}")


def stop(process: subprocess.Popen) -> None:
    """Stop a server a test started, by its PID: SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def export_tiny_model(out_dir: Path, kind: str, z_dim: int = 2) -> dict:
    """Build and export a tiny untrained model of `kind` into `out_dir` (torch only here)."""
    import torch

    from training.config import ModelConfig, TrainConfig
    from training.export import export_model, write_metadata
    from training.model import build_model

    torch.manual_seed(0)
    config = TrainConfig(model=ModelConfig(kind=kind, z_dim=z_dim, **TINY_ARCH), epochs=1)
    model = build_model(config.model)
    rng = np.random.default_rng(0)
    parity = rng.random((8, 1, 28, 28), dtype=np.float32)
    points = {"z": rng.normal(size=(10, z_dim)).round(4).tolist(), "labels": list(range(10))}
    metadata = export_model(
        model,
        config,
        out_dir,
        parity,
        name=out_dir.name,
        training_summary={"epochs": 0, "note": "tiny untrained test model"},
        latent_points=points,
    )
    Image.new("L", (4, 4), 128).save(out_dir / TINY_FIGURE)
    metadata["figures"] = [TINY_FIGURE]
    write_metadata(out_dir, metadata)
    return metadata


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with a tiny `vae` and a tiny `ae` (session-wide: export takes ~1 s)."""
    root = tmp_path_factory.mktemp("models")
    for kind in ("vae", "ae"):
        export_tiny_model(root / kind, kind)
    return root


@pytest.fixture
def fresh_model_dir(model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny models, for tests that break them."""
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(model_dir, copy)
    return copy


def edit_metadata(folder: Path, **changes: object) -> None:
    path = folder / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata.update(changes)
    path.write_text(json.dumps(metadata))


def png_bytes(array: np.ndarray, mode: str = "L") -> bytes:
    """A uint8 or [0, 1] float array as PNG bytes."""
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def digit_array(size: int = 28, light_on_dark: bool = True) -> np.ndarray:
    """A synthetic '7'-like digit (uint8) drawn with Pillow, size x size."""
    from PIL import ImageDraw

    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    s = size / 28
    width = max(1, round(2.5 * s))
    draw.line([(8 * s, 6 * s), (20 * s, 6 * s), (12 * s, 22 * s)], fill=255, width=width)
    array = np.asarray(image)
    return array if light_on_dark else 255 - array


@pytest.fixture(scope="session")
def digit_png() -> bytes:
    return png_bytes(digit_array())


def pytest_configure(config: pytest.Config) -> None:
    # Starlette 1.x nudges toward httpx2 for its TestClient; httpx still works and is what
    # the dev extras install.
    config.addinivalue_line(
        "filterwarnings", "ignore:Using `httpx` with `starlette.testclient`:UserWarning"
    )


def make_client(model_dir: Path, **settings: object):
    """A TestClient (lifespan not yet entered) for an app over `model_dir`."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings

    return TestClient(create_app(Settings(model_dir=model_dir, **settings)))


@pytest.fixture(scope="session")
def client(model_dir: Path) -> Iterator:
    """A started app over the tiny models, shared by the read-mostly API tests."""
    with make_client(model_dir) as test_client:
        yield test_client
