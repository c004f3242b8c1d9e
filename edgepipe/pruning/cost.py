"""Parameters, MACs, size and sparsity of an ONNX model, counted from the graph itself.

Counted on the ONNX graph, not the torch module, so one counter serves PyTorch and
ONNX-only sources and counts exactly what the backends run (after folding). The
counters we could use (torch-pruning's, thop, fvcore) read torch modules only.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Operators that carry the multiply-accumulates of a CNN or a transformer.
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class ModelCost:
    params: int
    macs: int
    size_bytes: int  # the .onnx file
    compressed_bytes: int  # the .onnx file deflated: what unstructured sparsity buys
    sparsity: float  # zero fraction of the weight tensors of WEIGHT_OPS

    def to_json(self) -> dict[str, Any]:
        return {"params": self.params, "macs": self.macs, "size_bytes": self.size_bytes,
                "compressed_bytes": self.compressed_bytes, "weight_sparsity": round(self.sparsity, 4)}


def static_shapes(model) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for value in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    return shapes


def node_macs(node, shapes: dict[str, tuple[int, ...]], attrs: dict[str, Any]) -> int:
    out = shapes.get(node.output[0])
    if node.op_type == "Conv" and out and node.input[1] in shapes:
        return math.prod(out) * math.prod(shapes[node.input[1]][1:])
    if node.op_type == "ConvTranspose" and node.input[0] in shapes and node.input[1] in shapes:
        return math.prod(shapes[node.input[0]]) * math.prod(shapes[node.input[1]][1:])
    if node.op_type == "Gemm" and out and node.input[0] in shapes:
        a = shapes[node.input[0]]
        return math.prod(out) * (a[0] if attrs.get("transA") else a[-1])
    if node.op_type == "MatMul" and out and node.input[0] in shapes:
        return math.prod(out) * shapes[node.input[0]][-1]
    return 0


def measure(path: Path) -> ModelCost:
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = static_shapes(model)
    macs = 0
    weight_names: set[str] = set()
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        macs += node_macs(node, shapes, attrs)
        if node.op_type in WEIGHT_OPS and len(node.input) > 1:
            weight_names.add(node.input[1])
    params = zeros = weights = 0
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if not np.issubdtype(array.dtype, np.floating) and tensor.name not in weight_names:
            continue  # shapes and indices are not parameters
        params += array.size
        if tensor.name in weight_names:
            weights += array.size
            zeros += int(np.count_nonzero(array == 0))
    data = path.read_bytes()
    return ModelCost(params=params, macs=macs, size_bytes=len(data),
                     compressed_bytes=len(zlib.compress(data, 6)),
                     sparsity=zeros / weights if weights else 0.0)
