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

import onnx

WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# A weighted op with at most this many weights is part of the decode, not a prediction layer:
# YOLOv8's DFL is a 1x1 Conv with 16 constant weights (0..15) that computes an expectation.
DECODE_WEIGHTS = 64


def _weight_size(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> int | None:
    if node.op_type not in WEIGHTED or len(node.input) < 2 or node.input[1] not in initializers:
        return None  # an activation x activation MatMul is not a prediction layer
    size = 1
    for dim in initializers[node.input[1]].dims:
        size *= dim
    return size


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
        size = _weight_size(node, initializers)
        if size is not None and size > DECODE_WEIGHTS:
            prediction.add(node.name)
            continue
        decode.add(node.name)
        queue.extend(producer[i] for i in node.input if i in producer)
    order = [n.name for n in graph.node]
    return [n for n in order if n in prediction], [n for n in order if n in decode]


def fx_head_tail(graph_module) -> set:
    """The same walk on a torch.fx graph (PT2E quantization, the TFLite route of PyTorch sources):
    the nodes to leave unannotated so they stay float."""
    def weight_size(node) -> int | None:
        if node.op != "call_function" or getattr(node.target, "__name__", "").split(".")[0] not in (
                "conv2d", "conv1d", "conv3d", "linear", "conv_transpose2d") or len(node.args) < 2:
            return None
        weight = node.args[1]
        if getattr(weight, "op", None) != "get_attr":
            return None
        value = graph_module
        for part in str(weight.target).split("."):
            value = getattr(value, part)
        return int(value.numel())

    output = next(n for n in graph_module.graph.nodes if n.op == "output")
    keep, queue = set(), deque(output.all_input_nodes)
    while queue:
        node = queue.popleft()
        if node in keep or node.op in ("placeholder", "get_attr"):
            continue
        keep.add(node)
        size = weight_size(node)
        if size is not None and size > DECODE_WEIGHTS:
            continue
        queue.extend(node.all_input_nodes)
    return keep
