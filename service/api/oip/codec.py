"""Open Inference Protocol tensors on the wire: JSON and the binary tensor data extension.

A request body is a JSON object, optionally followed by binary tensor data (Triton's
`binary_tensor_data` extension): the `Inference-Header-Content-Length` header says how many
bytes of the body are JSON, and each input with `parameters.binary_data_size` takes that many
of the bytes after it, in input order. Responses are built the same way: outputs asked for in
binary (per output `parameters.binary_data`, or the request's `parameters.binary_data_output`)
follow the JSON header in output order, each with `parameters.binary_data_size`.

    request = parse_request(body, headers.get(HEADER_LENGTH))   # OipError(400) when malformed
    z = decode_fp32(request.inputs[0], limit=1e4)               # (N, z_dim) float32
    seed = decode_numeric(request.inputs[1], limit=2**63 - 1)   # any numeric type: INT64 here
    body, headers = encode_response("vae-decoder", "v1", request.id, [Output(...)])

Element encodings: numbers are little-endian and row-major (FP32: IEEE 754 binary32); BYTES is
each element as a 4-byte little-endian length then its bytes. JSON data may be flat or nested
(row-major either way); JSON BYTES elements are strings, taken as UTF-8 unless the input's
parameters say `"content_type": "base64"`. Everything a client can get wrong is an `OipError`
with the status the protocol gives it (400, 404, 413, 503), never anything else.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"
# The protocol's tensor data types, and the numpy type of each element (BYTES: Python bytes).
DATATYPES: dict[str, np.dtype[Any] | None] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": None,
    "BYTES": None,
}
FP32 = np.dtype("<f4")
_LENGTH = struct.Struct("<I")
# Shapes are small (this service's tensors have rank 1, 2 or 4); a bound keeps hostile ones cheap.
MAX_RANK = 8


class OipError(Exception):
    """A request the protocol refuses: `status` (400, 404, 413, 503) and a message for the
    `{"error": ...}` body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def bad_request(message: str) -> OipError:
    return OipError(400, message)


@dataclass
class RequestInput:
    """One input as the request declares it; its data is decoded later (`decode_fp32`,
    `decode_bytes`), once the model has checked its name, datatype and shape."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: dict[str, Any]
    data: Any = None  # JSON data: a (nested) list, or None when the data is binary
    raw: memoryview | None = None  # the binary part, when parameters.binary_data_size is set
    # What error messages call the two forms (gRPC: contents.fp32_contents, raw_input_contents[0]).
    data_label: str = "'data'"
    raw_label: str = "binary_data_size"

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass
class RequestOutput:
    name: str
    binary: bool | None  # parameters.binary_data, None when not said


@dataclass
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None  # None: every output of the model
    binary_output: bool  # parameters.binary_data_output

    def wants_binary(self, output: RequestOutput | None) -> bool:
        """Whether an output goes in binary: its own `binary_data`, else the request's
        `binary_data_output`, else JSON."""
        if output is not None and output.binary is not None:
            return output.binary
        return self.binary_output


@dataclass
class Output:
    """One output tensor of a response."""

    name: str
    datatype: str
    array: np.ndarray
    binary: bool
    parameters: dict[str, Any] = field(default_factory=dict)


# --- requests -------------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows (NaN and infinity are refused)")


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"{where}: 'parameters' must be a JSON object")
    return value


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool | None:
    value = parameters.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise bad_request(f"{where}: parameters.{key} must be true or false, not {value!r:.40}")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise bad_request(f"{where}: 'name' must be a non-empty string")
    return value


def parse_shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_RANK:
        raise bad_request(f"{where}: 'shape' must be a list of at most {MAX_RANK} integers")
    for dim in value:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise bad_request(
                f"{where}: 'shape' must hold non-negative integers, got {value!r:.80}"
            )
    return tuple(value)


def header_length(value: str | None, body_length: int) -> int | None:
    """The Inference-Header-Content-Length header: None without it, else the JSON part's size."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise bad_request(f"{HEADER_LENGTH} must be a non-negative integer, not {value!r:.40}")
    length = int(text)
    if length > body_length:
        raise bad_request(f"{HEADER_LENGTH} is {length} but the body has only {body_length} bytes")
    return length


def parse_request(body: bytes, json_length: str | None) -> InferRequest:
    """An inference request body (JSON, then any binary tensor data) as an InferRequest; an
    OipError(400) for anything malformed. Input data is not decoded here."""
    length = header_length(json_length, len(body))
    header = body if length is None else memoryview(body)[:length]
    try:
        document = json.loads(bytes(header), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        where = "the body" if length is None else f"the first {length} bytes of the body"
        raise bad_request(f"{where} must be the request's JSON object: {exc}") from None
    if not isinstance(document, dict):
        raise bad_request("the request must be a JSON object with 'inputs'")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request("'id' must be a string")
    parameters = _parameters(document.get("parameters"), "request")
    binary_output = _flag(parameters, "binary_data_output", "request") or False

    inputs_doc = document.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise bad_request("'inputs' must be a non-empty list of input tensors")
    rest = memoryview(body)[length:] if length is not None else memoryview(b"")
    offset = 0
    inputs: list[RequestInput] = []
    for i, item in enumerate(inputs_doc):
        where = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be a JSON object")
        name = _name(item.get("name"), where)
        where = f"input {name!r}"
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise bad_request(
                f"{where}: unknown datatype {datatype!r:.40}; the protocol's are "
                + ", ".join(DATATYPES)
            )
        shape = parse_shape(item.get("shape"), where)
        params = _parameters(item.get("parameters"), where)
        size = params.get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise bad_request(f"{where}: parameters.binary_data_size must be an integer >= 0")
            if "data" in item:
                raise bad_request(f"{where}: has both 'data' and parameters.binary_data_size")
            if offset + size > len(rest):
                hint = "" if length is not None else f" (no {HEADER_LENGTH} header)"
                raise bad_request(
                    f"{where}: binary_data_size is {size} but only {len(rest) - offset} bytes "
                    f"of binary data are left{hint}"
                )
            raw = rest[offset : offset + size]
            offset += size
        elif "data" not in item:
            raise bad_request(f"{where}: has neither 'data' nor parameters.binary_data_size")
        inputs.append(RequestInput(name, datatype, shape, params, item.get("data"), raw))
    if offset != len(rest):
        raise bad_request(
            f"{len(rest) - offset} bytes of binary data follow the JSON that no input's "
            "binary_data_size accounts for"
        )

    outputs: list[RequestOutput] | None = None
    outputs_doc = document.get("outputs")
    if outputs_doc is not None:
        if not isinstance(outputs_doc, list):
            raise bad_request("'outputs' must be a list of requested outputs")
        outputs = []
        for i, item in enumerate(outputs_doc):
            if not isinstance(item, dict):
                raise bad_request(f"outputs[{i}] must be a JSON object")
            name = _name(item.get("name"), f"outputs[{i}]")
            params = _parameters(item.get("parameters"), f"output {name!r}")
            outputs.append(RequestOutput(name, _flag(params, "binary_data", f"output {name!r}")))
        if not outputs:
            outputs = None
    return InferRequest(request_id, parameters, inputs, outputs, binary_output)


def _flatten(data: Any, depth: int, where: str) -> list[Any]:
    """A nested JSON list flattened row-major (at most `depth` levels: the shape's rank)."""
    if not isinstance(data, list):
        raise bad_request(f"{where}: 'data' must be a list")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                if len(stack) >= max(depth, 1):
                    raise bad_request(f"{where}: 'data' is nested deeper than its shape")
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def decode_numeric(tensor: RequestInput, limit: float) -> np.ndarray:
    """A numeric input (FP32, INT64, ...: any of DATATYPES but BOOL, BF16 and BYTES) as a
    C-contiguous array of its datatype and declared shape: the one decoder of every numeric
    input. Refuses (400) an element count that does not match the shape, anything but numbers
    (integer datatypes: integers), NaN, infinity and values beyond +-`limit`."""
    where = f"input {tensor.name!r}"
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None or dtype.kind not in "iuf":
        raise bad_request(f"{where}: {tensor.datatype} is not a numeric datatype")
    count = tensor.count
    if tensor.raw is not None:
        if len(tensor.raw) != count * dtype.itemsize:
            raise bad_request(
                f"{where}: {tensor.raw_label} is {len(tensor.raw)} bytes, shape "
                f"{list(tensor.shape)} of {tensor.datatype} needs {count * dtype.itemsize}"
            )
        array = np.frombuffer(tensor.raw, dtype=dtype).reshape(tensor.shape)
        _check_values(array, limit, where)
        return array
    values = _json_numbers(tensor, where, integers=dtype.kind in "iu")
    if values.size != count:
        raise bad_request(
            f"{where}: {tensor.data_label} has {values.size} elements, shape "
            f"{list(tensor.shape)} needs {count}"
        )
    _check_values(values, limit, where)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.size and (values.min().item() < info.min or values.max().item() > info.max):
            raise bad_request(f"{where}: a value is out of {tensor.datatype}'s range")
    return np.ascontiguousarray(values, dtype=dtype).reshape(tensor.shape)


def decode_fp32(tensor: RequestInput, limit: float) -> np.ndarray:
    """An FP32 input as a C-contiguous float32 array of its declared shape (decode_numeric)."""
    return decode_numeric(tensor, limit)


def _json_numbers(tensor: RequestInput, where: str, integers: bool = False) -> np.ndarray:
    """JSON data (flat or nested, row-major) as a numeric array: numbers only (no strings,
    booleans or nulls; with `integers`, integers only), float64, or int64 / uint64."""
    data = tensor.data
    kind = "integers" if integers else "numbers"
    if not isinstance(data, list):
        raise bad_request(f"{where}: {tensor.data_label} must be a list of {kind}")
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        values = None  # ragged nesting: flattened below
    if values is not None and values.dtype.kind in ("iu" if integers else "iuf"):
        return values if integers else values.astype(np.float64, copy=False)
    flat = _flatten(data, len(tensor.shape), where)
    allowed: type | tuple[type, ...] = int if integers else (int, float)
    for value in flat:
        if not isinstance(value, allowed) or isinstance(value, bool):
            raise bad_request(
                f"{where}: {tensor.datatype} {tensor.data_label} must hold {kind} only"
            )
    try:
        array = np.asarray(flat) if integers else np.asarray(flat, dtype=np.float64)
    except OverflowError:
        array = None
    if array is None or (flat and array.dtype.kind not in "iuf"):
        raise bad_request(f"{where}: a number in {tensor.data_label} is out of range")
    return array


def _check_values(array: np.ndarray, limit: float, where: str) -> None:
    if not array.size:
        return
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise bad_request(f"{where}: NaN and infinity are not accepted")
    # Python numbers compare exactly (an int64 beside a float limit loses nothing).
    if array.max().item() > limit or array.min().item() < -limit:
        raise bad_request(f"{where}: values must lie within +-{limit:g}")


def deserialize_bytes(raw: memoryview | bytes, count: int, where: str) -> list[bytes]:
    """BYTES binary data: `count` elements, each a 4-byte little-endian length then the bytes."""
    out: list[bytes] = []
    offset, end = 0, len(raw)
    while offset < end:
        if len(out) == count:
            raise bad_request(f"{where}: binary data holds more than the shape's {count} elements")
        if offset + _LENGTH.size > end:
            raise bad_request(f"{where}: element {len(out)}'s 4-byte length is cut short")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > end:
            raise bad_request(
                f"{where}: element {len(out)} declares {length} bytes, {end - offset} are left"
            )
        out.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(out) != count:
        raise bad_request(
            f"{where}: binary data holds {len(out)} elements, the shape needs {count}"
        )
    return out


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """BYTES elements as binary tensor data (each: 4-byte little-endian length, then bytes)."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def decode_bytes(tensor: RequestInput) -> list[bytes]:
    """A BYTES input's elements, row-major: binary data, or JSON strings (UTF-8, or base64
    where parameters.content_type is "base64"), or bytes as they are (gRPC's typed contents)."""
    where = f"input {tensor.name!r}"
    if tensor.raw is not None:
        return deserialize_bytes(tensor.raw, tensor.count, where)
    flat = _flatten(tensor.data, len(tensor.shape), where)
    if len(flat) != tensor.count:
        raise bad_request(
            f"{where}: {tensor.data_label} has {len(flat)} elements, shape "
            f"{list(tensor.shape)} needs {tensor.count}"
        )
    base64_data = tensor.parameters.get("content_type") == "base64"
    out = []
    for value in flat:
        if isinstance(value, bytes):  # gRPC's contents.bytes_contents: the elements as they are
            out.append(value)
            continue
        if not isinstance(value, str):
            raise bad_request(f"{where}: BYTES {tensor.data_label} must hold strings")
        if base64_data:
            try:
                out.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                raise bad_request(f"{where}: an element is not valid base64") from None
        else:
            out.append(value.encode("utf-8", "surrogatepass"))
    return out


# --- responses ------------------------------------------------------------------------------


def _json_data(array: np.ndarray) -> str:
    """A tensor's elements as the text of a flat JSON list, row-major. float32 is written with
    9 significant digits, which round-trip every float32 exactly and take a third of the time
    of Python's float repr (17 digits, for the float64 each element would become)."""
    values = array.ravel().tolist()
    if array.dtype == FP32:
        return "[" + ",".join([_FP32_FORMAT % v for v in values]) + "]"
    return json.dumps(values, separators=(",", ":"))


_FP32_FORMAT = "%.9g"


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Sequence[Output],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (Content-Type, and Inference-Header-Content-Length
    when any output is binary)."""
    header: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        header["model_version"] = model_version
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = parameters
    described: list[str] = []
    parts: list[bytes] = []
    for out in outputs:
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.array.shape),
        }
        params = dict(out.parameters)
        data = None
        if out.binary:
            raw = np.ascontiguousarray(out.array, dtype=DATATYPES[out.datatype]).tobytes()
            params["binary_data_size"] = len(raw)
            parts.append(raw)
        else:
            array = out.array
            if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
                # JSON has no NaN or infinity; binary data carries them as they are.
                raise bad_request(
                    f"output {out.name!r} is not finite for this input: ask for it in binary"
                )
            data = _json_data(array)
        if params:
            entry["parameters"] = params
        described_json = json.dumps(entry, separators=(",", ":"))
        if data is not None:
            described_json = f'{described_json[:-1]},"data":{data}}}'
        described.append(described_json)
    head = json.dumps(header, separators=(",", ":"))
    text = f'{head[:-1]},"outputs":[{",".join(described)}]}}'.encode()
    if not parts:
        return text, {"content-type": JSON_CONTENT_TYPE}
    return b"".join([text, *parts]), {
        "content-type": BINARY_CONTENT_TYPE,
        HEADER_LENGTH.lower(): str(len(text)),
    }
