"""Open Inference Protocol bodies (kserve/open-inference-protocol, inference_rest.md), for /docs.

The metadata and health routes answer through these models; the inference route reads and
writes its bodies itself (service.api.oip.codec: JSON plus binary tensor data), so these only
document it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Parameters = dict[str, Any]
_OPEN = ConfigDict(extra="allow")


class ServerMetadataResponse(BaseModel):
    name: str = Field(description="the server's name")
    version: str = Field(description="the server's version")
    extensions: list[str] = Field(description="protocol extensions it supports")


class ServerLiveResponse(BaseModel):
    live: bool


class ServerReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class MetadataTensor(BaseModel):
    name: str
    datatype: str = Field(description="FP32, BYTES, ...")
    shape: list[int] = Field(description="-1 for a variable dimension (the batch axis)")


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str] = Field(description="the versions a request may name (/versions/{v})")
    platform: str = Field(description="onnxruntime_onnx for a graph, ensemble for a pipeline")
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class RequestInput(BaseModel):
    model_config = _OPEN

    name: str
    shape: list[int] = Field(description="the whole batch's shape")
    datatype: str
    parameters: Parameters | None = Field(
        None, description="binary_data_size: this input's bytes after the JSON (binary data)"
    )
    data: list[Any] | None = Field(
        None, description="the elements, flat or nested, row-major (absent for binary data)"
    )


class RequestOutput(BaseModel):
    model_config = _OPEN

    name: str
    parameters: Parameters | None = Field(
        None, description="binary_data: true to receive this output as binary data"
    )


class InferenceRequest(BaseModel):
    """The JSON part of an inference request. With binary data, the header
    Inference-Header-Content-Length gives this part's length, and the binary data of each
    input with parameters.binary_data_size follows it, in input order."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {"name": "z", "shape": [2, 2], "datatype": "FP32", "data": [0, 0, 1, -1]}
                    ],
                    "outputs": [{"name": "image"}],
                }
            ]
        },
    )

    id: str | None = Field(None, description="echoed in the response")
    parameters: Parameters | None = Field(
        None,
        description="binary_data_output: true for every output as binary data; preprocess "
        "(pipelines): auto, digit, fit or none, as /encode's ?preprocess=; others are ignored",
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(
        None, description="the outputs to return (default: all)"
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = Field(
        None, description="binary_data_size: this output's bytes after the JSON"
    )
    data: list[Any] | None = Field(None, description="flat, row-major (absent for binary data)")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = Field(None, description="the request's id, when it had one")
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class OipErrorBody(BaseModel):
    """Every error of the protocol's routes."""

    error: str
