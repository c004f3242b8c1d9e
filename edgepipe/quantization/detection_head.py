"""The part of a detector's head that int8 breaks: kept in float by the detection-aware scheme.

Box coordinates are regressed as absolute pixel offsets (or DFL bin logits whose softmax picks a
distance), so one int8 step of the last box convolution moves a box by whole pixels, and the
decode after it (anchor + distance, x stride, concat with the class scores) mixes values of very
different ranges in one tensor: a 0-1 score beside a 0-640 coordinate shares one int8 scale.
Users of NNCF, ModelOpt and TensorRT report int8 detectors with near-zero mAP for exactly this;
the usual cure (Ultralytics' and NNCF's YOLOv8 recipes) is to keep the head's tail in float and
quantize the backbone and neck, which hold nearly all the arithmetic.

No library finds these nodes for an arbitrary ONNX graph (NNCF's ignored scopes are named by
hand per model), hence this walk.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
PASS_THROUGH = {"DequantizeLinear", "Cast", "Identity"}  # how a weight may reach its layer


def _is_expectation(weights: np.ndarray) -> bool:
    """YOLOv8's DFL: a conv whose weights are the ramp 0, 1, ..., n-1 computes an expected
    distance from softmaxed bins; it is part of the decode, not a layer that learned anything."""
    flat = np.asarray(weights, np.float64).reshape(-1)
    return flat.size > 1 and np.array_equal(flat, np.arange(flat.size))


def _weights(name: str, initializers: dict[str, onnx.TensorProto],
             producer: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    """A weight tensor's values, through Constant, DequantizeLinear, Cast or Identity; None
    for an activation."""
    for _ in range(4):
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            return None if value is None else numpy_helper.to_array(value.t)
        if node.op_type not in PASS_THROUGH:
            return None
        name = node.input[0]
    return None


def _is_prediction(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto],
                   producer: dict[str, onnx.NodeProto]) -> bool:
    if node.op_type not in WEIGHTED:
        return False
    weights = _weights(node.input[1], initializers, producer) if len(node.input) > 1 else None
    if weights is None:  # an activation x activation MatMul is decode; a conv's weight always exists
        return node.op_type != "MatMul"
    return not _is_expectation(weights)


def head_tail(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(prediction layers, decode nodes): walking back from the outputs, the first weighted layers
    reached on every path, and the nodes between them and the outputs. Names, in graph order."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    prediction, decode, seen = set(), set(), set()
    queue = deque(producer[o.name] for o in graph.output if o.name in producer)
    while queue:
        node = queue.popleft()
        if node.name in seen:
            continue
        seen.add(node.name)
        if _is_prediction(node, initializers, producer):
            prediction.add(node.name)
            continue
        decode.add(node.name)
        queue.extend(producer[i] for i in node.input if i in producer)
    order = [n.name for n in graph.node]
    return [n for n in order if n in prediction], [n for n in order if n in decode]


def fx_head_tail(graph_module: Any) -> set:
    """The same walk on a torch.fx graph (PT2E quantization, the TFLite route of PyTorch sources):
    the nodes to leave unannotated so they stay float."""
    def is_prediction(node: Any) -> bool:
        if node.op != "call_function" or getattr(node.target, "__name__", "").split(".")[0] not in (
                "conv1d", "conv2d", "conv3d", "conv_transpose2d", "linear") or len(node.args) < 2:
            return False
        weight = node.args[1]
        if getattr(weight, "op", None) != "get_attr":
            return True
        value = graph_module
        for part in str(weight.target).split("."):
            value = getattr(value, part)
        return not _is_expectation(value.detach().cpu().numpy())

    output = next(n for n in graph_module.graph.nodes if n.op == "output")
    keep, queue = set(), deque(output.all_input_nodes)
    while queue:
        node = queue.popleft()
        if node in keep or node.op in ("placeholder", "get_attr"):
            continue
        keep.add(node)
        if not is_prediction(node):
            queue.extend(node.all_input_nodes)
    return keep
