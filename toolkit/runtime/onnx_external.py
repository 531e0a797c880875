"""Find external-data references in an ONNX file without the `onnx` package.

An ONNX tensor may point at a file (`data_location = EXTERNAL`, `location = path`);
ONNX Runtime then opens that path. From an untrusted model that is a file-read
primitive (`../../secrets`, absolute paths, symlinks out of the folder), so the
runtime reads every tensor's references first. The runtime must not need the
`onnx` package, so this walks the protobuf wire format directly, following the
fields where tensors live: graph initializers, sparse initializers, node
attributes (including subgraphs of If/Loop/Scan) and local functions.
"""

from __future__ import annotations

from collections.abc import Iterator

from toolkit.errors import ProtobufError

# Field numbers from onnx.proto.
MODEL_GRAPH, MODEL_FUNCTIONS = 7, 25
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_ATTRIBUTE = 5
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS = 5, 6, 10, 11, 22, 23
FUNCTION_NODE = 7
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2
MAX_DEPTH = 64


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def _fields(data: memoryview) -> Iterator[tuple[int, int, object]]:
    """Yield (field number, wire type, value); length-delimited values as memoryviews."""
    for number, wire, value, _start, _end in _fields_with_spans(data):
        yield number, wire, value


def top_level_fields(data: bytes) -> Iterator[tuple[int, memoryview]]:
    """(field number, the field's whole encoding: key and value) of a message, in file order."""
    view = memoryview(data)
    for number, _wire, _value, start, end in _fields_with_spans(view):
        yield number, view[start:end]


def _fields_with_spans(data: memoryview) -> Iterator[tuple[int, int, object, int, int]]:
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated field")
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        yield number, wire, value, start, pos


def _tensor_locations(tensor: memoryview) -> list[str]:
    external = False
    locations: list[str] = []
    for number, wire, value in _fields(tensor):
        if number == TENSOR_DATA_LOCATION and wire == 0:
            external = value == 1
        elif number == TENSOR_EXTERNAL_DATA and wire == 2:
            entry = {n: bytes(v).decode("utf-8", "replace") for n, w, v in _fields(value) if w == 2}
            if entry.get(ENTRY_KEY) == "location":
                locations.append(entry.get(ENTRY_VALUE, ""))
    return locations if external or locations else []


def _sparse_locations(sparse: memoryview) -> list[str]:
    out: list[str] = []
    for number, wire, value in _fields(sparse):
        if number in (SPARSE_VALUES, SPARSE_INDICES) and wire == 2:
            out += _tensor_locations(value)
    return out


def _attribute_locations(attr: memoryview, depth: int) -> list[str]:
    out: list[str] = []
    for number, wire, value in _fields(attr):
        if wire != 2:
            continue
        if number in (ATTR_T, ATTR_TENSORS):
            out += _tensor_locations(value)
        elif number in (ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS):
            out += _sparse_locations(value)
        elif number in (ATTR_G, ATTR_GRAPHS):
            out += _graph_locations(value, depth + 1)
    return out


def _nodes_locations(node: memoryview, depth: int) -> list[str]:
    out: list[str] = []
    for number, wire, value in _fields(node):
        if number == NODE_ATTRIBUTE and wire == 2:
            out += _attribute_locations(value, depth)
    return out


def _graph_locations(graph: memoryview, depth: int) -> list[str]:
    if depth > MAX_DEPTH:
        raise ProtobufError("subgraphs nested too deeply")
    out: list[str] = []
    for number, wire, value in _fields(graph):
        if wire != 2:
            continue
        if number == GRAPH_INITIALIZER:
            out += _tensor_locations(value)
        elif number == GRAPH_SPARSE_INITIALIZER:
            out += _sparse_locations(value)
        elif number == GRAPH_NODE:
            out += _nodes_locations(value, depth)
    return out


def external_data_locations(model_bytes: bytes) -> list[str]:
    """Every external-data `location` referenced by an ONNX model (empty if none)."""
    data = memoryview(model_bytes)
    out: list[str] = []
    for number, wire, value in _fields(data):
        if number == MODEL_GRAPH and wire == 2:
            out += _graph_locations(value, 0)
        elif number == MODEL_FUNCTIONS and wire == 2:
            for n, w, v in _fields(value):
                if n == FUNCTION_NODE and w == 2:
                    out += _nodes_locations(v, 1)
    return out
