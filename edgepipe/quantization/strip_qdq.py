"""A QDQ model back to float, with the int8 weights dequantized in place.

For TensorRT 8.x's implicit int8 (builder flag + calibration cache): it builds from a
float graph and takes activation scales from `calib.cache`, keyed by tensor name. Removing
each activation's Quantize/Dequantize pair leaves the original tensor names, which are
the cache's keys; weights become exactly the values the QDQ model computes with, so
TensorRT's own per-channel weight quantization gives back the same int8 values.
Hand-written: onnxruntime's quantizer has no inverse, and the rewrite is a bypass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def strip_qdq(source: Path, output: Path) -> set[str]:
    """Write the float model; return the activation tensors the QDQ model quantized."""
    import onnx
    from onnx import numpy_helper

    from edgepipe.onnx_model import save
    from edgepipe.quantization.qdq_params import read_qdq

    model = onnx.load(str(source))
    qdq = read_qdq(source)
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    renames: dict[str, str] = {}  # DQ output -> the float tensor it stands for
    dropped: set[int] = set()
    new_weights = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source_name = node.input[0]
        if source_name in qdq.weights:
            values, params = qdq.weights[source_name]
            scale = params.scale.astype(np.float32)
            zero = params.zero_point.astype(np.float32)
            if params.axis is not None:
                shape = [1] * values.ndim
                shape[params.axis] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            new_weights.append(numpy_helper.from_array(
                ((values.astype(np.float32) - zero) * scale).astype(np.float32), node.output[0]))
            dropped.add(id(node))
            continue
        quantize = producers.get(source_name)
        if quantize is not None and quantize.op_type == "QuantizeLinear":
            renames[node.output[0]] = quantize.input[0]
            dropped.update({id(node), id(quantize)})
    kept = [node for node in graph.node if id(node) not in dropped]
    for node in kept:
        for index, name in enumerate(node.input):
            if name in renames:
                node.input[index] = renames[name]
    for value in graph.output:
        if value.name in renames:  # a graph output must keep its name: re-create it with Identity
            kept.append(onnx.helper.make_node("Identity", [renames[value.name]], [value.name]))
    used = {name for node in kept for name in node.input}
    initializers = [i for i in graph.initializer if i.name in used] + new_weights
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    save(model, output)
    return set(qdq.activations)
