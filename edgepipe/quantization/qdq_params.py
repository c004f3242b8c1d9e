"""Reading a QDQ model's quantization parameters: one reader for every consumer of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class QuantParams:
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None  # per-channel axis, None when per-tensor

    @property
    def is_symmetric_int8(self) -> bool:
        return self.zero_point.dtype == np.int8 and not self.zero_point.any()


def _axis(node, scale: np.ndarray) -> int | None:
    if scale.ndim != 1:
        return None
    return next((a.i for a in node.attribute if a.name == "axis"), 1)  # ONNX's default axis


@dataclass(frozen=True)
class QdqModel:
    """A QDQ model's constants, its activation quantizers and its stored int8 weights."""

    constants: dict[str, np.ndarray]
    activations: dict[str, QuantParams]  # tensor quantized by a QuantizeLinear
    weights: dict[str, tuple[np.ndarray, QuantParams]]  # stored int8 initializer -> (values, params)


def read_qdq(path: Path) -> QdqModel:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    activations: dict[str, QuantParams] = {}
    weights: dict[str, tuple[np.ndarray, QuantParams]] = {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        scale, zero = constants.get(node.input[1]), constants.get(node.input[2])
        if scale is None or zero is None:
            continue
        params = QuantParams(scale, zero, _axis(node, scale))
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            activations[node.input[0]] = params
        elif node.op_type == "DequantizeLinear" and node.input[0] in constants:
            weights[node.input[0]] = (constants[node.input[0]], params)
    return QdqModel(constants, activations, weights)
