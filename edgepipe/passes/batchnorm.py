"""Fold BatchNormalization (and un-fused BN: Mul+Add after Conv) into the preceding Conv,
ConvTranspose or Gemm. Needed before int8 calibration, or the scales are wrong.

BatchNormalization uses onnxscript's rules. The un-fused form is ours: onnxscript's
Conv-affine rule takes only scalar Mul/Add and a Conv with a bias, while an un-fused
BN is a per-channel Mul+Add, often after a bias-free Conv. Pattern matching only
rewrites when the Conv's output has no other consumer, so a BN (or affine) whose
input also feeds another node is left alone, as it must be."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepipe.passes.base import apply_rules_until_stable, constant_value


def _per_channel(value: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """`value` as a (channels,) vector if it broadcasts along axis 1 only, else None."""
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(value.dtype)


def _conv_affine_rules():
    from onnxscript.rewriter import pattern

    class _ConvChannelAffine(pattern.RewriteRuleClassBase):
        def __init__(self, with_bias: bool) -> None:
            super().__init__(f"ConvChannelAffine{'Bias' if with_bias else ''}")
            self.with_bias = with_bias

        def pattern(self, op, x, w, b, scale, offset):
            inputs = (x, w, b) if self.with_bias else (x, w)
            conv = op.Conv(*inputs, _allow_other_attributes=True, _outputs=["conv_out"])
            return op.Add(op.Mul(conv, scale), offset)

        def check(self, context, x, w, b, scale, offset, **_):
            result = pattern.MatchResult()
            weights = constant_value(w)
            if weights is None:
                return result.fail("Conv weights are not constant")
            bias = constant_value(b) if self.with_bias else np.zeros(weights.shape[0], weights.dtype)
            scale_value, offset_value = constant_value(scale), constant_value(offset)
            if bias is None or scale_value is None or offset_value is None:
                return result.fail("bias, scale or offset is not constant")
            channels = weights.shape[0]
            self._scale = _per_channel(scale_value, weights.ndim, channels)
            self._offset = _per_channel(offset_value, weights.ndim, channels)
            if self._scale is None or self._offset is None:
                return result.fail("scale or offset is not per output channel")
            self._weights, self._bias = weights, bias
            return result

        def rewrite(self, op, x, w, b, scale, offset, conv_out, **_):
            shape = (-1,) + (1,) * (self._weights.ndim - 1)
            weights = (self._weights * self._scale.reshape(shape)).astype(self._weights.dtype)
            bias = (self._bias * self._scale + self._offset).astype(self._weights.dtype)
            # Names from the output: several Convs may share one weight tensor's name prefix.
            stem = conv_out.name or "conv"
            return op.Conv(x, op.initializer(ir.tensor(weights), f"{stem}_affine_weight"),
                           op.initializer(ir.tensor(bias), f"{stem}_affine_bias"),
                           **conv_out.producer().attributes)

    return [_ConvChannelAffine.rule(with_bias=True), _ConvChannelAffine.rule(with_bias=False)]


class BatchNormPass:
    name = "batchnorm"
    summary = "fold BatchNormalization and affine Mul+Add into Conv/ConvTranspose/Gemm"

    def apply(self, model: ir.Model) -> int:
        from onnxscript.rewriter.rules import common as rules

        folded = apply_rules_until_stable(model, [
            rules.fuse_batchnorm_into_conv_rule, rules.fuse_batchnorm_into_conv_transpose_rule,
            rules.fuse_batchnorm_into_gemm_rule,
        ])
        return folded + apply_rules_until_stable(model, _conv_affine_rules(), commute=True)
