"""KServe's gRPC client (`kserve.InferenceGRPCClient`) against the service's gRPC face, in a
process of its own (tests/grpc_clients.py: kserve and tritonclient register the same protobuf
names). KServe's Python client is installed without its own pins: requirements/kserve-client.txt.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from grpc_clients import inputs
from test_grpc import CLIENTS, REPO, grpc_server, reference


@pytest.mark.skipif(
    importlib.util.find_spec("kserve") is None,
    reason="kserve's client is not installed: see requirements/kserve-client.txt",
)
def test_kserve_grpc_client_raw_and_typed(model_dir, tmp_path) -> None:
    with grpc_server(model_dir, tmp_path / "server.log") as server:
        done = subprocess.run(
            [sys.executable, str(CLIENTS), "kserve", server.address, str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["live"] is True and result["ready"] is True and result["model_ready"] is True
    expected = reference(model_dir, "vae", "decoder", inputs()["z"])["image"]
    with np.load(tmp_path / "tensors.npz") as tensors:
        for form in ("raw", "typed"):
            assert result[f"{form}_id"] == f"kserve-{form}"
            assert result[f"{form}_model"] == "vae-decoder"
            assert result[f"{form}_shape"] == list(expected.shape)
            got = tensors[form].reshape(expected.shape)
            np.testing.assert_allclose(got, expected, atol=1e-6)
    # KServe's copy of the protocol's .proto (grpc_predict_v2) is older than the protocol's
    # own: it lacks `properties` and two parameter types, and has nothing ours does not. Its
    # repository messages are KServe's own (ours are Triton's, as tritonclient sends them).
    differences = result["proto_differences"]
    differ = {
        name: d
        for name, d in differences["differ"].items()
        if not name.startswith("inference.Repository")
    }
    assert all(not d["only_theirs"] for d in differ.values()), differ
    added = {f[0] for d in differ.values() for f in d["only_ours"]}
    assert added <= {"properties", "double_param", "uint64_param"}
    # ... nor the repository extension's messages (Triton's, which ours has too)
    assert all(
        name.startswith(("inference.Repository", "inference.ModelRepositoryParameter"))
        or name == "inference.ModelMetadataResponse.PropertiesEntry"
        for name in differences["missing"]
    ), differences["missing"]
