"""Which nodes must stay float together for one noisy tensor to stop being quantized.

An int8 converter quantizes a tensor wherever one of its neighbours is quantized: keeping
only the layer that computes it in float leaves a quantize/dequantize pair on the
consumer's side, and the range that hurt stays. Worse, ops that pass values through
(ReLU, max-pooling, reshapes) carry the same range on to the next weighted layer, whose
own int8 weights may be what breaks (an outlier channel scaled up in one layer and down
in the next, as a trained network can learn). So a float group for a tensor is the
weighted layer that computes it, every pass-through op on the way, and the weighted
layers that read it at the far end: the whole stretch over which the range travels.
Both int8 paths use it (ONNX node names for `nodes_to_exclude`, TFLite operator names
for the MLIR quantizer's denylist); the pass-through vocabulary is each format's own.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

ONNX_PASS_THROUGH = frozenset(
    {"Relu", "Clip", "MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
)
TFLITE_PASS_THROUGH = frozenset(
    {"RELU", "RELU6", "MAX_POOL_2D", "RESHAPE", "SQUEEZE", "TRANSPOSE", "REDUCE_MAX", "EXPAND_DIMS"}
)


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def float_group(nodes: list[Node], tensor: str, pass_through: frozenset[str]) -> list[str]:
    """The names of the nodes to keep float so that `tensor`'s range is never quantized, in graph order.

    Backward from the tensor through pass-through ops to the layer that computed it; forward through
    pass-through ops to every layer that reads it. Empty when no node touches the tensor.
    """
    producer = {out: node for node in nodes for out in node.outputs}
    consumers: dict[str, list[Node]] = defaultdict(list)
    for node in nodes:
        for name in node.inputs:
            consumers[name].append(node)
    group: dict[str, Node] = {}
    current = tensor
    while (node := producer.get(current)) is not None and node.name not in group:
        group[node.name] = node
        if node.op not in pass_through or not node.inputs:
            break
        current = node.inputs[0]
    frontier = [tensor]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name in group:
                continue
            group[node.name] = node
            if node.op in pass_through:
                frontier.extend(node.outputs)
    order = {node.name: i for i, node in enumerate(nodes)}
    return sorted(group, key=order.__getitem__)


def float_groups(nodes: list[Node], tensors: list[str], pass_through: frozenset[str]) -> list[list[str]]:
    """One group per tensor (noisiest first), each group once: tensors on one stretch share it."""
    groups: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for tensor in tensors:
        group = float_group(nodes, tensor, pass_through)
        if group and frozenset(group) not in seen:
            seen.add(frozenset(group))
            groups.append(group)
    return groups
