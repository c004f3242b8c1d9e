"""Decomposed LayerNorm (ReduceMean, Sub, Pow or Mul, ReduceMean, Add eps, Sqrt, Div, Mul, Add)
-> LayerNormalization (opset >= 17), which every backend runs as one kernel.

Written here with onnxscript's pattern API rather than taken from onnxscript: its
LayerNorm rule is private and matches only opset >= 18, where ReduceMean takes its
axes as an input; at opset 17 (our default export) axes are an attribute.
"""

from __future__ import annotations

import onnx_ir as ir

from edgepipe.passes.base import apply_rules_until_stable, constant_value, onnx_opset

_FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE)


def _layer_norm_rules():
    from onnxscript.rewriter import pattern

    class _LayerNorm(pattern.RewriteRuleClassBase):
        def __init__(self, axes_as_input: bool) -> None:
            super().__init__(f"LayerNorm{'Opset18' if axes_as_input else 'Opset17'}")
            self.axes_as_input = axes_as_input

        def _mean(self, op, value):
            if self.axes_as_input:
                return op.ReduceMean(value, [-1], keepdims=1)
            return op.ReduceMean(value, axes=[-1], keepdims=1)

        def pattern(self, op, x, scale, epsilon):
            deviation = op.Sub(x, self._mean(op, x))
            squared = pattern.OrValue([op.Mul(deviation, deviation), op.Pow(deviation, 2.0)])
            std = op.Sqrt(op.Add(self._mean(op, squared), epsilon))
            normalized = pattern.OrValue([op.Div(deviation, std),
                                          op.Mul(deviation, op.Reciprocal(std))])
            return op.Mul(normalized, scale)

        def check(self, context, x, scale, epsilon, **_):
            result = pattern.MatchResult()
            if x.dtype not in _FLOAT_TYPES:
                return result.fail("input is not float")
            eps = constant_value(epsilon)
            if eps is None or eps.size != 1:
                return result.fail("epsilon is not a constant scalar")
            weights = constant_value(scale)
            width = x.shape[-1] if x.shape is not None and len(x.shape) else None
            if weights is None or weights.ndim != 1 or not isinstance(width, int) \
                    or weights.shape[0] != width:
                return result.fail("scale is not a constant of the normalized width")
            self._epsilon = float(eps.reshape(()))
            return result

        def rewrite(self, op, x, scale, epsilon, **_):
            return op.LayerNormalization(x, scale, axis=-1, epsilon=self._epsilon)

    class _LayerNormBias(pattern.RewriteRuleClassBase):
        def pattern(self, op, x, scale, bias):
            return op.Add(op.LayerNormalization(x, scale, _outputs=["normalized"]), bias)

        def check(self, context, x, scale, bias, normalized, **_):
            result = pattern.MatchResult()
            values = constant_value(bias)
            if values is None or values.ndim != 1:
                return result.fail("bias is not a 1-D constant")
            if len(normalized.producer().inputs) > 2:
                return result.fail("already has a bias")
            return result

        def rewrite(self, op, x, scale, bias, normalized, **_):
            return op.LayerNormalization(x, scale, bias, **normalized.producer().attributes)

    return [_LayerNorm.rule(axes_as_input=False), _LayerNorm.rule(axes_as_input=True),
            _LayerNormBias.rule()]


class LayerNormPass:
    name = "layer_norm"
    summary = "decomposed LayerNorm to LayerNormalization (opset >= 17)"

    def apply(self, model: ir.Model) -> int:
        if onnx_opset(model) < 17:
            return 0  # LayerNormalization does not exist before opset 17
        return apply_rules_until_stable(model, _layer_norm_rules())
