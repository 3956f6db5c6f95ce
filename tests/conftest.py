"""Shared fixtures: tiny real models of each kind, exported as the service expects them."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import processes
from harness.models import export_tiny_model, export_tiny_models
from harness.processes import free_port as free_port  # re-exported: tests that start servers


def wait_ready(process: subprocess.Popen, base: str, log_path: Path, timeout: float) -> None:
    """Poll `base`/readyz until 200; fail the test with the server's log tail if it exits or
    times out (harness.processes.wait_ready, as a pytest failure)."""
    try:
        processes.wait_ready(process, base, log_path, timeout)
    except processes.ServerNotReady as exc:
        message = str(exc)
    else:
        return
    pytest.fail(message)


def stop(process: subprocess.Popen) -> None:
    """Stop a server a test started, by its PID: SIGTERM, then SIGKILL (its whole process
    tree) after 10 s."""
    processes.stop(process, timeout=10)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with a tiny `vae` and a tiny `ae` (session-wide: export takes ~1 s)."""
    return export_tiny_models(tmp_path_factory.mktemp("models"))


# Label names of the tiny `ae` with a fitted prior (prior_model_dir).
PRIOR_LABEL_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="session")
def prior_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models with real fitted priors (prior.npz, per label): `vae` (digits: labels are
    their numbers; default prior normal) and `ae` (PRIOR_LABEL_NAMES; default prior fitted),
    and `bare`, an AE without a prior, as folders from before priors are."""
    root = tmp_path_factory.mktemp("prior-models")
    export_tiny_model(root / "vae", "vae", prior=True)
    export_tiny_model(
        root / "ae", "ae", prior=True, prior_default="fitted", label_names=PRIOR_LABEL_NAMES
    )
    export_tiny_model(root / "bare", "ae")
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
    from service.process.settings import Settings

    return TestClient(create_app(Settings(model_dir=model_dir, **settings)))


@pytest.fixture(scope="session")
def client(model_dir: Path) -> Iterator:
    """A started app over the tiny models, shared by the read-mostly API tests."""
    with make_client(model_dir) as test_client:
        yield test_client
