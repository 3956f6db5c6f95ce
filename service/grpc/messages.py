"""The protocol's messages, from the descriptor set `make grpc-proto` compiles from
proto/inference.proto, in a descriptor pool of this service's own.

Why not generated `_pb2` modules in the default pool: tritonclient and KServe register the same
names there (`inference.ModelInferRequest`, ...) and a second registration is an error, so a
process that imports either of them could not also import the service (tests, benchmarks,
a user's own code). A pool of its own keeps the service out of their way; the wire format is
the same, since it depends on names and field numbers only.

    request = ModelInferRequest.FromString(data)
    METHODS["ModelInfer"]   # (request class, response class)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_DIR = Path(__file__).resolve().parent / "proto"
DESCRIPTOR_SET = PROTO_DIR / "inference.binpb"
PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"


def _load_pool(path: Path) -> descriptor_pool.DescriptorPool:
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


POOL = _load_pool(DESCRIPTOR_SET)


def message(name: str) -> Any:
    """The message class of `inference.<name>` (nested: "ModelInferRequest.InferInputTensor")."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveRequest = message("ServerLiveRequest")
ServerLiveResponse = message("ServerLiveResponse")
ServerReadyRequest = message("ServerReadyRequest")
ServerReadyResponse = message("ServerReadyResponse")
ModelReadyRequest = message("ModelReadyRequest")
ModelReadyResponse = message("ModelReadyResponse")
ServerMetadataRequest = message("ServerMetadataRequest")
ServerMetadataResponse = message("ServerMetadataResponse")
ModelMetadataRequest = message("ModelMetadataRequest")
ModelMetadataResponse = message("ModelMetadataResponse")
ModelInferRequest = message("ModelInferRequest")
ModelInferResponse = message("ModelInferResponse")
InferParameter = message("InferParameter")
InferTensorContents = message("InferTensorContents")
RepositoryIndexResponse = message("RepositoryIndexResponse")
RepositoryModelLoadResponse = message("RepositoryModelLoadResponse")
RepositoryModelUnloadResponse = message("RepositoryModelUnloadResponse")

# Each RPC the service declares: (request class, response class), checked against the
# descriptor's service so that the two never disagree.
METHODS: dict[str, tuple[Any, Any]] = {}
for _method in POOL.FindServiceByName(SERVICE).methods:
    METHODS[_method.name] = (
        message_factory.GetMessageClass(_method.input_type),
        message_factory.GetMessageClass(_method.output_type),
    )
