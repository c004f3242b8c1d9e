"""Decomposed GELU -> Gelu where the opset has it (>= 20), else left in the canonical erf form.

Hand-written with onnxscript's pattern API: onnxscript fuses GELU only into the
com.microsoft contrib op, which TFLite, OpenVINO and TensorRT converters do not read.
At opset < 20 this pass changes nothing: the exporter's erf form is the canonical one.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from edgepipe.passes.base import apply_rules_until_stable, onnx_opset


def _gelu_rules():
    from onnxscript.rewriter import pattern

    def erf_gelu(op, x):
        return op.Mul(op.Mul(x, op.Add(op.Erf(op.Div(x, math.sqrt(2.0))), 1.0)), 0.5)

    def erf_gelu_half_first(op, x):
        return op.Mul(op.Mul(x, 0.5), op.Add(op.Erf(op.Div(x, math.sqrt(2.0))), 1.0))

    def erf_gelu_scaled(op, x):
        return op.Mul(op.Mul(x, op.Add(op.Erf(op.Mul(x, 1 / math.sqrt(2.0))), 1.0)), 0.5)

    def tanh_gelu(op, x):
        cube = op.Mul(x, op.Mul(x, x))
        inner = op.Mul(math.sqrt(2 / math.pi), op.Add(x, op.Mul(0.044715, cube)))
        return op.Mul(0.5, op.Mul(x, op.Add(1.0, op.Tanh(inner))))

    def gelu(op, x):
        return op.Gelu(x)

    def gelu_tanh(op, x):
        return op.Gelu(x, approximate="tanh")

    return [pattern.RewriteRule(erf_gelu, gelu), pattern.RewriteRule(erf_gelu_half_first, gelu),
            pattern.RewriteRule(erf_gelu_scaled, gelu), pattern.RewriteRule(tanh_gelu, gelu_tanh)]


class GeluPass:
    name = "gelu"
    summary = "decomposed GELU to Gelu (opset >= 20); erf form kept below"

    def apply(self, model: ir.Model) -> int:
        if onnx_opset(model) < 20:
            return 0
        return apply_rules_until_stable(model, _gelu_rules(), commute=True)
