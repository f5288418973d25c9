"""Open Inference Protocol (KServe v2) REST messages: request decoding, including the binary tensor
data extension, and response encoding. Every client mistake raises ProtocolError with a 4xx status."""

import json
import math
import zlib
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

HEADER_LENGTH = "Inference-Header-Content-Length"

V2_TO_NUMPY = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
               "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
               "FP16": "float16", "FP32": "float32", "FP64": "float64"}
NUMPY_TO_V2 = {numpy: v2 for v2, numpy in V2_TO_NUMPY.items()}

# JSON element kinds (numpy dtype.kind of the parsed list) accepted for each target kind.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


class ProtocolError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


EXTENSIONS = ["binary_tensor_data"]
"""The KServe v2 / Triton protocol extensions this server implements (server metadata lists them)."""
UNSUPPORTED_PARAMETERS = {"classification", "shared_memory_region", "shared_memory_byte_size",
                          "shared_memory_offset"}
"""Tensor parameters of the classification and shared-memory extensions."""


def v2_datatype(numpy_dtype: str) -> str:
    """The v2 name of a numpy dtype name; unknown types keep their own name (no request can match)."""
    return NUMPY_TO_V2.get(numpy_dtype, numpy_dtype)


# --- request schema (validation and OpenAPI) --------------------------------------------------

class TensorParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_size: Annotated[StrictInt, Field(ge=0)] | None = None
    binary_data: StrictBool | None = None


class InputTensor(BaseModel):
    name: StrictStr
    shape: list[Annotated[StrictInt, Field(ge=0, le=2**40)]] = Field(max_length=32)
    datatype: StrictStr = Field(json_schema_extra={"enum": list(V2_TO_NUMPY)})
    parameters: TensorParameters | None = None
    data: list[Any] | None = None
    """Row-major elements, flat or nested; absent when the tensor is sent as binary data."""


class RequestedOutput(BaseModel):
    name: StrictStr
    parameters: TensorParameters | None = None


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_output: StrictBool | None = None


class InferenceRequest(BaseModel):
    id: StrictStr | None = None
    parameters: RequestParameters | None = None
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class ErrorResponse(BaseModel):
    error: str


# --- decoding -----------------------------------------------------------------------------------

@dataclass
class DecodedRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    """Requested output names in order, or None for all outputs."""
    binary_outputs: set[str] | bool
    """Names of outputs to send as binary data, or True for all of them."""


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate``, never inflating past ``limit`` bytes."""
    if encoding in (None, "", "identity"):
        return body
    window = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.strip().lower())
    if window is None:
        raise ProtocolError(f"unsupported Content-Encoding {encoding!r} (use gzip, deflate or none)", 415)
    inflater = zlib.decompressobj(window)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"request body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise ProtocolError(f"decompressed request body exceeds the limit of {limit} bytes", 413)
    if not inflater.eof:
        raise ProtocolError(f"request body is truncated {encoding} data")
    return data


def decode_request(body: bytes, header_length: str | None) -> DecodedRequest:
    """Parse a JSON request, or a JSON header followed by binary tensor data."""
    json_part, binary = _split_body(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(json_part)
    except ValidationError as exc:
        raise ProtocolError(_describe(exc)) from None
    names = [tensor.name for tensor in request.inputs]
    if len(set(names)) != len(names):
        raise ProtocolError(f"input names repeat: {names}")
    for tensor in request.inputs:
        _refuse_extension_parameters(f"input {tensor.name!r}", tensor.parameters)
    for output in request.outputs or []:
        _refuse_extension_parameters(f"output {output.name!r}", output.parameters)
    inputs, offset = {}, 0
    for tensor in request.inputs:
        inputs[tensor.name], offset = _decode_tensor(tensor, binary, offset)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data follow the last binary input")
    return DecodedRequest(request.id, inputs, *_requested_outputs(request))


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not is_count(header_length.strip()) or int(header_length) > len(body):
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer between 0 and the body size "
                            f"({len(body)} bytes), got {header_length!r}")
    split = int(header_length)
    return body[:split], memoryview(body)[split:]


def is_count(text: str) -> bool:
    """A byte count as HTTP headers write it: ASCII digits only (``str.isdigit`` also takes "²")."""
    return text.isascii() and text.isdigit()


def _refuse_extension_parameters(where: str, parameters: BaseModel | None) -> None:
    """Parameters of protocol extensions this server does not offer are refused, not ignored: a
    classification request would otherwise get raw scores back."""
    used = sorted(set(parameters.model_extra or {}) & UNSUPPORTED_PARAMETERS) if parameters else []
    if used:
        raise ProtocolError(f"{where}: parameter {used[0]!r} belongs to a protocol extension this server "
                            f"does not offer (it offers: {', '.join(EXTENSIONS)})")


def _describe(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] == "json_invalid":
        return f"malformed JSON: {errors[0]['msg']}"
    parts = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:5]]
    return "invalid inference request: " + "; ".join(parts)


def _decode_tensor(tensor: InputTensor, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    dtype_name = V2_TO_NUMPY.get(tensor.datatype)
    if dtype_name is None:
        raise ProtocolError(f"input {tensor.name!r}: unsupported datatype {tensor.datatype!r} "
                            f"(supported: {', '.join(V2_TO_NUMPY)})")
    dtype = np.dtype(dtype_name)
    count = math.prod(tensor.shape)
    size = tensor.parameters.binary_data_size if tensor.parameters else None
    if size is None:
        if tensor.data is None:
            raise ProtocolError(f"input {tensor.name!r} has neither 'data' nor a 'binary_data_size' parameter")
        return _from_json(tensor, dtype, count), offset
    if tensor.data is not None:
        raise ProtocolError(f"input {tensor.name!r} has both 'data' and a 'binary_data_size' parameter")
    if offset + size > len(binary):
        raise ProtocolError(f"truncated binary data: input {tensor.name!r} declares {size} bytes, "
                            f"only {len(binary) - offset} remain in the body")
    if size != count * dtype.itemsize:
        raise ProtocolError(f"input {tensor.name!r}: shape {tensor.shape} of {tensor.datatype} needs "
                            f"{count * dtype.itemsize} bytes, binary_data_size is {size}")
    raw = np.frombuffer(binary[offset:offset + size], dtype=dtype.newbyteorder("<"))
    return raw.astype(dtype, copy=False).reshape(tensor.shape), offset + size


def _from_json(tensor: InputTensor, dtype: np.dtype, count: int) -> np.ndarray:
    try:
        values = np.asarray(tensor.data)
    except (ValueError, TypeError):
        raise ProtocolError(f"input {tensor.name!r}: 'data' must be a flat or evenly nested list") from None
    if values.size and values.dtype.kind not in _ACCEPTED_KINDS.get(dtype.kind, ""):
        raise ProtocolError(f"input {tensor.name!r}: 'data' holds values that are not {tensor.datatype}")
    if values.size != count:
        raise ProtocolError(f"input {tensor.name!r}: shape {tensor.shape} needs {count} elements, "
                            f"'data' has {values.size}")
    return values.astype(dtype).reshape(tensor.shape)


def _requested_outputs(request: InferenceRequest) -> tuple[list[str] | None, set[str] | bool]:
    all_binary = bool(request.parameters and request.parameters.binary_data_output)
    if request.outputs is None:
        return None, all_binary
    names = [output.name for output in request.outputs]
    if len(set(names)) != len(names):
        raise ProtocolError(f"requested output names repeat: {names}")

    def wants_binary(output: RequestedOutput) -> bool:
        flag = output.parameters.binary_data if output.parameters else None
        return all_binary if flag is None else flag

    return names, {output.name for output in request.outputs if wants_binary(output)}


# --- encoding -----------------------------------------------------------------------------------

def encode_response(model_name: str, model_version: str, request_id: str | None,
                    outputs: dict[str, np.ndarray], binary: set[str] | bool) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers; binary outputs follow the JSON header."""
    entries, chunks = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": v2_datatype(str(array.dtype)),
                                 "shape": list(array.shape)}
        if binary if isinstance(binary, bool) else name in binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    message: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request_id is not None:
        message["id"] = request_id
    header = json.dumps(message, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream",
                                       HEADER_LENGTH: str(len(header))}
