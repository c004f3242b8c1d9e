"""Transformer blocks need their own int8 scheme.

Measured on a MiniLM-class encoder: quantizing everything statically (ORT QDQ)
drops the mean embedding cosine to 0.81 (S8 activations) or 0.62 (U8); LayerNorm,
Softmax, GELU outputs and the activation-by-activation MatMuls of attention carry
outliers and dynamic ranges int8 cannot hold. What works (ORT dynamic, NNCF's
transformer preset): int8 only for the MatMul/Gemm nodes that multiply by a
weight, everything else in float.
"""

from __future__ import annotations

from collections import Counter

TRANSFORMER_OPS = {"LayerNormalization", "Softmax", "Gelu", "Erf"}
WEIGHT_OPS = {"MatMul", "Gemm"}


def is_transformer(model) -> bool:
    """Attention blocks present: Softmax plus LayerNorm (fused or not) or GELU."""
    ops = Counter(node.op_type for node in model.graph.node)
    return ops["Softmax"] > 0 and (ops["LayerNormalization"] > 0 or ops["Gelu"] + ops["Erf"] > 0
                                   or ops["ReduceMean"] >= 2)


def weight_matmuls(model) -> list[str]:
    """Names of MatMul/Gemm nodes whose second input is a constant weight."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in constants]
