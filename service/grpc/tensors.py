"""gRPC tensors to and from the REST face's codec (service/api/oip/codec.py): one decoder.

A `ModelInferRequest` becomes the codec's `InferRequest`, its inputs `RequestInput`s: raw
inputs (`raw_input_contents`, one entry per input, all or none) as the binary part the codec
decodes for binary tensor data, typed ones (`contents.fp32_contents`, `bytes_contents`) as the
element list it decodes for JSON data. The model's `check` then decodes both through the same
`decode_fp32` / `decode_bytes` as /v2 over HTTP, with the same limits and messages.

Responses answer in kind, as tritonclient's `as_numpy` reads them: raw outputs
(`raw_output_contents`) when the request's inputs were raw, typed contents otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.api.oip.codec import (
    DATATYPES,
    InferRequest,
    Output,
    RequestInput,
    RequestOutput,
    bad_request,
    parse_shape,
)
from service.grpc.messages import ModelInferResponse

# The InferTensorContents field that holds each datatype's elements (BF16 has none).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP16": None,
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BF16": None,
    "BYTES": "bytes_contents",
}
_ALL_FIELDS = sorted({f for f in CONTENTS_FIELD.values() if f is not None})


def parameter_value(parameter: Any) -> Any:
    """An InferParameter's value (bool, int, str or float), None when none is set."""
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def parameters(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in mapping.items()}


def _typed_elements(tensor: Any, datatype: str, where: str) -> list[Any]:
    """The typed elements of one input: the contents field its datatype names, no other."""
    expected = CONTENTS_FIELD[datatype]
    contents = tensor.contents
    given = [name for name in _ALL_FIELDS if len(getattr(contents, name))]
    wrong = [name for name in given if name != expected]
    if wrong or expected is None:
        wanted = f"contents.{expected}" if expected else "raw_input_contents"
        raise bad_request(
            f"{where}: {datatype} elements go in {wanted}, the request has "
            f"{', '.join('contents.' + name for name in wrong) or 'typed contents'}"
        )
    return list(getattr(contents, expected)) if expected in given else []


def infer_request(message: Any) -> InferRequest:
    """A ModelInferRequest as the codec's InferRequest (input data not decoded yet); an
    OipError(400) for what the codec's parser would refuse, and for raw inputs that do not
    match the inputs one to one."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise bad_request(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs: "
            "one per input, in input order"
        )
    if not message.inputs:
        raise bad_request("'inputs' must name at least one input tensor")
    inputs: list[RequestInput] = []
    for i, tensor in enumerate(message.inputs):
        if not tensor.name:
            raise bad_request(f"inputs[{i}]: 'name' must be a non-empty string")
        where = f"input {tensor.name!r}"
        datatype = tensor.datatype
        if datatype not in DATATYPES:
            raise bad_request(
                f"{where}: unknown datatype {datatype!r:.40}; the protocol's are "
                + ", ".join(DATATYPES)
            )
        shape = parse_shape(list(tensor.shape), where)
        item = RequestInput(
            tensor.name,
            datatype,
            shape,
            parameters(tensor.parameters),
            data_label=f"contents.{CONTENTS_FIELD[datatype]}",
            raw_label=f"raw_input_contents[{i}]",
        )
        if raw:
            if tensor.HasField("contents"):
                raise bad_request(f"{where}: has both contents and raw_input_contents[{i}]")
            item.raw = memoryview(raw[i])
        else:
            item.data = _typed_elements(tensor, datatype, where)
        inputs.append(item)
    outputs = [RequestOutput(o.name, None) for o in message.outputs] or None
    if outputs is not None:
        for i, output in enumerate(outputs):
            if not output.name:
                raise bad_request(f"outputs[{i}]: 'name' must be a non-empty string")
    return InferRequest(
        message.id or None, parameters(message.parameters), inputs, outputs, binary_output=False
    )


def input_bytes(message: Any) -> int:
    """About how many bytes of tensor data a request carries (where its checks should run)."""
    total = sum(len(entry) for entry in message.raw_input_contents)
    for tensor in message.inputs:
        if tensor.HasField("contents"):
            contents = tensor.contents
            total += 4 * len(contents.fp32_contents) + sum(map(len, contents.bytes_contents))
    return total


def set_parameter(parameter: Any, value: Any) -> None:
    """An InferParameter from a Python value (bool, int, float or str)."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[Output],
    raw: bool,
    parameters: Mapping[str, Any] | None = None,
) -> Any:
    """A ModelInferResponse: raw outputs (little-endian, row-major), or typed contents; the
    response's `parameters` (the sampler's prior and label) as InferParameters."""
    response = ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id or ""
    )
    for key, value in (parameters or {}).items():
        set_parameter(response.parameters[key], value)
    for out in outputs:
        tensor = response.outputs.add(name=out.name, datatype=out.datatype)
        tensor.shape.extend(out.array.shape)
        dtype = DATATYPES[out.datatype]
        if raw:
            response.raw_output_contents.append(np.ascontiguousarray(out.array, dtype).tobytes())
        else:
            field = CONTENTS_FIELD[out.datatype]
            assert field is not None  # the service's outputs are FP32
            getattr(tensor.contents, field).extend(out.array.ravel().tolist())
    return response
