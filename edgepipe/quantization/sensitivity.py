"""Per-layer quantization error, measured where it arises.

For every tensor the QDQ model quantizes, the float model's own activations on a
few samples are passed through that tensor's QuantizeLinear/DequantizeLinear
(scale and zero point read from the QDQ model) and compared with themselves:
SQNR in dB per channel, averaged over channels: one outlier channel that sets a
per-tensor range crushes the others to a few levels while the tensor's
power-weighted SQNR still looks fine (46 dB on the test's hostile model). Measuring
each tensor on float inputs, not the QDQ model's, keeps one bad layer from smearing
its error over every layer after it, so the ranking points at the layer to keep in
float. Weights are judged the same way on their per-channel int8 copies.

onnxruntime's `qdq_loss_debug` compares activations of the two models end to end;
the local measure used here is ours because it is what the fallback ranking needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepipe.quantization.qdq_params import read_qdq

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class QuantizedTensor:
    name: str
    kind: str  # activation | weight
    scale: float  # per-tensor scale, or the largest per-channel scale
    zero_point: int
    sqnr_db: float
    producer: str | None
    consumers: tuple[str, ...]

    @property
    def nodes(self) -> tuple[str, ...]:
        """The float-model nodes to keep in float so this tensor is no longer quantized."""
        if self.kind == "weight":
            return self.consumers
        return tuple(n for n in (self.producer, *self.consumers) if n)

    def to_json(self) -> dict[str, object]:
        return {"tensor": self.name, "kind": self.kind, "scale": float(f"{self.scale:.6g}"),
                "zero_point": self.zero_point,
                "sqnr_db": round(self.sqnr_db, 2) if math.isfinite(self.sqnr_db) else "inf",
                "nodes": list(self.nodes)}


def _channel_axis(ndim: int) -> int | None:
    """NCHW activations: axis 1; (batch, [sequence,] features): the last axis."""
    return 1 if ndim == 4 else (ndim - 1 if ndim in (2, 3) else None)


def _per_channel_power(values: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None:
        return np.asarray([np.sum(values ** 2)])
    return np.sum(values ** 2, axis=tuple(a for a in range(values.ndim) if a != axis))


def _channel_mean_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """Mean per-channel SQNR (each clipped to [-20, 60] dB) over channels that carry signal.

    The mean, not the worst: a nearly dead ReLU channel whose few small values all
    round to zero scores 0 dB in every healthy network (MobileNetV2 has dozens), while a
    range-setting outlier crushes most channels at once and drags the mean down.
    """
    live = signal > 0
    if not live.any():
        return math.inf
    signal, noise = signal[live], noise[live]
    if not noise.any():
        return math.inf
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(np.where(noise > 0, signal / np.where(noise > 0, noise, 1), 1e6))
    return float(np.clip(db, -20.0, 60.0).mean())


def _fake_quant(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, dtype: np.dtype,
                axis: int | None) -> np.ndarray:
    info = np.iinfo(dtype)
    if axis is not None and scale.ndim == 1:
        shape = [1] * values.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    quantized = np.clip(np.rint(values / scale) + zero_point, info.min, info.max)
    return (quantized - zero_point) * scale


def measure(float_model: Path, qdq_model: Path, samples: Sequence[Feed]) -> list[QuantizedTensor]:
    """Every quantized tensor with its scale and local SQNR, worst first."""
    import onnx
    from onnx import numpy_helper

    from edgepipe.backends.onnxruntime import exact_runner
    from edgepipe.onnx_model import graph_inputs, with_outputs

    qdq = read_qdq(qdq_model)
    original = onnx.load(str(float_model))
    float_weights = {i.name: numpy_helper.to_array(i) for i in original.graph.initializer}
    producers = {out: n.name for n in original.graph.node for out in n.output}
    consumers: dict[str, list[str]] = {}
    for node in original.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)

    known = set(producers) | {i.name for i in original.graph.input}
    activations = {name: p for name, p in qdq.activations.items() if name in known}
    rows: list[QuantizedTensor] = []
    for stored_name, (stored, params) in qdq.weights.items():
        if stored.dtype == np.int32:  # a bias: exact enough
            continue
        weight_name = stored_name.removesuffix("_quantized")
        reference = float_weights.get(weight_name)
        if reference is None:
            continue
        axis = params.axis
        restored = (stored.astype(np.float64) - _broadcast(params.zero_point, axis, reference.ndim)) \
            * _broadcast(params.scale, axis, reference.ndim)
        exact = reference.astype(np.float64)
        sqnr = _channel_mean_db(_per_channel_power(exact, axis), _per_channel_power(exact - restored, axis))
        rows.append(QuantizedTensor(weight_name, "weight", float(np.max(params.scale)), 0, sqnr, None,
                                    tuple(consumers.get(weight_name, ()))))

    if activations and samples:
        wanted = list(activations)
        specs = graph_inputs(original)
        inputs = {spec.name for spec in specs}
        noise: dict[str, np.ndarray] = {}
        signal: dict[str, np.ndarray] = {}
        with exact_runner(with_outputs(original, wanted), specs, name=float_model.name) as runner:
            for feed in samples:  # one sample's activations in memory at a time
                produced = runner.infer({k: v for k, v in feed.items() if k in inputs})
                for name in wanted:
                    value, params = produced[name], activations[name]
                    restored = _fake_quant(value.astype(np.float64), params.scale.astype(np.float64),
                                           params.zero_point.astype(np.float64), params.zero_point.dtype,
                                           params.axis)
                    axis = _channel_axis(value.ndim)
                    exact = value.astype(np.float64)
                    noise[name] = noise.get(name, 0) + _per_channel_power(exact - restored, axis)
                    signal[name] = signal.get(name, 0) + _per_channel_power(exact, axis)
        for name in wanted:
            params = activations[name]
            sqnr = _channel_mean_db(signal[name], noise[name])
            rows.append(QuantizedTensor(name, "activation", float(np.max(params.scale)),
                                        int(np.max(params.zero_point)), sqnr,
                                        producers.get(name), tuple(consumers.get(name, ()))))
    return sorted(rows, key=lambda r: r.sqnr_db)


def _broadcast(values: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    if axis is None or values.ndim == 0:
        return values.astype(np.float64)
    shape = [1] * ndim
    shape[axis] = -1
    return values.astype(np.float64).reshape(shape)


def without_quantizer(qdq_model: Path, tensor: QuantizedTensor, float_model: Path, output: Path) -> bool:
    """Write `qdq_model` with just `tensor` back in float: its Q/DQ pair bypassed (an activation) or
    its dequantized int8 copy replaced by the float weight. False when the tensor is not there.

    This is the model "everything int8 but one tensor", written in milliseconds by editing the
    graph instead of quantizing again: the fallback measures each candidate's real effect on the
    model's output with it (what local SQNR only estimates).
    """
    import onnx
    from onnx import numpy_helper

    from edgepipe import onnx_model

    model = onnx.load(str(qdq_model))
    nodes = list(model.graph.node)
    replace: dict[str, str] = {}
    dropped: set[int] = set()
    if tensor.kind == "activation":
        quantizers = [i for i, n in enumerate(nodes)
                      if n.op_type == "QuantizeLinear" and n.input[0] == tensor.name]
        quantized = {nodes[i].output[0] for i in quantizers}
        for index, node in enumerate(nodes):
            if node.op_type == "DequantizeLinear" and node.input[0] in quantized:
                replace[node.output[0]] = tensor.name
                dropped.add(index)
        dropped.update(quantizers)
    else:
        stored = f"{tensor.name}_quantized"
        float_initializers = onnx.load(str(float_model)).graph.initializer
        reference = next((i for i in float_initializers if i.name == tensor.name), None)
        if reference is None:
            return False
        restored = f"{tensor.name}_float"
        for index, node in enumerate(nodes):
            if node.op_type == "DequantizeLinear" and node.input[0] == stored:
                replace[node.output[0]] = restored
                dropped.add(index)
        if dropped:
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(reference),
                                                                   restored))
    if not replace:
        return False
    graph_outputs = {o.name for o in model.graph.output}
    if graph_outputs & set(replace):
        return False  # a graph output would lose its name
    kept = [node for index, node in enumerate(nodes) if index not in dropped]
    for node in kept:
        for position, name in enumerate(node.input):
            if name in replace:
                node.input[position] = replace[name]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx_model.save(model, output)
    return True
