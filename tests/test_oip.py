"""The Open Inference Protocol (/v2) on a real server, through the clients people use with it:
Triton's `tritonclient.http` and KServe's `InferenceRESTClient`, and plain httpx for every way
a request can be wrong (status and `{"error": ...}` body, never a 5xx).

The expected tensors come from onnxruntime on the model files directly, and the pipeline's from
the REST API's own /encode.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from conftest import digit_array, free_port, make_client, png_bytes, stop, wait_ready
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
MAX_BATCH = 32
MAX_BODY = 65536
HEADER = "Inference-Header-Content-Length"

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (dev extra)")
from test_service_server import start  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """(base URL, "host:port", log path) of one server for the whole module."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("oip") / "server.log"
    with open(log_path, "wb") as log:
        process = start(
            model_dir,
            port,
            log,
            VAE_MAX_UPLOAD_BYTES=str(MAX_BODY),
            VAE_MAX_BATCH=str(MAX_BATCH),
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, base, log_path, START_TIMEOUT)
            yield base, f"127.0.0.1:{port}", log_path
        finally:
            stop(process)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server[0], timeout=30) as client:
        yield client


@pytest.fixture
def triton(server):
    client = httpclient.InferenceServerClient(url=server[1], network_timeout=30.0)
    try:
        yield client
    finally:
        client.close()


def metadata(model_dir: Path, name: str) -> dict:
    return json.loads((model_dir / name / "metadata.json").read_text())


def reference(model_dir: Path, name: str, graph: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime on the exported graph itself: every output by name."""
    session = ort.InferenceSession(str(model_dir / name / f"{graph}.onnx"))
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: x})
    return dict(zip(names, values, strict=True))


def digits(n: int) -> list[bytes]:
    return [png_bytes(np.rot90(digit_array(), k).copy()) for k in range(n)]


def binary_request(body: dict, *parts: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(body).encode()
    return text + b"".join(parts), {HEADER: str(len(text))}


def split_binary(response: httpx.Response) -> tuple[dict, bytes]:
    length = int(response.headers[HEADER])
    return json.loads(response.content[:length]), response.content[length:]


# --- tritonclient ---------------------------------------------------------------------------


def test_tritonclient_server_health_and_metadata(triton) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    server = triton.get_server_metadata()
    assert server["name"] == "vae-service" and "binary_tensor_data" in server["extensions"]
    for name in ("vae", "vae-encoder", "vae-decoder", "ae", "ae-encoder", "ae-decoder"):
        assert triton.is_model_ready(name)
    assert not triton.is_model_ready("nope")


def test_tritonclient_model_metadata_from_the_graphs(triton, model_dir) -> None:
    """Names, datatypes and shapes as the ONNX graphs have them, -1 on the batch axis."""
    for kind in ("vae", "ae"):
        meta = metadata(model_dir, kind)
        for graph in ("encoder", "decoder"):
            got = triton.get_model_metadata(f"{kind}-{graph}")
            session = ort.InferenceSession(str(model_dir / kind / f"{graph}.onnx"))
            assert got["name"] == f"{kind}-{graph}" and got["platform"] == "onnxruntime_onnx"
            assert got["versions"] == [meta["version"]]
            for ours, theirs in (
                (got["inputs"], session.get_inputs()),
                (got["outputs"], session.get_outputs()),
            ):
                assert [t["name"] for t in ours] == [t.name for t in theirs]
                for tensor, arg in zip(ours, theirs, strict=True):
                    assert tensor["datatype"] == "FP32" and arg.type == "tensor(float)"
                    assert tensor["shape"][0] == -1 and not isinstance(arg.shape[0], int)
                    assert tensor["shape"][1:] == arg.shape[1:]
        versioned = triton.get_model_metadata(f"{kind}-encoder", model_version=meta["version"])
        assert versioned == triton.get_model_metadata(f"{kind}-encoder")
        pipeline = triton.get_model_metadata(kind)
        assert pipeline["platform"] == "ensemble"
        assert pipeline["inputs"] == [{"name": "file", "datatype": "BYTES", "shape": [-1]}]
        assert [t["name"] for t in pipeline["outputs"]] == meta["encoder"]["outputs"]
    with pytest.raises(InferenceServerException) as info:
        triton.get_model_metadata("nope")
    assert info.value.status() == "404" and "unknown model" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        triton.get_model_metadata("vae-encoder", model_version="999")
    assert info.value.status() == "404"


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_tritonclient_decoder(triton, model_dir, binary_in, binary_out) -> None:
    z = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    tensor = httpclient.InferInput("z", list(z.shape), "FP32")
    tensor.set_data_from_numpy(z, binary_data=binary_in)
    wanted = httpclient.InferRequestedOutput("image", binary_data=binary_out)
    result = triton.infer("vae-decoder", [tensor], outputs=[wanted], request_id="dec-1")
    response = result.get_response()
    assert response["id"] == "dec-1" and response["model_name"] == "vae-decoder"
    assert response["model_version"] == metadata(model_dir, "vae")["version"]
    image = result.as_numpy("image")
    assert image.shape == (5, 1, 28, 28) and image.dtype == np.float32
    expected = reference(model_dir, "vae", "decoder", z)["image"]
    # Binary is bit-exact; JSON carries 9 significant digits, which round-trip float32.
    assert np.array_equal(image, expected)


def test_tritonclient_all_outputs_binary_by_default(triton, model_dir) -> None:
    """No outputs named: tritonclient asks for every output in binary (binary_data_output)."""
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    tensor = httpclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = triton.infer("vae-encoder", [tensor])
    expected = reference(model_dir, "vae", "encoder", x)
    for name in ("mu", "log_var"):
        assert np.array_equal(result.as_numpy(name), expected[name])
        assert "binary_data_size" in result.get_output(name)["parameters"]


def test_tritonclient_outputs_selection(triton, model_dir) -> None:
    x = np.random.default_rng(2).random((2, 1, 28, 28), dtype=np.float32)
    tensor = httpclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    result = triton.infer(
        "vae-encoder", [tensor], outputs=[httpclient.InferRequestedOutput("log_var")]
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["log_var"]
    assert result.as_numpy("mu") is None
    expected = reference(model_dir, "vae", "encoder", x)["log_var"]
    assert np.array_equal(result.as_numpy("log_var"), expected)
    # The AE's encoder has one output, z.
    result = triton.infer("ae-encoder", [tensor])
    assert np.array_equal(result.as_numpy("z"), reference(model_dir, "ae", "encoder", x)["z"])


def test_tritonclient_pipeline_is_encode(triton, http, model_dir) -> None:
    """Image files in (BYTES), /encode's preparation, the encoding out: as /encode says."""
    files = digits(3)
    for shape in ([3], [3, 1]):  # a Triton client with max_batch_size sends [N, 1]
        tensor = httpclient.InferInput("file", shape, "BYTES")
        tensor.set_data_from_numpy(np.array(files, dtype=np.object_).reshape(shape))
        result = triton.infer("vae", [tensor])
        for i, data in enumerate(files):
            rest = http.post("/encode", files={"file": ("d.png", data)}).json()
            assert np.allclose(result.as_numpy("mu")[i], rest["mu"], atol=1e-6)
            assert np.allclose(result.as_numpy("log_var")[i], rest["log_var"], atol=1e-6)
    tensor = httpclient.InferInput("file", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(files[:1], dtype=np.object_))
    result = triton.infer("ae", [tensor], parameters={"preprocess": "none"})
    rest = http.post("/encode?model=ae&preprocess=none", files={"file": ("d.png", files[0])})
    assert np.allclose(result.as_numpy("z")[0], rest.json()["z"], atol=1e-6)


def test_tritonclient_error_is_an_exception_with_the_message(triton) -> None:
    tensor = httpclient.InferInput("z", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException) as info:
        triton.infer("vae-decoder", [tensor])
    assert info.value.status() == "400" and "shape" in info.value.message()


# --- KServe's client ------------------------------------------------------------------------


def test_kserve_rest_client_v2(server, model_dir) -> None:
    try:
        from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    except ImportError as exc:
        pytest.skip(f"kserve's client is not installed ({exc}): see requirements/kserve-client.txt")
    base = server[0]
    z = np.random.default_rng(3).standard_normal((4, 2)).astype(np.float32)
    expected = reference(model_dir, "ae", "decoder", z)["image"]

    async def calls() -> list:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            out = [
                await client.is_server_live(base),
                await client.is_server_ready(base),
                await client.is_model_ready(base, "ae-decoder"),
                await client.is_model_ready(base, "nope"),
            ]
            for binary in (True, False):
                tensor = InferInput(name="z", shape=list(z.shape), datatype="FP32")
                tensor.set_data_from_numpy(z, binary_data=binary)
                request = InferRequest(
                    model_name="ae-decoder",
                    infer_inputs=[tensor],
                    request_id=f"kserve-{binary}",
                    parameters={"binary_data_output": True} if binary else None,
                )
                out.append(await client.infer(base, request, model_name="ae-decoder"))
            return out
        finally:
            await client.close()

    live, ready, model_ready, unknown_ready, *responses = asyncio.run(calls())
    assert live is True and ready is True and model_ready is True and unknown_ready is False
    for response, binary in zip(responses, (True, False), strict=True):
        assert response.id == f"kserve-{binary}" and response.model_name == "ae-decoder"
        (output,) = response.outputs
        assert output.name == "image" and output.shape == [4, 1, 28, 28]
        assert np.array_equal(np.asarray(output.as_numpy(), np.float32), expected)


# --- the service's plumbing: request ids, access log, metrics, limits -------------------------


def test_request_id_access_log_and_metrics(http, server) -> None:
    body, headers = binary_request(
        {
            "inputs": [
                {
                    "name": "z",
                    "shape": [2, 2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
            ]
        },
        np.zeros((2, 2), np.float32).tobytes(),
    )
    r = http.post(
        "/v2/models/vae-decoder/infer", content=body, headers={**headers, "X-Request-ID": "oip-7"}
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "oip-7"
    assert r.headers["content-type"] == "application/json"  # nothing asked for in binary
    log_path = server[2]
    entry = None
    for _ in range(50):  # the log line is written after the response: poll, bounded
        entries = [
            json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
        ]
        entry = next((e for e in entries if e.get("request_id") == "oip-7"), None)
        if entry:
            break
        time.sleep(0.1)
    assert entry is not None
    assert entry["route"] == "/v2/models/{name}/infer" and entry["protocol"] == "oip"
    assert entry["status"] == 200 and entry["method"] == "POST"
    http.get("/healthz")
    text = http.get("/metrics").text
    assert 'vae_protocol_requests_total{protocol="oip",status="200"}' in text
    assert 'vae_protocol_requests_total{protocol="rest",status="200"}' in text
    assert (
        'vae_http_requests_total{method="POST",route="/v2/models/{name}/infer",status="200"}'
        in text
    )
    assert 'vae_inference_batch_size_count{graph="decoder",model="vae"}' in text


def test_health_and_metadata_bodies(http) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2/models/vae-decoder/ready").json() == {"name": "vae-decoder", "ready": True}
    meta = http.get("/v2/models/vae-decoder").json()
    version = meta["versions"][0]
    assert http.get(f"/v2/models/vae-decoder/versions/{version}").json() == meta
    assert http.get(f"/v2/models/vae-decoder/versions/{version}/ready").status_code == 200
    body = {"inputs": [{"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [0, 0]}]}
    r = http.post(f"/v2/models/vae-decoder/versions/{version}/infer", json=body)
    assert r.status_code == 200 and r.json()["model_version"] == version
    assert "id" not in r.json()  # none asked: none echoed


def test_unknown_parameters_are_ignored(http) -> None:
    body = {
        "id": "p1",
        "model_name": "what kserve's client adds",
        "parameters": {"priority": 3, "custom": {"x": [1]}},
        "inputs": [
            {
                "name": "z",
                "shape": [1, 2],
                "datatype": "FP32",
                "parameters": {"foo": "bar"},
                "data": [[0.5, -0.5]],
            }
        ],
        "outputs": [{"name": "image", "parameters": {"classification": 0}}],
    }
    r = http.post("/v2/models/vae-decoder/infer", json=body)
    assert r.status_code == 200 and r.json()["id"] == "p1"
    (out,) = r.json()["outputs"]
    assert out["shape"] == [1, 1, 28, 28] and len(out["data"]) == 784


def test_json_data_flat_or_nested_and_bytes_as_base64(http) -> None:
    z = [[0.25, -1.0], [2.0, 0.0]]
    flat = {
        "inputs": [
            {
                "name": "z",
                "shape": [2, 2],
                "datatype": "FP32",
                "data": [v for row in z for v in row],
            }
        ]
    }
    nested = {"inputs": [{"name": "z", "shape": [2, 2], "datatype": "FP32", "data": z}]}
    a = http.post("/v2/models/vae-decoder/infer", json=flat).json()
    b = http.post("/v2/models/vae-decoder/infer", json=nested).json()
    assert a["outputs"] == b["outputs"]
    data = digits(1)[0]
    body = {
        "inputs": [
            {
                "name": "file",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(data).decode()],
            }
        ]
    }
    r = http.post("/v2/models/vae/infer", json=body)
    assert r.status_code == 200
    mu = next(o for o in r.json()["outputs"] if o["name"] == "mu")["data"]
    rest = http.post("/encode", files={"file": ("d.png", data)}).json()
    assert np.allclose(mu, rest["mu"], atol=1e-6)


def test_binary_both_ways_by_hand(http, model_dir) -> None:
    """The extension byte by byte: JSON length header in, per-output binary_data out."""
    z = np.array([[0.5, 0.25]], np.float32)
    body, headers = binary_request(
        {
            "inputs": [
                {
                    "name": "z",
                    "shape": [1, 2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 8},
                }
            ],
            "outputs": [{"name": "image", "parameters": {"binary_data": True}}],
        },
        z.tobytes(),
    )
    r = http.post("/v2/models/vae-decoder/infer", content=body, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    header, rest = split_binary(r)
    (out,) = header["outputs"]
    assert out["parameters"]["binary_data_size"] == len(rest) == 784 * 4 and "data" not in out
    image = np.frombuffer(rest, "<f4").reshape(out["shape"])
    assert np.array_equal(image, reference(model_dir, "vae", "decoder", z)["image"])


def _z(shape, data=None, datatype="FP32", **extra):
    tensor = {"name": "z", "shape": shape, "datatype": datatype, **extra}
    if data is not None:
        tensor["data"] = data
    return {"inputs": [tensor]}


NAN_BINARY = np.array([[np.nan, 0]], np.float32).tobytes()
BAD_REQUESTS = {
    "shape mismatch": (_z([1, 3], [0, 0, 0]), None, "shape"),
    "rank mismatch": (_z([2], [0, 0]), None, "shape"),
    "datatype mismatch": (_z([1, 2], [0, 0], "FP64"), None, "datatype"),
    "unknown datatype": (_z([1, 2], [0, 0], "FLOAT"), None, "datatype"),
    "too few elements": (_z([1, 2], [0]), None, "elements"),
    "too many elements": (_z([1, 2], [[0, 0], [0, 0]]), None, "elements"),
    "ragged data": (_z([2, 2], [[0, 0], [0]]), None, "elements"),
    "strings for FP32": (_z([1, 2], ["0", "1"]), None, "numbers"),
    "booleans for FP32": (_z([1, 2], [True, False]), None, "numbers"),
    "a value too big": (_z([1, 2], [1e30, 0]), None, "within"),
    "NaN in binary": (
        _z([1, 2], parameters={"binary_data_size": 8}),
        NAN_BINARY,
        "NaN",
    ),
    "batch over VAE_MAX_BATCH": (
        _z([MAX_BATCH + 1, 2], [0.0] * (2 * MAX_BATCH + 2)),
        None,
        "VAE_MAX_BATCH",
    ),
    "batch of zero": (_z([0, 2], []), None, "at least 1"),
    "unknown input": (
        {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0, 0]}]},
        None,
        "no input",
    ),
    "no inputs": ({"inputs": []}, None, "inputs"),
    "unknown output": ({**_z([1, 2], [0, 0]), "outputs": [{"name": "nope"}]}, None, "no output"),
    "binary part shorter than declared": (
        _z([1, 2], parameters={"binary_data_size": 8}),
        b"\x00" * 4,
        "binary_data_size",
    ),
    "binary size not the shape's": (
        _z([1, 2], parameters={"binary_data_size": 4}),
        b"\x00" * 4,
        "needs 8",
    ),
    "bytes left over": (_z([1, 2], [0, 0]), b"\x00" * 8, "binary data"),
    "id not a string": ({**_z([1, 2], [0, 0]), "id": 7}, None, "'id'"),
    "binary_data_output not a boolean": (
        {**_z([1, 2], [0, 0]), "parameters": {"binary_data_output": "yes"}},
        None,
        "binary_data_output",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_400(http, case) -> None:
    body, binary, words = BAD_REQUESTS[case]
    if binary is None:
        r = http.post("/v2/models/vae-decoder/infer", json=body)
    else:
        content, headers = binary_request(body, binary)
        r = http.post("/v2/models/vae-decoder/infer", content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"], r.json()


@pytest.mark.parametrize(
    "content, headers, words",
    [
        (b'{"inputs": [', {}, "JSON"),
        (b"\xff\xfe not utf-8", {}, "JSON"),
        (b"[" * 30_000 + b"]" * 30_000, {}, "JSON"),  # nested past the recursion limit
        (
            b'{"inputs": [{"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [NaN, 0]}]}',
            {},
            "NaN",
        ),
        (
            b'{"inputs": [{"name": "z", "shape": [1, 2], "datatype": "FP32", '
            b'"data": [Infinity, 0]}]}',
            {},
            "Infinity",
        ),
        (b'{"inputs": []}', {HEADER: "1000"}, "body has only 14 bytes"),
        (b'{"inputs": []}', {HEADER: "-1"}, HEADER),
        (b'{"inputs": []}', {HEADER: "ten"}, HEADER),
        (b"not json" + b"\x00" * 8, {HEADER: "8"}, "JSON"),
        (b'{"inputs": []}', {"Content-Encoding": "gzip"}, "Content-Encoding"),
    ],
    ids=[
        "truncated",
        "not-utf8",
        "deep",
        "nan",
        "infinity",
        "header-beyond-body",
        "header-negative",
        "header-not-a-number",
        "header-not-json",
        "gzip",
    ],
)
def test_malformed_bodies_are_400(http, content, headers, words) -> None:
    r = http.post("/v2/models/vae-decoder/infer", content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"], r.json()


def test_bad_image_files_are_400(http) -> None:
    def files(*elements: bytes, shape=None) -> httpx.Response:
        raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
        body = {
            "inputs": [
                {
                    "name": "file",
                    "shape": shape or [len(elements)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
        content, headers = binary_request(body, raw)
        return http.post("/v2/models/vae/infer", content=content, headers=headers)

    good = digits(1)[0]
    for r, words in [
        (files(b"not an image"), "file"),
        (files(b""), "file"),
        (files(good, shape=[2]), "elements"),
        (files(good, good, shape=[1]), "more than"),
    ]:
        assert r.status_code == 400 and words in r.json()["error"], r.text
    # A length prefix that promises more than there is.
    raw = struct.pack("<I", 1000) + good[:10]
    declared = {"binary_data_size": len(raw)}
    content, headers = binary_request(
        {"inputs": [{"name": "file", "shape": [1], "datatype": "BYTES", "parameters": declared}]},
        raw,
    )
    r = http.post("/v2/models/vae/infer", content=content, headers=headers)
    assert r.status_code == 400 and "declares 1000 bytes" in r.json()["error"]
    # A preprocess the pipeline does not know.
    raw = struct.pack("<I", len(good)) + good
    declared = {"binary_data_size": len(raw)}
    content, headers = binary_request(
        {
            "inputs": [{"name": "file", "shape": [1], "datatype": "BYTES", "parameters": declared}],
            "parameters": {"preprocess": "sharpen"},
        },
        raw,
    )
    r = http.post("/v2/models/vae/infer", content=content, headers=headers)
    assert r.status_code == 400 and "preprocess" in r.json()["error"]
    # JSON BYTES that are not valid base64.
    body = {
        "inputs": [
            {
                "name": "file",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"content_type": "base64"},
                "data": ["%%%"],
            }
        ]
    }
    r = http.post("/v2/models/vae/infer", json=body)
    assert r.status_code == 400 and "base64" in r.json()["error"]


def test_unknown_model_version_and_route_are_404(http) -> None:
    body = _z([1, 2], [0, 0])
    for path in (
        "/v2/models/nope/infer",
        "/v2/models/vae-decoder/versions/999/infer",
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/vae-decoder/versions/999",
        "/v2/nothing-here",
    ):
        r = http.post(path, json=body) if path.endswith("infer") else http.get(path)
        assert r.status_code == 404 and set(r.json()) == {"error"}, (path, r.text)
    r = http.get("/v2/models/vae-decoder/infer")
    assert r.status_code == 405 and set(r.json()) == {"error"}


def test_too_large_is_413_with_an_error_body(http) -> None:
    big = b"{" + b" " * MAX_BODY + b"}"
    r = http.post("/v2/models/vae-decoder/infer", content=big)
    assert r.status_code == 413 and str(MAX_BODY) in r.json()["error"]

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(8):
            yield b" " * (MAX_BODY // 4)

    r = http.post("/v2/models/vae-decoder/infer", content=chunks())
    assert r.status_code == 413 and set(r.json()) == {"error"}


def test_the_rest_api_keeps_detail(http) -> None:
    r = http.get("/models/nope")
    assert r.status_code == 404 and "detail" in r.json()


# --- in process: readiness, the scheduler, the middleware's own errors --------------------------


def test_not_ready_is_503(model_dir) -> None:
    client = make_client(model_dir)  # lifespan not entered: no models loaded
    assert client.get("/v2/health/live").json() == {"live": True}
    for r in (
        client.get("/v2/health/ready"),
        client.get("/v2/models/vae"),
        client.get("/v2/models/vae/ready"),
        client.post("/v2/models/vae-decoder/infer", json=_z([1, 2], [0, 0])),
    ):
        assert r.status_code == 503 and set(r.json()) == {"error"}, r.text


def test_inference_runs_through_the_scheduler(client, monkeypatch) -> None:
    """Like the REST routes: the scheduler decides inline, in turns or in the thread pool."""
    scheduler = client.app.state.scheduler
    seen = []
    original = scheduler.run

    async def run(size, work, *args, **kwargs):
        seen.append((size, work.__name__))
        return await original(size, work, *args, **kwargs)

    monkeypatch.setattr(scheduler, "run", run)
    for n in (16, 17):
        body = _z([n, 2], [0.0] * (2 * n))
        assert client.post("/v2/models/vae-decoder/infer", json=body).status_code == 200
    work = [(size.images, size.small) for size, name in seen if name == "execute"]
    assert work == [(16, True), (17, False)]  # 17 images: more than the loop takes


def test_middleware_refusals_speak_the_protocol(model_dir) -> None:
    from fastapi.testclient import TestClient

    from service.api.metrics import Metrics
    from service.api.middleware import ConcurrencyLimitMiddleware, RequestContextMiddleware
    from service.app import create_app
    from service.process.settings import Settings

    busy = TestClient(ConcurrencyLimitMiddleware(create_app(Settings(model_dir=model_dir)), 0))
    r = busy.post("/v2/models/vae-decoder/infer", json={})
    assert r.status_code == 503 and "VAE_MAX_CONCURRENCY" in r.json()["error"]
    assert busy.get("/v2/health/ready").status_code == 503  # exempt, but not started here
    assert busy.get("/v2/health/live").status_code == 200  # probes are never refused for load
    assert "detail" in busy.get("/models").json()

    async def broken(scope, receive, send):
        raise RuntimeError("boom")

    failing = TestClient(
        RequestContextMiddleware(broken, Metrics(), access_log=False), raise_server_exceptions=False
    )
    assert set(failing.get("/v2/models/x").json()) == {"error"}
    assert set(failing.get("/models/x").json()) == {"detail"}


def test_docs_show_the_protocol(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    ):
        assert path in paths, path
    infer = paths["/v2/models/{name}/infer"]["post"]
    body = infer["requestBody"]["content"]["application/json"]["schema"]
    assert "inputs" in body["properties"] and "$ref" not in json.dumps(body)
    assert set(infer["responses"]["200"]["content"]) == {
        "application/json",
        "application/octet-stream",
    }


# --- fuzz: nothing a client sends is a 5xx ----------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
TENSOR = st.fixed_dictionaries(
    {"name": st.sampled_from(["z", "image", "file", "x"]),
     "datatype": st.sampled_from(["FP32", "FP64", "BYTES", "INT8", "nope"]),
     "shape": st.lists(st.integers(-2, 40), max_size=5)},
    optional={"data": JSON_VALUES,
              "parameters": st.fixed_dictionaries({}, optional={
                  "binary_data_size": st.integers(-1, 64) | JSON_VALUES,
                  "content_type": st.sampled_from(["base64", "utf8"])})},
)  # fmt: skip
REQUEST = st.fixed_dictionaries(
    {"inputs": st.lists(TENSOR, max_size=3) | JSON_VALUES},
    optional={"id": JSON_VALUES, "parameters": JSON_VALUES,
              "outputs": st.lists(st.fixed_dictionaries({"name": JSON_VALUES}), max_size=2)},
)  # fmt: skip


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(
    model=st.sampled_from(["vae-decoder", "vae-encoder", "vae", "ae-encoder"]),
    document=REQUEST,
    tail=st.binary(max_size=64),
    header=st.none() | st.integers(-1, 400).map(str) | st.text(max_size=4),
)
def test_fuzzed_requests_are_never_a_5xx(client, model, document, tail, header) -> None:
    text = json.dumps(document).encode()
    headers = {} if header is None else {HEADER: header if header.isascii() else "x"}
    if header is not None and header.isdigit():
        headers[HEADER] = str(min(int(header), len(text)))
    r = client.post(f"/v2/models/{model}/infer", content=text + tail, headers=headers)
    assert r.status_code in (200, 400, 404, 413), (r.status_code, r.text)
    if r.status_code != 200:
        assert set(r.json()) == {"error"}


# --- bench/oip.py -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
def test_bench_oip_quick_run(tmp_path) -> None:
    """`python -m bench.oip` as docs/scaling.md runs it, cut down: every case answers, no errors."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.oip", "--duration", "1", "--warmup", "0", "--rounds", "1",
         "--concurrency", "1", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "oip.json").read_text())
    assert {r["name"] for r in data["results"]} == set(data["descriptions"])
    assert all(r["rps"] > 0 and not sum(r["errors"].values()) for r in data["results"])
    (ratio,) = data["ratios"]
    assert ratio["concurrency"] == 1 and ratio["ratio"] > 0
