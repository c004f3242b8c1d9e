"""How much faster a TensorRT int8 engine should run than the fp16 one, estimated on the build host.

TensorRT cannot run here, so the quantize stage's speed gate for TensorRT targets reads this
estimate instead of a timing: a roofline per weighted layer (Conv, ConvTranspose, Gemm, MatMul),
each taking the longer of its arithmetic at the GPU's dense tensor-core peak and its bytes at the
GPU's memory bandwidth. The fp16 engine runs every layer in fp16; the int8 engine runs a layer in
int8 where both its input and weight are quantized, and the rest in the precision its plan gives
float layers: fp32 (TF32 on Ampere) in a strongly typed QDQ network (TensorRT 10/11), fp16 with
TensorRT 8's `--int8 --fp16`. Element-wise layers are left out: TensorRT fuses them into the
weighted layer before them. No per-layer launch overhead is modelled, so on tiny networks, where
that overhead dominates, the estimate is optimistic.
The numbers per device are the target's `[device]` facts (NVIDIA's module data sheets) and the
report calls the result an estimate; a lent GPU checks it against `trtexec`.
"""

from __future__ import annotations

import math
from collections import ChainMap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgepipe.pruning.cost import WEIGHT_OPS, node_macs, static_shapes


class GpuFacts(Protocol):
    fp16_tflops: float | None
    fp32_tflops: float | None
    int8_tops: float | None
    memory_gbps: float | None


FACTS = ("int8_tops", "fp16_tflops", "fp32_tflops", "memory_gbps")


@dataclass(frozen=True)
class Estimate:
    fp16_ms: float
    int8_ms: float
    int8_layers: int
    float_layers: int

    @property
    def speedup(self) -> float:
        return self.fp16_ms / self.int8_ms if self.int8_ms > 0 else 1.0

    def to_json(self) -> dict[str, Any]:
        return {"fp16_ms": float(f"{self.fp16_ms:.4g}"), "int8_ms": float(f"{self.int8_ms:.4g}"),
                "speedup": round(self.speedup, 3), "int8_layers": self.int8_layers,
                "float_layers": self.float_layers}


def missing_facts(device: GpuFacts) -> str | None:
    """Why no estimate can be made for this device, or None."""
    absent = [name for name in FACTS if getattr(device, name) is None]
    return f"the target's [device] lacks {', '.join(absent)}" if absent else None


def _quantized(name: str, producers: dict) -> bool:
    node = producers.get(name)
    return node is not None and node.op_type == "DequantizeLinear"


def _source(name: str, producers: dict) -> str:
    """The float tensor behind a Dequantize (or Quantize->Dequantize) pair, for its shape."""
    node = producers.get(name)
    while node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear"):
        name = node.input[0]
        node = producers.get(name)
    return name


def estimate(model: Path, device: GpuFacts, float_precision: str = "fp16") -> Estimate | None:
    """fp16-engine and int8-engine milliseconds of `model` (QDQ ONNX; a float model gives the
    int8 engine fp16's time when `float_precision` is fp16); None where no weighted layer could
    be sized (dynamic shapes, no Conv/Gemm/MatMul, a graph shape inference cannot read)."""
    import onnx

    try:
        graph_model = onnx.shape_inference.infer_shapes(onnx.load(str(model), load_external_data=False))
    except Exception:
        return None
    shapes = static_shapes(graph_model)
    fp16_weights = {tensor.name for tensor in graph_model.graph.initializer
                    if tensor.data_type == onnx.TensorProto.FLOAT16}
    producers = {out: node for node in graph_model.graph.node for out in node.output}
    assert device.fp16_tflops and device.fp32_tflops and device.int8_tops and device.memory_gbps
    float_rate, float_bytes = ((device.fp32_tflops, 4) if float_precision == "fp32"
                               else (device.fp16_tflops, 2))
    fp16_ms = int8_ms = 0.0
    int8_layers = float_layers = 0
    for node in graph_model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        # a quantized input's shape is its float source's (inference may not shape Q/DQ outputs)
        sources = {name: _source(name, producers) for name in node.input[:2]}
        plain = ChainMap({name: shapes[src] for name, src in sources.items() if src in shapes}, shapes)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        macs = node_macs(node, plain, attrs)
        elements = sum(math.prod(plain[name]) for name in (*node.input[:2], node.output[0]) if name in plain)
        if not macs:
            continue
        fp16 = max(2 * macs / (device.fp16_tflops * 1e9), 2 * elements / (device.memory_gbps * 1e6))
        fp16_ms += fp16
        if _quantized(node.input[0], producers) and _quantized(node.input[1], producers):
            int8_ms += max(2 * macs / (device.int8_tops * 1e9), elements / (device.memory_gbps * 1e6))
            int8_layers += 1
        else:
            # strongly typed networks run a layer in its tensors' type: fp16 weights run fp16
            half = node.input[1] in fp16_weights
            rate, size = (device.fp16_tflops, 2) if half else (float_rate, float_bytes)
            int8_ms += max(2 * macs / (rate * 1e9), size * elements / (device.memory_gbps * 1e6))
            float_layers += 1
    if not int8_layers + float_layers:
        return None
    return Estimate(fp16_ms, int8_ms, int8_layers, float_layers)
