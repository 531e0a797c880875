"""The Open Inference Protocol codec alone: what a client can send, and what it gets back."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest

from toolkit.errors import ProtocolError
from toolkit.serve.protocol import (
    HEADER_LENGTH,
    ModelSignature,
    decode_body,
    encode_infer_response,
    parse_infer_request,
)

SIGNATURE = ModelSignature(4, 5, ("cat", "dog"))


def _request(pixels: np.ndarray, binary: bool, **extra) -> tuple[bytes, str | None]:
    tensor = {"name": "image", "datatype": "UINT8", "shape": list(pixels.shape)}
    if binary:
        tensor["parameters"] = {"binary_data_size": pixels.size}
    else:
        tensor["data"] = pixels.tolist()
    header = json.dumps({"inputs": [tensor], **extra}).encode()
    if not binary:
        return header, None
    return header + pixels.tobytes(), str(len(header))


@pytest.mark.parametrize("binary", [False, True])
def test_pixels_round_trip_in_json_and_binary(binary):
    pixels = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    body, length = _request(pixels, binary, id="r1")
    parsed = parse_infer_request(body, length, SIGNATURE)
    assert parsed.pixels.dtype == np.uint8 and np.array_equal(parsed.pixels, pixels)
    assert parsed.id == "r1" and parsed.outputs == {"probabilities": False, "label": False}


def test_flat_json_data_is_accepted_row_major():
    pixels = np.random.default_rng(0).integers(0, 256, (1, 4, 5, 3), dtype=np.uint8)
    body = json.dumps(
        {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 4, 5, 3], "data": pixels.ravel().tolist()}]}
    ).encode()
    assert np.array_equal(parse_infer_request(body, None, SIGNATURE).pixels, pixels)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "x", "datatype": "UINT8", "shape": [1, 4, 5, 3], "data": [0] * 60}, "unknown input"),
        ({"name": "image", "datatype": "FP32", "shape": [1, 4, 5, 3], "data": [0.0] * 60}, "must be UINT8"),
        ({"name": "image", "datatype": "UINT8", "shape": [1, 5, 4, 3], "data": [0] * 60}, r"shape \[N, 4, 5, 3\]"),
        ({"name": "image", "datatype": "UINT8", "shape": [0, 4, 5, 3], "data": []}, r"shape \[N, 4, 5, 3\]"),
        ({"name": "image", "datatype": "UINT8", "shape": [1, 4, 5, 3], "data": [0] * 59}, "60 integers"),
        ({"name": "image", "datatype": "UINT8", "shape": [1, 4, 5, 3], "data": [256] * 60}, "0..255"),
        ({"name": "image", "datatype": "UINT8", "shape": [1, 4, 5, 3], "data": [0.5] * 60}, "60 integers"),
        ({"name": "image", "datatype": "UINT8", "shape": [1, 4, 5, 3]}, 'neither "data"'),
    ],
)
def test_wrong_tensors_are_refused_with_a_reason(tensor, message):
    body = json.dumps({"inputs": [tensor]}).encode()
    with pytest.raises(ProtocolError, match=message) as info:
        parse_infer_request(body, None, SIGNATURE)
    assert info.value.status == 400


def test_binary_sizes_must_agree_with_the_shape():
    pixels = np.zeros((1, 4, 5, 3), np.uint8)
    body, length = _request(pixels, True)
    with pytest.raises(ProtocolError, match="binary_data_size"):
        parse_infer_request(body[:-1], length, SIGNATURE)
    with pytest.raises(ProtocolError, match="outside the body"):
        parse_infer_request(body, str(len(body) + 1), SIGNATURE)
    with pytest.raises(ProtocolError, match="must be an integer"):
        parse_infer_request(body, "ten", SIGNATURE)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"inputs": 3}', b'{"inputs": []}', b"\xff\xfe"])
def test_bodies_that_are_no_request_are_refused(body):
    with pytest.raises(ProtocolError):
        parse_infer_request(body, None, SIGNATURE)


def test_outputs_binary_or_json_as_asked():
    pixels = np.zeros((2, 4, 5, 3), np.uint8)
    body, length = _request(
        pixels, True, outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}]
    )
    parsed = parse_infer_request(body, length, SIGNATURE)
    probs = np.array([[0.25, 0.75], [0.9, 0.1]], np.float32)
    content, headers, media = encode_infer_response("m", parsed, probs, ["dog", "cat"])
    assert media == "application/octet-stream"
    header_len = int(headers[HEADER_LENGTH])
    response = json.loads(content[:header_len])
    probabilities, label = response["outputs"]
    assert probabilities["parameters"]["binary_data_size"] == 16 and "data" not in probabilities
    assert np.array_equal(np.frombuffer(content[header_len:], np.float32).reshape(2, 2), probs)
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["dog", "cat"]}
    with pytest.raises(ProtocolError, match="unknown output"):
        parse_infer_request(*_request(pixels, True, outputs=[{"name": "logits"}]), SIGNATURE)


def test_bytes_outputs_use_the_length_prefixed_layout():
    pixels = np.zeros((1, 4, 5, 3), np.uint8)
    parsed = parse_infer_request(*_request(pixels, True, parameters={"binary_data_output": True}), SIGNATURE)
    content, headers, _ = encode_infer_response("m", parsed, np.array([[0.5, 0.5]], np.float32), ["dög"])
    blob = content[int(headers[HEADER_LENGTH]) :]
    assert blob[8:] == struct.pack("<I", len("dög".encode())) + "dög".encode()


def test_compressed_bodies_are_inflated_within_the_limit():
    data = b"x" * 1000
    assert decode_body(gzip.compress(data), "gzip", 1000) == data
    assert decode_body(zlib.compress(data), "deflate", 1000) == data
    with pytest.raises(ProtocolError) as info:
        decode_body(gzip.compress(b"x" * 10_000_000), "gzip", 1000)  # a zip bomb stops at the limit
    assert info.value.status == 413
    with pytest.raises(ProtocolError) as info:
        decode_body(data, "br", 1000)
    assert info.value.status == 415
    with pytest.raises(ProtocolError, match="cannot be decoded"):
        decode_body(b"plain", "gzip", 1000)
