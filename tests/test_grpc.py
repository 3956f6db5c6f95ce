"""The Open Inference Protocol over gRPC on a real server (`python -m service` with
VAE_GRPC_PORT), through Triton's own `tritonclient.grpc` (in a process of its own:
tests/grpc_clients.py says why), plain grpcio with the service's messages, the health service
and server reflection as grpcurl uses it. Expected tensors come from onnxruntime on the model
files, and the pipeline's from the REST face's /v2 pipeline.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import psutil
import pytest
from conftest import digit_array, free_port, png_bytes, stop, wait_ready

grpc = pytest.importorskip("grpc", reason="grpcio (a serving dependency)")
from grpc_clients import Z_SHAPE, inputs  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from test_service_server import start  # noqa: E402

from service.grpc import messages as m  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLIENTS = Path(__file__).resolve().parent / "grpc_clients.py"
MAX_BODY = 65536
MAX_BATCH = 32
START_TIMEOUT = 60.0
OK = grpc.StatusCode.OK


class Server:
    """A running service: its process, HTTP base URL, gRPC address and log."""

    def __init__(self, process: subprocess.Popen, http_port: int, grpc_port: int, log: Path):
        self.process = process
        self.base = f"http://127.0.0.1:{http_port}"
        self.grpc_port = grpc_port
        self.address = f"127.0.0.1:{grpc_port}"
        self.log = log


@contextlib.contextmanager
def grpc_server(model_dir: Path, log: Path, **env: str):
    """`python -m service` with gRPC on a free port; stopped on exit."""
    http_port, grpc_port = free_port(), free_port()
    env = {"VAE_GRPC_PORT": str(grpc_port), **env}
    with open(log, "wb") as out:
        process = start(model_dir, http_port, out, **env)
        server = Server(process, http_port, grpc_port, log)
        try:
            wait_ready(process, server.base, log, START_TIMEOUT)
            yield server
        finally:
            stop(process)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("grpc") / "server.log"
    with grpc_server(
        model_dir, log, VAE_MAX_UPLOAD_BYTES=str(MAX_BODY), VAE_MAX_BATCH=str(MAX_BATCH)
    ) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as chan:
        yield chan


def call(channel, name: str, request, metadata=None, with_call: bool = False):
    """One RPC of inference.GRPCInferenceService with the service's own messages."""
    request_class, response_class = m.METHODS[name]
    method = channel.unary_unary(
        f"/{m.SERVICE}/{name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    if with_call:
        return method.with_call(request, metadata=metadata, timeout=30)
    return method(request, metadata=metadata, timeout=30)


def error_of(channel, name: str, request, metadata=None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(channel, name, request, metadata)
    return info.value


def reference(model_dir: Path, name: str, graph: str, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_dir / name / f"{graph}.onnx"))
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: x})
    return dict(zip(names, values, strict=True))


def decoder_request(z: np.ndarray, raw: bool = True, **fields):
    request = m.ModelInferRequest(model_name="vae-decoder", **fields)
    tensor = request.inputs.add(name="z", datatype="FP32", shape=list(z.shape))
    if raw:
        request.raw_input_contents.append(z.tobytes())
    else:
        tensor.contents.fp32_contents.extend(z.ravel().tolist())
    return request


def still_serving(channel, model_dir: Path) -> None:
    assert call(channel, "ServerLive", m.ServerLiveRequest()).live
    z = inputs()["z"]
    reply = call(channel, "ModelInfer", decoder_request(z))
    image = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(reply.outputs[0].shape)
    assert np.allclose(image, reference(model_dir, "vae", "decoder", z)["image"], atol=1e-6)


# --- the .proto ---------------------------------------------------------------------------


def test_descriptor_set_is_compiled_from_the_proto(tmp_path) -> None:
    """service/grpc/proto/inference.binpb is what `make grpc-proto` makes of inference.proto."""
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools (dev extra)")
    from google.protobuf import descriptor_pb2

    proto = REPO / "service" / "grpc" / "proto"
    out = tmp_path / "inference.binpb"
    args = ["protoc", f"-I{proto}", f"--descriptor_set_out={out}", str(proto / "inference.proto")]
    assert protoc.main(args) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    committed = descriptor_pb2.FileDescriptorSet.FromString(m.DESCRIPTOR_SET.read_bytes())
    assert fresh == committed, "run `make grpc-proto` and commit inference.binpb"
    assert set(m.METHODS) == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }


# --- tritonclient.grpc (its own process) --------------------------------------------------


@pytest.fixture(scope="module")
def triton_run(server, tmp_path_factory):
    """What tritonclient.grpc saw (tests/grpc_clients.py, `triton`): (result, tensors)."""
    # find_spec, not importorskip: importing tritonclient.grpc here would register Triton's
    # message names in this process, which KServe's client (tests/test_oip.py) also registers.
    if importlib.util.find_spec("tritonclient.grpc") is None:
        pytest.skip("tritonclient[grpc] (dev extra)")
    out = tmp_path_factory.mktemp("triton")
    (out / "digit.png").write_bytes(png_bytes(digit_array()))
    done = subprocess.run(
        [sys.executable, str(CLIENTS), "triton", server.address, str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    with np.load(out / "tensors.npz") as tensors:
        return result, dict(tensors)


def test_tritonclient_health_and_metadata(triton_run, model_dir) -> None:
    result, _ = triton_run
    assert result["live"] is True and result["ready"] is True
    assert result["model_ready"] == {"vae-decoder": True, "vae": True, "nope": False}
    assert result["versioned_ready"] is True and result["wrong_version_ready"] is False
    assert result["server_metadata"]["name"] == "vae-service"
    meta = json.loads((model_dir / "vae" / "metadata.json").read_text())
    decoder = result["metadata"]["vae-decoder"]
    assert decoder["versions"] == [meta["version"]] and decoder["platform"] == "onnxruntime_onnx"
    # int64 shapes come back as strings in tritonclient's JSON (protobuf's JSON mapping)
    assert decoder["inputs"] == [{"name": "z", "datatype": "FP32", "shape": ["-1", "2"]}]
    assert decoder["outputs"][0]["shape"] == ["-1", "1", "28", "28"]
    assert [t["name"] for t in result["metadata"]["vae-encoder"]["outputs"]] == ["mu", "log_var"]
    assert result["metadata"]["vae"]["platform"] == "ensemble"
    assert result["metadata"]["vae"]["inputs"][0]["datatype"] == "BYTES"


def test_tritonclient_infer_raw_typed_async(triton_run, model_dir) -> None:
    result, tensors = triton_run
    data = inputs()
    image = reference(model_dir, "vae", "decoder", data["z"])["image"]
    assert result["decoder_raw_id"] == "triton-raw"
    np.testing.assert_allclose(tensors["decoder_raw"], image, atol=1e-6)
    # typed in, typed out (tritonclient's own stub and messages)
    assert result["typed_id"] == "triton-typed" and result["typed_raw_outputs"] == 0
    assert result["typed_shape"] == list(image.shape)
    np.testing.assert_allclose(tensors["decoder_typed"].reshape(image.shape), image, atol=1e-6)
    assert result["async_done"] is True and result["async_error"] is None
    np.testing.assert_allclose(tensors["decoder_async"], image, atol=1e-6)
    assert tensors["decoder_aio"].shape == (4, *image.shape)
    np.testing.assert_allclose(tensors["decoder_aio"], np.stack([image] * 4), atol=1e-6)
    # requested outputs only, in order
    assert result["encoder_outputs"] == ["log_var"]
    log_var = reference(model_dir, "vae", "encoder", data["image"])["log_var"]
    np.testing.assert_allclose(tensors["encoder_log_var"], log_var, atol=1e-5)


def test_tritonclient_pipeline_is_the_rest_pipeline(triton_run, server) -> None:
    _, tensors = triton_run
    png = png_bytes(digit_array())
    file = {
        "name": "file",
        "shape": [1],
        "datatype": "BYTES",
        "data": [base64.b64encode(png).decode()],
        "parameters": {"content_type": "base64"},
    }
    body = {"inputs": [file]}
    rest = httpx.post(f"{server.base}/v2/models/vae/infer", json=body, timeout=30).json()
    mu = next(o for o in rest["outputs"] if o["name"] == "mu")
    np.testing.assert_allclose(tensors["pipeline_mu"].ravel(), mu["data"], atol=1e-6)


def test_tritonclient_errors_and_the_wire_format(triton_run) -> None:
    result, _ = triton_run
    status, message = result["errors"]["shape"]
    assert status == "StatusCode.INVALID_ARGUMENT" and "shape" in message
    status, message = result["errors"]["model"]
    assert status == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in message
    status, message = result["errors"]["repository"]
    assert status == "StatusCode.PERMISSION_DENIED" and "VAE_ADMIN_KEYS" in message
    # every message and field of ours has the name, number and type of Triton's, but the
    # protocol's own addition to ModelMetadataResponse, `properties` (6: a map, so an entry
    # message too), which Triton's lacks
    differences = result["proto_differences"]
    assert differences["missing"] == ["inference.ModelMetadataResponse.PropertiesEntry"]
    assert differences["differ"] == {
        "inference.ModelMetadataResponse": {
            "only_ours": [["properties", 6, 11, 3]],
            "only_theirs": [],
        }
    }


# --- plain grpcio -------------------------------------------------------------------------


def test_raw_and_typed_both_ways(channel, model_dir) -> None:
    z = inputs()["z"]
    image = reference(model_dir, "vae", "decoder", z)["image"]
    raw = call(channel, "ModelInfer", decoder_request(z, raw=True, id="r"))
    assert raw.id == "r" and raw.model_name == "vae-decoder" and len(raw.raw_output_contents) == 1
    assert list(raw.outputs[0].shape) == list(image.shape)
    assert not raw.outputs[0].contents.fp32_contents
    got = np.frombuffer(raw.raw_output_contents[0], np.float32).reshape(image.shape)
    np.testing.assert_allclose(got, image, atol=1e-6)
    typed = call(channel, "ModelInfer", decoder_request(z, raw=False))
    assert not typed.raw_output_contents and typed.outputs[0].datatype == "FP32"
    got = np.asarray(typed.outputs[0].contents.fp32_contents, np.float32).reshape(image.shape)
    np.testing.assert_allclose(got, image, atol=1e-6)


def test_typed_bytes_into_the_pipeline(channel) -> None:
    request = m.ModelInferRequest(model_name="vae")
    request.parameters["preprocess"].string_param = "none"
    tensor = request.inputs.add(name="file", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([png_bytes(digit_array())] * 2)
    reply = call(channel, "ModelInfer", request)
    assert [o.name for o in reply.outputs] == ["mu", "log_var"]
    mu = np.asarray(reply.outputs[0].contents.fp32_contents).reshape(2, -1)
    assert mu.shape == (2, 2) and np.array_equal(mu[0], mu[1])


def _malformed() -> dict[str, tuple[object, str, str]]:
    z = inputs()["z"]
    cases: dict[str, tuple[object, str, str]] = {}
    cases["unknown model"] = (
        m.ModelInferRequest(model_name="nope", inputs=[{"name": "z"}]),
        "NOT_FOUND",
        "unknown model 'nope'",
    )
    cases["unknown version"] = (
        decoder_request(z, model_version="nope"),
        "NOT_FOUND",
        "unknown version",
    )
    wrong_shape = decoder_request(z)
    wrong_shape.inputs[0].shape[:] = [5, 3]
    cases["wrong shape"] = (wrong_shape, "INVALID_ARGUMENT", "shape")
    wrong_type = decoder_request(z)
    wrong_type.inputs[0].datatype = "INT32"
    cases["wrong datatype"] = (wrong_type, "INVALID_ARGUMENT", "datatype FP32")
    unknown_type = decoder_request(z)
    unknown_type.inputs[0].datatype = "FLOAT"
    cases["unknown datatype"] = (unknown_type, "INVALID_ARGUMENT", "unknown datatype")
    short = decoder_request(z)
    short.raw_input_contents[0] = z.tobytes()[:-4]
    cases["byte count"] = (short, "INVALID_ARGUMENT", "raw_input_contents[0] is 36 bytes")
    extra = decoder_request(z)
    extra.raw_input_contents.append(b"\0" * 8)
    cases["raw entries"] = (extra, "INVALID_ARGUMENT", "2 entries for 1 inputs")
    few = decoder_request(z, raw=False)
    del few.inputs[0].contents.fp32_contents[-1]
    cases["typed count"] = (few, "INVALID_ARGUMENT", "contents.fp32_contents has 9 elements")
    wrong_field = decoder_request(z, raw=False)
    wrong_field.inputs[0].contents.int_contents.append(1)
    cases["contents field"] = (wrong_field, "INVALID_ARGUMENT", "go in contents.fp32_contents")
    nan = decoder_request(np.full(Z_SHAPE, np.nan, np.float32))
    cases["not finite"] = (nan, "INVALID_ARGUMENT", "NaN")
    batch = decoder_request(np.zeros((MAX_BATCH + 1, 2), np.float32))
    cases["batch"] = (batch, "INVALID_ARGUMENT", f"at most {MAX_BATCH} items")
    output = decoder_request(z, outputs=[{"name": "nope"}])
    cases["unknown output"] = (output, "INVALID_ARGUMENT", "has no output 'nope'")
    no_inputs = m.ModelInferRequest(model_name="vae-decoder")
    cases["no inputs"] = (no_inputs, "INVALID_ARGUMENT", "at least one input")
    bad_file = m.ModelInferRequest(model_name="vae")
    tensor = bad_file.inputs.add(name="file", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"not an image")
    cases["bad image"] = (bad_file, "INVALID_ARGUMENT", "input 'file'")
    return cases


MALFORMED = _malformed()


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_their_status(channel, model_dir, case) -> None:
    request, code, words = MALFORMED[case]
    error = error_of(channel, "ModelInfer", request)
    assert error.code().name == code, error.details()
    assert words in error.details()


def test_oversize_is_resource_exhausted_and_the_server_serves_on(channel, model_dir) -> None:
    big = np.zeros((MAX_BODY // 8 + 1, 2), np.float32)  # just over VAE_MAX_UPLOAD_BYTES
    error = error_of(channel, "ModelInfer", decoder_request(big))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(channel, model_dir)


def test_metadata_and_readiness(channel, model_dir) -> None:
    meta = json.loads((model_dir / "ae" / "metadata.json").read_text())
    reply = call(channel, "ModelMetadata", m.ModelMetadataRequest(name="ae-encoder"))
    assert reply.name == "ae-encoder" and list(reply.versions) == [meta["version"]]
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.inputs] == [
        ("image", "FP32", [-1, 1, 28, 28])
    ]
    assert call(channel, "ServerReady", m.ServerReadyRequest()).ready
    assert call(channel, "ModelReady", m.ModelReadyRequest(name="ae")).ready
    assert not call(channel, "ModelReady", m.ModelReadyRequest(name="nope")).ready
    error = error_of(channel, "ModelMetadata", m.ModelMetadataRequest(name="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = call(channel, "ServerMetadata", m.ServerMetadataRequest())
    assert info.name == "vae-service" and info.version


def test_rpcs_not_served_are_unimplemented(channel) -> None:
    method = channel.unary_unary(f"/{m.SERVICE}/ModelStatistics")
    with pytest.raises(grpc.RpcError) as info:
        method(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_follows_readiness(channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", m.SERVICE):
        assert stub.Check(health_pb2.HealthCheckRequest(service=service)).status == serving
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(watch).status == serving
    watch.cancel()


def test_reflection_serves_the_schema_grpcurl_needs(channel, model_dir) -> None:
    """As grpcurl does: list the services, read the descriptors, call with dynamic messages."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {m.SERVICE, "grpc.health.v1.Health"} <= services
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName(m.SERVICE)
    assert {method.name for method in service.methods} == set(m.METHODS)
    infer = service.FindMethodByName("ModelInfer")
    request_class = message_factory.GetMessageClass(infer.input_type)
    response_class = message_factory.GetMessageClass(infer.output_type)
    z = inputs()["z"]
    request = request_class(model_name="vae-decoder", raw_input_contents=[z.tobytes()])
    request.inputs.add(name="z", datatype="FP32", shape=list(z.shape))
    method = channel.unary_unary(
        f"/{m.SERVICE}/ModelInfer",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    reply = method(request, timeout=30)
    image = np.frombuffer(reply.raw_output_contents[0], np.float32)
    np.testing.assert_allclose(
        image, reference(model_dir, "vae", "decoder", z)["image"].ravel(), atol=1e-6
    )


def test_request_id_access_log_and_metrics(channel, server) -> None:
    z = inputs()["z"]
    _, outcome = call(
        channel, "ModelInfer", decoder_request(z), [("x-request-id", "grpc-abc")], with_call=True
    )
    assert ("x-request-id", "grpc-abc") in tuple(outcome.trailing_metadata())
    error_of(channel, "ModelInfer", m.ModelInferRequest(model_name="nope"))
    route = f"/{m.SERVICE}/ModelInfer"
    deadline = time.monotonic() + 10
    lines: list[dict] = []
    while time.monotonic() < deadline:
        lines = [
            json.loads(line)
            for line in server.log.read_text().splitlines()
            if line.startswith("{") and '"protocol":"grpc"' in line
        ]
        if any(line["request_id"] == "grpc-abc" for line in lines):
            break
        time.sleep(0.1)
    (ours,) = [line for line in lines if line["request_id"] == "grpc-abc"]
    assert ours["route"] == route and ours["status"] == 200 and ours["grpc_status"] == "OK"
    assert ours["method"] == "POST" and ours["client"].startswith("127.0.0.1:")
    assert any(line["status"] == 404 and line["grpc_status"] == "NOT_FOUND" for line in lines)
    text = httpx.get(f"{server.base}/metrics", timeout=10).text

    def value(pattern: str) -> float:
        match = re.search(pattern + r" ([0-9.e+]+)", text)
        assert match, pattern
        return float(match.group(1))

    assert value(r'vae_protocol_requests_total\{protocol="grpc",status="200"\}') >= 1
    assert value(r'vae_protocol_requests_total\{protocol="grpc",status="404"\}') >= 1
    assert (
        value(
            r'vae_http_requests_total\{method="POST",route="'
            + re.escape(route)
            + r'",status="200"\}'
        )
        >= 1
    )


# --- API keys, ports, workers (servers of their own) --------------------------------------


def test_api_keys_as_call_metadata(model_dir, tmp_path) -> None:
    log = tmp_path / "server.log"
    with grpc_server(model_dir, log, VAE_API_KEYS="s3cret", VAE_AUTH_MAX_FAILURES="3") as running:
        with grpc.insecure_channel(running.address) as chan:
            z = inputs()["z"]
            for metadata in (None, [("authorization", "Bearer nope")], [("x-api-key", "")]):
                error = error_of(chan, "ModelInfer", decoder_request(z), metadata)
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "s3cret" not in error.details()
            for metadata in ([("authorization", "Bearer s3cret")], [("x-api-key", "s3cret")]):
                assert call(chan, "ModelInfer", decoder_request(z), metadata).outputs
            # probes stay open (VAE_AUTH_PROBES=false), as /v2/health/* over HTTP
            assert call(chan, "ServerLive", m.ServerLiveRequest()).live
            assert call(chan, "ServerReady", m.ServerReadyRequest()).ready
            health = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            error = error_of(chan, "ModelMetadata", m.ModelMetadataRequest(name="vae"))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            # wrong keys lock the address out, as over HTTP (VAE_AUTH_MAX_FAILURES): then even
            # the right key waits
            for _ in range(2):
                error_of(chan, "ModelInfer", decoder_request(z), [("x-api-key", "wrong")])
            right = [("x-api-key", "s3cret")]
            error = error_of(chan, "ModelInfer", decoder_request(z), right)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many wrong keys" in error.details()
        assert "s3cret" not in running.log.read_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_grpc_port_in_use_is_an_error(model_dir, tmp_path, workers) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    log = tmp_path / "server.log"
    try:
        with open(log, "wb") as out:
            process = start(
                model_dir, free_port(), out, VAE_GRPC_PORT=str(port), VAE_WORKERS=str(workers)
            )
            try:
                process.wait(timeout=START_TIMEOUT)
            finally:
                stop(process)
    finally:
        taken.close()
    assert process.returncode not in (0, None)
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in log.read_text()


def listening_on(pid: int, port: int) -> bool:
    """Whether process `pid` has a TCP socket listening on `port` (any address)."""
    try:
        inodes = {
            link.split("[")[1].rstrip("]")
            for fd in Path(f"/proc/{pid}/fd").iterdir()
            if (link := str(fd.readlink())).startswith("socket:")
        }
        for name in ("tcp", "tcp6"):
            for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if fields[3] == "0A" and local_port == port and fields[9] in inodes:
                    return True
    except OSError:
        return False
    return False


def wait_for(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


@pytest.mark.slow
def test_every_worker_serves_grpc_and_a_replacement_does_too(model_dir, tmp_path) -> None:
    with grpc_server(
        model_dir, tmp_path / "server.log", VAE_WORKERS="2", VAE_ACCESS_LOG="false"
    ) as running:
        parent = running.process.pid

        def grpc_workers() -> set[int]:
            children = [c.pid for c in psutil.Process(parent).children()]
            return {pid for pid in children if listening_on(pid, running.grpc_port)}

        first = wait_for(lambda: len(pids := grpc_workers()) == 2 and pids, 60)
        assert first, running.log.read_text()
        assert not listening_on(parent, running.grpc_port)  # the parent only holds the port
        victim = min(first)
        psutil.Process(victim).kill()
        replaced = wait_for(lambda: len(p := grpc_workers()) == 2 and victim not in p and p, 60)
        assert replaced, running.log.read_text()
        with grpc.insecure_channel(running.address) as chan:
            assert call(chan, "ServerReady", m.ServerReadyRequest()).ready
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=30) == 0, running.log.read_text()


def test_sigterm_drains_grpc_health_first(model_dir, tmp_path) -> None:
    """SIGTERM: a health watcher sees NOT_SERVING, its stream ends, and the server exits 0
    well within VAE_GRACEFUL_TIMEOUT (an open Watch does not hold the drain)."""
    log = tmp_path / "server.log"
    with (
        grpc_server(model_dir, log, VAE_GRACEFUL_TIMEOUT="20") as running,
        grpc.insecure_channel(running.address) as chan,
    ):
        watch = health_pb2_grpc.HealthStub(chan).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=60
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert list(watch) == []  # then the stream ends, cleanly
        assert running.process.wait(timeout=30) == 0, running.log.read_text()
        assert time.monotonic() - started < 10


# --- the model repository extension (admin keys) ------------------------------------------

ADMIN = "adm1n-k3y-grpc"
MODEL_KEY = "m0del-k3y-grpc"


def test_repository_rpcs_with_admin_keys(tmp_path) -> None:
    """Index, load and unload over gRPC: admin keys only, as /v2/repository; a version loaded
    here is what ModelInfer's model_version reaches."""
    from harness.models import export_tiny_model

    root = tmp_path / "models"
    (root / "vae").mkdir(parents=True)
    for version in (1, 2):  # exported as "vae" elsewhere, then moved in (tests/test_lifecycle.py)
        export_tiny_model(tmp_path / str(version) / "vae", "vae")
        (tmp_path / str(version) / "vae").rename(root / "vae" / str(version))
    export_tiny_model(root / "ae", "ae")
    admin = [("authorization", f"Bearer {ADMIN}")]
    user = [("authorization", f"Bearer {MODEL_KEY}")]
    with (
        grpc_server(
            root, tmp_path / "server.log", VAE_ADMIN_KEYS=ADMIN, VAE_API_KEYS=MODEL_KEY
        ) as running,
        grpc.insecure_channel(running.address) as chan,
    ):
        index = m.METHODS["RepositoryIndex"][0]()
        assert error_of(chan, "RepositoryIndex", index).code() == grpc.StatusCode.UNAUTHENTICATED
        error = error_of(chan, "RepositoryIndex", index, user)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "admin key" in error.details()
        rows = {
            (r.name, r.version): r.state for r in call(chan, "RepositoryIndex", index, admin).models
        }
        assert rows[("vae", "2")] == "READY" and rows[("vae", "1")] == "UNAVAILABLE"

        load = m.METHODS["RepositoryModelLoad"][0](model_name="vae")
        load.parameters["version"].string_param = "1"
        call(chan, "RepositoryModelLoad", load, admin)
        meta = call(chan, "ModelMetadata", m.ModelMetadataRequest(name="vae-decoder"), user)
        assert "1" in list(meta.versions)
        z = inputs()["z"]
        reply = call(chan, "ModelInfer", decoder_request(z, model_version="1"), user)
        assert reply.model_version == "1"
        error = error_of(chan, "ModelInfer", decoder_request(z, model_version="7"), user)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        bad = m.METHODS["RepositoryModelLoad"][0](model_name="vae")
        bad.parameters["version"].string_param = "7"
        error = error_of(chan, "RepositoryModelLoad", bad, admin)
        assert (
            error.code() == grpc.StatusCode.INVALID_ARGUMENT and "failed to load" in error.details()
        )

        unload = m.METHODS["RepositoryModelUnload"][0](model_name="ae")
        call(chan, "RepositoryModelUnload", unload, admin)
        assert not call(chan, "ModelReady", m.ModelReadyRequest(name="ae-decoder"), user).ready
        call(
            chan, "RepositoryModelLoad", m.METHODS["RepositoryModelLoad"][0](model_name="ae"), admin
        )
        assert call(chan, "ModelReady", m.ModelReadyRequest(name="ae-decoder"), user).ready


def test_repository_rpcs_are_off_without_admin_keys(channel) -> None:
    index = m.METHODS["RepositoryIndex"][0]()
    error = error_of(channel, "RepositoryIndex", index)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "VAE_ADMIN_KEYS" in error.details()
