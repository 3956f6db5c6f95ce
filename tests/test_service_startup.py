"""Start-up: a broken or missing model stops the service with a message naming the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import edit_metadata, make_client

from service.inference.format import ModelLoadError
from service.inference.registry import ModelRegistry

REPO = Path(__file__).resolve().parent.parent


def start_fails(model_dir: Path, *fragments: str, **settings: object) -> str:
    """Entering the app's lifespan must raise ModelLoadError mentioning every fragment."""
    with pytest.raises(ModelLoadError) as info, make_client(model_dir, **settings):
        pass
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_loads_both_tiny_models(model_dir) -> None:
    registry = ModelRegistry.load(model_dir)
    assert registry.names == ["ae", "vae"] and registry.default == "vae"
    assert registry.get("vae").kind == "vae" and registry.get("ae").encoder_outputs == ["z"]


def test_no_models(tmp_path) -> None:
    start_fails(tmp_path, str(tmp_path), "has no model folders", "make train")
    start_fails(tmp_path / "missing", "does not exist", "make train")


def test_folder_without_metadata(fresh_model_dir) -> None:
    (fresh_model_dir / "vae" / "metadata.json").unlink()
    start_fails(fresh_model_dir, "vae/metadata.json", "not found")


def test_metadata_not_json(fresh_model_dir) -> None:
    (fresh_model_dir / "ae" / "metadata.json").write_text("{nope")
    start_fails(fresh_model_dir, "ae/metadata.json", "JSON")


def test_wrong_format(fresh_model_dir) -> None:
    edit_metadata(fresh_model_dir / "vae", format="something-else/9")
    start_fails(fresh_model_dir, "vae/metadata.json", "something-else/9")


def test_missing_onnx_file(fresh_model_dir) -> None:
    (fresh_model_dir / "vae" / "decoder.onnx").unlink()
    start_fails(fresh_model_dir, "vae/decoder.onnx", "not found")


def test_sha256_mismatch(fresh_model_dir) -> None:
    path = fresh_model_dir / "ae" / "encoder.onnx"
    path.write_bytes(path.read_bytes() + b"\x00")
    start_fails(fresh_model_dir, "ae/encoder.onnx", "sha256")


def test_corrupt_onnx_with_matching_sha(fresh_model_dir) -> None:
    import hashlib

    path = fresh_model_dir / "vae" / "encoder.onnx"
    path.write_bytes(b"not a model")
    metadata = json.loads((fresh_model_dir / "vae" / "metadata.json").read_text())
    metadata["encoder"]["sha256"] = hashlib.sha256(b"not a model").hexdigest()
    edit_metadata(fresh_model_dir / "vae", encoder=metadata["encoder"])
    start_fails(fresh_model_dir, "vae/encoder.onnx", "onnxruntime cannot load")


def test_z_dim_disagrees_with_the_graphs(fresh_model_dir) -> None:
    edit_metadata(fresh_model_dir / "vae", z_dim=3)
    start_fails(fresh_model_dir, "vae/encoder.onnx", "shape")


def test_input_shape_disagrees(fresh_model_dir) -> None:
    metadata = json.loads((fresh_model_dir / "vae" / "metadata.json").read_text())
    edit_metadata(fresh_model_dir / "vae", input={**metadata["input"], "shape": [1, 32, 32]})
    start_fails(fresh_model_dir, "vae/encoder.onnx", "32")


def test_tensor_names_disagree(fresh_model_dir) -> None:
    metadata = json.loads((fresh_model_dir / "ae" / "metadata.json").read_text())
    edit_metadata(fresh_model_dir / "ae", decoder={**metadata["decoder"], "input": "latent"})
    start_fails(fresh_model_dir, "ae/decoder.onnx", "'latent'")


def test_kind_disagrees_with_outputs(fresh_model_dir) -> None:
    edit_metadata(fresh_model_dir / "vae", kind="ae")
    start_fails(fresh_model_dir, "vae/metadata.json", "encoder.outputs")


def test_missing_figure_and_bad_latent_points(fresh_model_dir) -> None:
    (fresh_model_dir / "vae" / "training_curves.png").unlink()
    start_fails(fresh_model_dir, "vae/training_curves.png")
    (fresh_model_dir / "vae" / "training_curves.png").write_bytes(b"")
    (fresh_model_dir / "ae" / "latent_points.json").write_text('{"z": [[1, 2, 3]]}')
    start_fails(fresh_model_dir, "ae/latent_points.json")


def test_default_model_missing(model_dir) -> None:
    start_fails(model_dir, "'big'", "VAE_DEFAULT_MODEL", default_model="big")


def test_other_default_model(model_dir, digit_png) -> None:
    with make_client(model_dir, default_model="ae") as client:
        assert set(client.post("/encode", files={"file": ("d", digit_png)}).json()) == {
            "model",
            "z",
        }


def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_without_models_says_what_to_do(tmp_path) -> None:
    result = _run(["-m", "service", "--port", "1"], {"VAE_MODEL_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "make train" in result.stderr and str(tmp_path) in result.stderr


def test_service_never_imports_torch(model_dir) -> None:
    code = """
import sys
from fastapi.testclient import TestClient
from service.app import create_app
from service.process.settings import Settings
with TestClient(create_app(Settings(model_dir=sys.argv[1]))) as c:
    assert c.get("/sample?n=2").status_code == 200
    assert c.post("/decode", json={"z": [[0, 0]]}).status_code == 200
    import service.__main__, service.imaging.prepare, service.imaging.png  # noqa
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision")))
assert not bad, bad
print("no torch")
"""
    result = _run(["-W", "ignore", "-c", code, str(model_dir)], {})
    assert result.returncode == 0, result.stderr
    assert "no torch" in result.stdout
