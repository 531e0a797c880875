"""export/layer_groups.py: the float group of a tensor spans the stretch its range travels, no more."""

from __future__ import annotations

from toolkit.export.layer_groups import ONNX_PASS_THROUGH, Node, float_group, float_groups


def _chain() -> list[Node]:
    """conv1 -> relu1 -> pool1 -> {conv2 -> relu2, conv3}; conv2 and conv3 both read pool1's output."""
    return [
        Node("conv1", "Conv", ("x", "w1"), ("c1",)),
        Node("relu1", "Relu", ("c1",), ("r1",)),
        Node("pool1", "MaxPool", ("r1",), ("p1",)),
        Node("conv2", "Conv", ("p1", "w2"), ("c2",)),
        Node("relu2", "Relu", ("c2",), ("r2",)),
        Node("conv3", "Conv", ("p1", "w3"), ("c3",)),
    ]


def test_a_tensor_keeps_its_producer_the_pass_through_ops_and_every_weighted_reader():
    nodes = _chain()
    expected = ["conv1", "relu1", "pool1", "conv2", "conv3"]
    for tensor in ("c1", "r1", "p1"):  # anywhere on the stretch: the same group
        assert float_group(nodes, tensor, ONNX_PASS_THROUGH) == expected


def test_the_walk_stops_at_weighted_layers_on_both_sides():
    nodes = _chain()
    assert float_group(nodes, "c2", ONNX_PASS_THROUGH) == ["conv2", "relu2"]
    assert float_group(nodes, "c2", frozenset()) == ["conv2", "relu2"]
    assert float_group(nodes, "p1", frozenset()) == ["pool1", "conv2", "conv3"]  # no pass-through: neighbours only
    assert float_group(nodes, "unknown", ONNX_PASS_THROUGH) == []


def test_groups_are_listed_once_in_the_order_of_their_tensors():
    groups = float_groups(_chain(), ["c2", "r1", "p1", "x", "c3"], ONNX_PASS_THROUGH)
    stretch = ["conv1", "relu1", "pool1", "conv2", "conv3"]
    assert groups == [["conv2", "relu2"], stretch, ["conv1"], ["conv3"]]  # x: the graph input, read by conv1
