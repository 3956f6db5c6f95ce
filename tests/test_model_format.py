"""The model format (service/inference/format.py): one definition that export writes, the
service validates, /models returns, and docs/model-format.schema.json publishes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import edit_metadata

from service.inference.format import (
    FORMAT,
    SCHEMA_PATH,
    ModelLoadError,
    ModelMetadata,
    json_schema,
    read_metadata,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = [p for p in (REPO / "models").iterdir() if (p / "metadata.json").is_file()]


def test_published_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text() == json_schema(), (
        "docs/model-format.schema.json is stale: run python -m service.inference.format --schema"
    )
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["properties"]["format"]["const"] == FORMAT
    assert {"format", "name", "kind", "z_dim", "input", "encoder", "decoder"} <= set(
        schema["required"]
    )


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_shipped_metadata_round_trips_byte_for_byte(folder: Path) -> None:
    text = (folder / "metadata.json").read_text()
    assert read_metadata(folder).to_json() == text


def test_the_cli_validates_folders(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_dir / "vae", broken)
    edit_metadata(broken, z_dim=0)
    result = subprocess.run(
        [sys.executable, "-m", "service.inference.format", str(model_dir / "vae"), str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"ok: {model_dir / 'vae'}" in result.stdout
    assert "broken/metadata.json" in result.stderr and "z_dim" in result.stderr


@pytest.mark.parametrize(
    "change, fragments",
    [
        ({"z_dim": "2"}, ["z_dim"]),
        ({"z_dim": True}, ["z_dim"]),
        ({"kind": "gan"}, ["kind", "'gan'"]),
        ({"figures": ["../secret.png"]}, ["figures.0", "plain file name"]),
        ({"latent_points": ".hidden.json"}, ["latent_points", "plain file name"]),
        ({"name": ""}, ["name"]),
    ],
)
def test_bad_fields_are_named(fresh_model_dir: Path, change: dict, fragments: list[str]) -> None:
    edit_metadata(fresh_model_dir / "vae", **change)
    with pytest.raises(ModelLoadError) as info:
        read_metadata(fresh_model_dir / "vae")
    message = str(info.value)
    assert "vae/metadata.json" in message
    for fragment in fragments:
        assert fragment in message, message


def test_nested_fields_are_named(fresh_model_dir: Path) -> None:
    folder = fresh_model_dir / "ae"
    metadata = json.loads((folder / "metadata.json").read_text())
    edit_metadata(folder, input={**metadata["input"], "range": [1.0, 0.0]})
    with pytest.raises(ModelLoadError, match=r"ae/metadata.json: input: .*low < high"):
        read_metadata(folder)
    edit_metadata(folder, input=metadata["input"], encoder={**metadata["encoder"], "sha256": "x"})
    with pytest.raises(ModelLoadError, match=r"encoder\.sha256"):
        read_metadata(folder)
    edit_metadata(folder, encoder={k: v for k, v in metadata["encoder"].items() if k != "file"})
    with pytest.raises(ModelLoadError, match=r"missing key 'encoder.file'"):
        read_metadata(folder)


def test_models_route_returns_the_schema(client) -> None:
    body = client.get("/models").json()
    for info in body["models"]:
        ModelMetadata.model_validate(info)
    schema = client.get("/openapi.json").json()
    # /models' entries are ModelMetadata itself (a subclass), with the priors /sample serves.
    info = schema["components"]["schemas"]["ModelInfo"]["properties"]
    assert set(ModelMetadata.model_json_schema()["properties"]) | {"priors"} == set(info)
