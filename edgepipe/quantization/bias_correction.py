"""Bias correction for QDQ models written by onnxruntime.quantization.

Rounding weights to int8 (7-bit with `reduce_range`) shifts each output channel's mean:
depthwise convolutions, with nine weights per channel, shift most. The fix (Nagel et al.,
"Data-Free Quantization", 2019, section 4.2) moves that shift into the layer's int32 bias,
with the layer's input means measured on calibration data. NNCF does this for its own
engines (fast/full bias correction); onnxruntime.quantization has nothing like it, hence
this module.

The shift is computed per layer from its own rounding error and the float model's input
means (E[(W_q - W) x] = (W_q - W) E[x]), so one layer's correction never depends on another's.
Measuring the shift end to end instead (the QDQ model's layer outputs against the float
model's) folded upstream errors into every layer and made MobileNetV2 worse, not better.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

Feed = dict[str, np.ndarray]


def _biased_layers(model) -> list[tuple[Any, Any, Any]]:
    """(layer node, bias DequantizeLinear node, its int32 initializer) per Conv/Gemm whose bias is
    stored as int32 and dequantized in the graph (onnxruntime's QuantizeBias layout)."""
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
            continue
        dq = producers.get(node.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in initializers:
            continue
        stored = initializers[dq.input[0]]
        if stored.data_type != 6:  # INT32
            continue
        found.append((node, dq, stored))
    return found


def _channel_means(model, names: Sequence[str], samples: Sequence[Feed],
                   axes: dict[str, int]) -> dict[str, np.ndarray]:
    """Per-channel means of `names` in the float model, run exactly as ONNX defines it."""
    from edgepipe.backends.onnxruntime import exact_runner
    from edgepipe.onnx_model import graph_inputs, with_outputs

    specs = graph_inputs(model)
    inputs = {spec.name for spec in specs}
    sums: dict[str, np.ndarray] = {}
    with exact_runner(with_outputs(model, names), specs, name="bias correction") as runner:
        for feed in samples:
            produced = runner.infer({k: v for k, v in feed.items() if k in inputs})
            for name in names:
                _accumulate(sums, name, produced[name], axes[name])
    return {name: total / len(samples) for name, total in sums.items()}


def _accumulate(sums: dict[str, np.ndarray], name: str, value: np.ndarray, axis: int) -> None:
    axis %= value.ndim
    mean = value.astype(np.float64).mean(axis=tuple(a for a in range(value.ndim) if a != axis))
    sums[name] = sums.get(name, 0) + mean


def _dequantized(model, name: str, constants: dict[str, Any]) -> np.ndarray | None:
    """The float weight a QDQ layer really uses: its DequantizeLinear applied to the int8 copy."""
    from onnx import numpy_helper

    dq = next((n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == name), None)
    if dq is None or dq.input[0] not in constants:
        return None
    stored = numpy_helper.to_array(constants[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(constants[dq.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(constants[dq.input[2]]).astype(np.float64) if len(dq.input) > 2
            else np.zeros_like(scale))
    if scale.ndim == 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * stored.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (stored - zero) * scale


def _output_shift(node, delta: np.ndarray, input_mean: np.ndarray) -> np.ndarray | None:
    """E[(W_q - W) x] per output channel, from the per-channel mean of the layer's input."""
    if node.op_type == "Conv":
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        out_channels, per_group = delta.shape[0], delta.shape[1]
        if input_mean.shape[0] != per_group * groups:
            return None
        means = input_mean.reshape(groups, per_group)[np.arange(out_channels) // (out_channels // groups)]
        return np.einsum("oi,oi->o", delta.reshape(out_channels, per_group, -1).sum(axis=2), means)
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    weight = delta.T if trans_b else delta  # (in, out)
    return input_mean @ weight if weight.shape[0] == input_mean.shape[0] else None


def correct_biases(float_model: Path, qdq_model: Path, samples: Sequence[Feed],
                   output: Path) -> dict[str, Any]:
    """Write `qdq_model` with each Conv/Gemm's int32 bias corrected for the mean shift its rounded
    weights cause (Nagel et al.'s bias correction, with input means measured on `samples`);
    what changed, for the report."""
    import onnx
    from onnx import numpy_helper

    from edgepipe import onnx_model

    qdq = onnx.load(str(qdq_model))
    reference = onnx.load(str(float_model))
    float_nodes = {node.name: node for node in reference.graph.node if node.name}
    float_weights = {i.name: i for i in reference.graph.initializer}
    constants = {i.name: i for i in qdq.graph.initializer}
    layers = []
    for node, dq, stored in _biased_layers(qdq):
        original = float_nodes.get(node.name)
        if original is None or original.op_type != node.op_type or original.input[1] not in float_weights:
            continue
        used = _dequantized(qdq, node.input[1], constants)
        exact = numpy_helper.to_array(float_weights[original.input[1]]).astype(np.float64)
        if used is None or used.shape != exact.shape:
            continue
        layers.append((node, dq, stored, original.input[0], used - exact))
    if not layers or not samples:
        onnx_model.save(qdq, output)
        return {"layers": 0, "samples": len(samples)}
    inputs = sorted({entry[3] for entry in layers})
    axes = {name: 1 for name in inputs}
    for node, _, _, name, _ in layers:
        if node.op_type == "Gemm":
            axes[name] = -1
    means = _channel_means(reference, inputs, samples, axes)
    corrected_layers, largest = 0, 0.0
    info = np.iinfo(np.int32)
    for node, dq, stored, name, delta in layers:
        shift = _output_shift(node, delta, means[name])
        scale = numpy_helper.to_array(constants[dq.input[1]]).astype(np.float64)
        values = numpy_helper.to_array(stored).astype(np.int64)
        if shift is None or shift.shape != values.shape:
            continue
        units = np.rint(shift / scale).astype(np.int64)
        stored.CopyFrom(numpy_helper.from_array(np.clip(values - units, info.min, info.max).astype(np.int32),
                                                stored.name))
        corrected_layers += 1
        largest = max(largest, float(np.max(np.abs(shift))))
    onnx_model.save(qdq, output)
    return {"layers": corrected_layers, "samples": len(samples), "largest_shift": round(largest, 6)}
