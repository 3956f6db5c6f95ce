"""`vae-triton`: the Triton model repository it writes, parsed with Triton's own model config
protobuf (model_config.proto, as tritonclient ships it) and checked against the ONNX graphs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

VAE_TRITON = Path(sys.executable).with_name("vae-triton")
DATA_TYPES = {"tensor(float)": "TYPE_FP32"}


def model_config_pb2():
    """tritonclient's model_config_pb2, loaded from its file: importing it as
    tritonclient.grpc.model_config_pb2 would import the gRPC client (grpcio) first."""
    tritonclient = pytest.importorskip("tritonclient", reason="tritonclient (dev extra)")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(pb2, text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, pb2.ModelConfig())


def run(*args: str) -> subprocess.CompletedProcess:
    # The console script as users run it (installed with the package: pip install -e .).
    command = [str(VAE_TRITON)]
    if not VAE_TRITON.exists():  # an install older than the script: the same code
        command = [sys.executable, "-m", "service.inference.triton"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def repository(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    result = run(str(model_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "tritonserver --model-repository=" in result.stdout
    return out


def test_layout(repository) -> None:
    names = sorted(p.name for p in repository.iterdir())
    assert names == ["ae-decoder", "ae-encoder", "vae-decoder", "vae-encoder"]
    for name in names:
        assert sorted(p.name for p in (repository / name).iterdir()) == ["1", "config.pbtxt"]
        assert [p.name for p in (repository / name / "1").iterdir()] == ["model.onnx"]


def test_configs_parse_and_match_the_graphs(repository, model_dir) -> None:
    pb2 = model_config_pb2()
    for folder in sorted(repository.iterdir()):
        kind, graph = folder.name.split("-")
        meta = json.loads((model_dir / kind / "metadata.json").read_text())
        onnx = folder / "1" / "model.onnx"
        digest = hashlib.sha256(onnx.read_bytes()).hexdigest()
        assert digest == meta[graph]["sha256"]  # the exported graph, unchanged
        text = (folder / "config.pbtxt").read_text()
        config = parse(pb2, text)
        assert config.name == folder.name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 256
        assert meta["version"] in text  # named in the header comment
        # Dynamic batching: documented, commented out (a CPU gains little from it).
        assert not config.HasField("dynamic_batching") and "# dynamic_batching {" in text
        session = ort.InferenceSession(str(onnx))
        for declared, actual in (
            (config.input, session.get_inputs()),
            (config.output, session.get_outputs()),
        ):
            assert [t.name for t in declared] == [a.name for a in actual]
            for tensor, arg in zip(declared, actual, strict=True):
                assert pb2.DataType.Name(tensor.data_type) == DATA_TYPES[arg.type]
                # The batch axis is implicit (max_batch_size > 0): dims are the rest, and the
                # graph's own batch axis must be dynamic for Triton to batch on it.
                assert list(tensor.dims) == arg.shape[1:]
                assert not isinstance(arg.shape[0], int)
        if graph == "encoder":
            assert [t.name for t in config.output] == meta["encoder"]["outputs"]


def test_dynamic_batching_block_parses_when_uncommented(repository) -> None:
    pb2 = model_config_pb2()
    text = (repository / "vae-decoder" / "config.pbtxt").read_text()
    block = text[text.index("# dynamic_batching {") :]
    enabled = text.replace(block, "\n".join(line[2:] for line in block.splitlines()) + "\n")
    config = parse(pb2, enabled)
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000


def test_max_batch_size_and_one_model_folder(model_dir, tmp_path) -> None:
    pb2 = model_config_pb2()
    out = tmp_path / "repo"
    result = run(str(model_dir / "ae"), "--out", str(out), "--max-batch-size", "32")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ae-decoder", "ae-encoder"]
    config = parse(pb2, (out / "ae-encoder" / "config.pbtxt").read_text())
    assert config.max_batch_size == 32 and [t.name for t in config.output] == ["z"]


def test_a_broken_model_folder_is_refused(fresh_model_dir, tmp_path) -> None:
    path = fresh_model_dir / "vae" / "decoder.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    result = run(str(fresh_model_dir / "vae"), "--out", str(tmp_path / "repo"))
    assert result.returncode == 1 and "sha256" in result.stderr
    result = run(str(tmp_path / "empty"), "--out", str(tmp_path / "repo"))
    assert result.returncode == 1 and "model folder" in result.stderr
