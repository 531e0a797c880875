"""The Open Inference Protocol's (KServe v2) infer request and response, JSON and binary, for one classifier.

A request carries one input, `image`: UINT8 [N, H, W, 3] pixels already resized to
the model's input (`/classify` takes encoded images instead). Its data comes as JSON
(`"data": [...]`, flat or nested, row-major) or, with the binary-data extension, as
raw bytes after the JSON header, whose length the `Inference-Header-Content-Length`
header gives and each input's `parameters.binary_data_size` splits. Outputs are
`probabilities` (FP32 [N, classes]) and `label` (BYTES [N], the decision at the
model's operating point); each is returned as JSON or, when asked
(`parameters.binary_data` or the request's `binary_data_output`), as raw bytes.
Everything a client can get wrong raises `ProtocolError`, which the app answers with
400 and `{"error": ...}`; nothing here imports a server library.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import zlib

import numpy as np

from toolkit.errors import ProtocolError

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT = "image"
PROBABILITIES = "probabilities"
LABEL = "label"
OUTPUTS = (PROBABILITIES, LABEL)
DATATYPES = {"UINT8": np.uint8, "FP32": np.float32}


@dataclasses.dataclass
class InferRequest:
    id: str | None
    pixels: np.ndarray  # uint8 N x H x W x 3
    outputs: dict[str, bool]  # requested output -> binary


@dataclasses.dataclass(frozen=True)
class ModelSignature:
    """What the model's `image` input must be and which labels its outputs carry."""

    height: int
    width: int
    labels: tuple[str, ...]

    def metadata(self) -> tuple[list[dict], list[dict]]:
        """The inputs and outputs of `GET /v2/models/{name}` (-1: any batch size)."""
        inputs = [{"name": INPUT, "datatype": "UINT8", "shape": [-1, self.height, self.width, 3]}]
        outputs = [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(self.labels)]},
            {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
        ]
        return inputs, outputs


def ascii_int(text: str | None, max_digits: int = 18) -> int | None:
    """A header or query value as a whole number, or None: ASCII digits only (str.isdigit() accepts "²",
    which int() refuses) and a bounded length (int() refuses 5,000 digits with a ValueError)."""
    if text is None or not text.isascii() or not text.isdigit() or len(text) > max_digits:
        return None
    return int(text)


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The request body, inflated when the client compressed it (tritonclient's gzip/deflate), within `limit`."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(f"Content-Encoding {encoding} is not supported (gzip, deflate or none)", 415)
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the {encoding} body cannot be decoded: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ProtocolError(f"the decoded body exceeds the {limit} byte limit", 413)
    return out


def parse_infer_request(body: bytes, header_length: str | None, signature: ModelSignature) -> InferRequest:
    """The request's pixels and requested outputs, or a ProtocolError saying what is wrong."""
    header, binary = _split(body, header_length)
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("the request is not valid JSON") from None
    except RecursionError:  # e.g. 100,000 nested brackets: the parser's stack, not the server's problem
        raise ProtocolError("the request's JSON is nested too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ProtocolError('the request must be a JSON object with an "inputs" list')
    if len(request["inputs"]) != 1:
        raise ProtocolError(f'expected exactly one input, "{INPUT}"; got {len(request["inputs"])}')
    tensor = request["inputs"][0]
    if not isinstance(tensor, dict):
        raise ProtocolError("each input must be a JSON object")
    pixels = _input_pixels(tensor, binary, signature, len(header))
    parameters = request.get("parameters") if isinstance(request.get("parameters"), dict) else {}
    return InferRequest(_request_id(request), pixels, _requested_outputs(request, parameters))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 < length <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {length} is outside the body's {len(body)} bytes")
    return body[:length], body[length:]


def _request_id(request: dict) -> str | None:
    rid = request.get("id")
    return str(rid) if rid is not None else None


def _input_pixels(tensor: dict, binary: bytes, signature: ModelSignature, json_bytes: int) -> np.ndarray:
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if name != INPUT:
        raise ProtocolError(f'unknown input {name!r}: this model takes "{INPUT}"')
    if datatype != "UINT8":
        raise ProtocolError(f'input "{INPUT}" must be UINT8 pixels (0..255), got datatype {datatype!r}')
    expected = [signature.height, signature.width, 3]
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or shape[0] < 1
        or shape[1:] != expected
    ):
        raise ProtocolError(f'input "{INPUT}" must have shape [N, {", ".join(map(str, expected))}], got {shape}')
    count = math.prod(shape)  # a Python int: a shape of [2**62 + 1, ...] must not wrap around as int64 would
    if count > len(binary) + json_bytes:  # every value needs at least one byte, in JSON or binary
        raise ProtocolError(f'input "{INPUT}" shape {shape} claims {count} values, more than the body holds')
    parameters = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if size != count or len(binary) != size:
            raise ProtocolError(
                f'input "{INPUT}" binary_data_size {size} and the {len(binary)} bytes after the header '
                f"must both be {count} (shape {shape}, UINT8)"
            )
        return np.frombuffer(binary, np.uint8).reshape(shape)
    if binary:
        raise ProtocolError("binary data follows the JSON header but no input declares binary_data_size")
    return _json_pixels(tensor.get("data"), shape, count)


def _json_pixels(data, shape: list[int], count: int) -> np.ndarray:
    if data is None:
        raise ProtocolError(f'input "{INPUT}" has neither "data" nor parameters.binary_data_size')
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ProtocolError(f'input "{INPUT}" data is ragged: every row must have the same length') from None
    if values.dtype.kind not in "iu" or values.size != count:
        raise ProtocolError(f'input "{INPUT}" data must be {count} integers for shape {shape}')
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ProtocolError(f'input "{INPUT}" data must be UINT8 values 0..255')
    return values.astype(np.uint8).reshape(shape)


def _requested_outputs(request: dict, parameters: dict) -> dict[str, bool]:
    binary_default = bool(parameters.get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        return dict.fromkeys(OUTPUTS, binary_default)
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ProtocolError('"outputs" must be a list of objects with a "name"')
    chosen: dict[str, bool] = {}
    for output in asked:
        name = output.get("name")
        if name not in OUTPUTS:
            raise ProtocolError(f"unknown output {name!r}: this model gives {', '.join(OUTPUTS)}")
        params = output.get("parameters") if isinstance(output.get("parameters"), dict) else {}
        chosen[name] = bool(params.get("binary_data", binary_default))
    return chosen


def _bytes_tensor(values: list[str]) -> bytes:
    """BYTES elements as the binary extension lays them out: a little-endian uint32 length, then the bytes."""
    parts = []
    for value in values:
        raw = value.encode()
        parts.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(parts)


def encode_infer_response(
    model_name: str, request: InferRequest, probabilities: np.ndarray, labels: list[str]
) -> tuple[bytes, dict[str, str], str]:
    """(body, extra headers, media type) of the response: JSON alone, or JSON then the binary outputs."""
    tensors = {
        PROBABILITIES: ("FP32", list(probabilities.shape), probabilities.astype(np.float32)),
        LABEL: ("BYTES", [len(labels)], labels),
    }
    outputs, blobs = [], []
    for name, binary in request.outputs.items():
        datatype, shape, value = tensors[name]
        entry = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = _bytes_tensor(value) if datatype == "BYTES" else np.ascontiguousarray(value).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = list(value) if datatype == "BYTES" else value.reshape(-1).tolist()
        outputs.append(entry)
    response = {"model_name": model_name, "model_version": "1", "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response).encode()
    if not blobs:
        return header, {}, "application/json"
    return header + b"".join(blobs), {HEADER_LENGTH: str(len(header))}, "application/octet-stream"
