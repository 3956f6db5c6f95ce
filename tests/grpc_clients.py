"""Real gRPC clients against a running service, each in a process of its own.

    python tests/grpc_clients.py triton HOST:PORT OUT_DIR
    python tests/grpc_clients.py kserve HOST:PORT OUT_DIR

tritonclient and kserve register the same protobuf names (`inference.ModelInferRequest`, ...)
in protobuf's default pool, and a process can hold only one of them: tests/test_oip.py imports
kserve in the pytest process, so tritonclient.grpc (and kserve's gRPC client, for symmetry) run
here, in a subprocess. Each writes what it saw to OUT_DIR/result.json (and tensors to
OUT_DIR/tensors.npz); the tests (tests/test_grpc.py, tests/test_grpc_kserve.py) assert on
them. The inputs are made here from fixed seeds: `inputs()` is the same for both sides.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

Z_SHAPE = (5, 2)


def inputs() -> dict[str, np.ndarray]:
    """The tensors every client sends: latent vectors, and images for the encoder."""
    rng = np.random.default_rng(7)
    return {
        "z": rng.standard_normal(Z_SHAPE).astype(np.float32),
        "image": rng.random((2, 1, 28, 28), dtype=np.float32),
    }


def descriptor_fields(descriptor: Any) -> dict[str, list[tuple[str, int, int, int]]]:
    """{message: [(field, number, type, label)]}, nested messages included: the wire format."""
    out: dict[str, list[tuple[str, int, int, int]]] = {}

    def walk(message: Any) -> None:
        out[message.full_name] = sorted(
            (f.name, f.number, f.type, 3 if f.is_repeated else 1) for f in message.fields
        )
        for nested in message.nested_types:
            walk(nested)

    for message in descriptor.message_types_by_name.values():
        walk(message)
    return out


def ours_against(their_file: Any) -> dict[str, Any]:
    """Our messages against a client's: fields only one side has (by name, number, type and
    label: the wire format), and our messages the client lacks."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from service.grpc import messages  # a pool of its own: no clash with the client's

    ours = descriptor_fields(messages.POOL.FindFileByName("inference.proto"))
    theirs = descriptor_fields(their_file)
    differ = {}
    for name, fields in ours.items():
        if name in theirs and theirs[name] != fields:
            differ[name] = {
                "only_ours": sorted(set(fields) - set(theirs[name])),
                "only_theirs": sorted(set(theirs[name]) - set(fields)),
            }
    return {"differ": differ, "missing": sorted(set(ours) - set(theirs))}


def triton(url: str, out: Path) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aioclient
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import InferenceServerException

    data = inputs()
    result: dict[str, Any] = {}
    tensors: dict[str, np.ndarray] = {}
    client = grpcclient.InferenceServerClient(url=url)
    result["live"] = client.is_server_live()
    result["ready"] = client.is_server_ready()
    result["model_ready"] = {m: client.is_model_ready(m) for m in ("vae-decoder", "vae", "nope")}
    result["server_metadata"] = client.get_server_metadata(as_json=True)
    result["metadata"] = {
        m: client.get_model_metadata(m, as_json=True) for m in ("vae-encoder", "vae-decoder", "vae")
    }
    version = result["metadata"]["vae-decoder"]["versions"][0]
    result["versioned_ready"] = client.is_model_ready("vae-decoder", model_version=version)
    result["wrong_version_ready"] = client.is_model_ready("vae-decoder", model_version="nope")

    def z_input() -> Any:
        tensor = grpcclient.InferInput("z", list(Z_SHAPE), "FP32")
        tensor.set_data_from_numpy(data["z"])
        return tensor

    response = client.infer("vae-decoder", [z_input()], request_id="triton-raw")
    tensors["decoder_raw"] = response.as_numpy("image")
    result["decoder_raw_id"] = response.get_response().id
    image = grpcclient.InferInput("image", list(data["image"].shape), "FP32")
    image.set_data_from_numpy(data["image"])
    wanted = [grpcclient.InferRequestedOutput("log_var")]
    response = client.infer("vae-encoder", [image], outputs=wanted)
    result["encoder_outputs"] = [o.name for o in response.get_response().outputs]
    tensors["encoder_log_var"] = response.as_numpy("log_var")

    # Typed tensors: tritonclient.grpc always sends raw bytes, so its own generated messages
    # and stub build the request with contents.fp32_contents.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(client._channel)
    typed = service_pb2.ModelInferRequest(model_name="vae-decoder", id="triton-typed")
    tensor = typed.inputs.add(name="z", datatype="FP32", shape=list(Z_SHAPE))
    tensor.contents.fp32_contents.extend(data["z"].ravel().tolist())
    reply = stub.ModelInfer(typed)
    result["typed_raw_outputs"] = len(reply.raw_output_contents)
    result["typed_id"] = reply.id
    tensors["decoder_typed"] = np.asarray(reply.outputs[0].contents.fp32_contents, np.float32)
    result["typed_shape"] = list(reply.outputs[0].shape)

    # The pipeline model: an image file (BYTES) in, as /encode.
    png = (Path(out) / "digit.png").read_bytes()
    file = grpcclient.InferInput("file", [1], "BYTES")
    file.set_data_from_numpy(np.array([png], dtype=np.object_))
    tensors["pipeline_mu"] = client.infer("vae", [file]).as_numpy("mu")

    # async_infer: the callback runs on the client's thread when the answer comes.
    done = threading.Event()
    answers: list[Any] = []

    def callback(result: Any, error: Any) -> None:  # called with these keywords
        answers.append((result, error))
        done.set()

    client.async_infer("vae-decoder", [z_input()], callback, request_id="triton-async")
    result["async_done"] = done.wait(30)
    reply, error = answers[0]
    result["async_error"] = None if error is None else str(error)
    tensors["decoder_async"] = reply.as_numpy("image")

    async def aio() -> np.ndarray:
        async with aioclient.InferenceServerClient(url=url) as aclient:
            tensor = aioclient.InferInput("z", list(Z_SHAPE), "FP32")
            tensor.set_data_from_numpy(data["z"])
            replies = await asyncio.gather(
                *(aclient.infer("vae-decoder", [tensor]) for _ in range(4))
            )
            return np.stack([r.as_numpy("image") for r in replies])

    tensors["decoder_aio"] = asyncio.run(aio())

    errors = {}
    bad = grpcclient.InferInput("z", [5, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((5, 3), np.float32))
    for name, model, tensors_in in (("shape", "vae-decoder", [bad]), ("model", "nope", [bad])):
        try:
            client.infer(model, tensors_in)
        except InferenceServerException as exc:
            errors[name] = [exc.status(), exc.message()]
    try:  # the repository extension answers, refusing: this server has no admin keys
        client.get_model_repository_index()
    except InferenceServerException as exc:
        errors["repository"] = [exc.status(), exc.message()]
    result["errors"] = errors
    result["proto_differences"] = ours_against(service_pb2.DESCRIPTOR)
    client.close()
    _write(out, result, tensors)


def kserve(url: str, out: Path) -> None:
    from kserve import InferenceGRPCClient, InferInput, InferRequest
    from kserve.protocol.grpc import grpc_predict_v2_pb2

    data = inputs()
    result: dict[str, Any] = {}
    tensors: dict[str, np.ndarray] = {}

    async def calls() -> None:
        client = InferenceGRPCClient(url=url, timeout=30)
        try:
            result["live"] = await client.is_server_live()
            result["ready"] = await client.is_server_ready()
            result["model_ready"] = await client.is_model_ready("vae-decoder")
            for form in ("raw", "typed"):
                tensor = InferInput(name="z", shape=list(Z_SHAPE), datatype="FP32")
                # binary_data=False: a list of numbers, sent as contents.fp32_contents
                tensor.set_data_from_numpy(data["z"], binary_data=form == "raw")
                request = InferRequest(
                    model_name="vae-decoder", infer_inputs=[tensor], request_id=f"kserve-{form}"
                )
                response = await client.infer(request)
                (output,) = response.outputs
                result[f"{form}_id"] = response.id
                result[f"{form}_model"] = response.model_name
                result[f"{form}_shape"] = list(output.shape)
                tensors[form] = np.asarray(output.as_numpy(), np.float32)
        finally:
            await client.close()

    asyncio.run(calls())
    result["proto_differences"] = ours_against(grpc_predict_v2_pb2.DESCRIPTOR)
    _write(out, result, tensors)


def _write(out: Path, result: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    np.savez(out / "tensors.npz", **tensors)


if __name__ == "__main__":
    kind, address, folder = sys.argv[1:4]
    {"triton": triton, "kserve": kserve}[kind](address, Path(folder))
