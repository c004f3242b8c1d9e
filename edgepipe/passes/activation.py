"""Activations in the forms backends fuse with the preceding Conv/Gemm: back-to-back
Relu/Clip merged, Min/Max pairs as Clip (ReLU6), x*HardSigmoid(x) and friends as HardSwish."""

from __future__ import annotations

import onnx_ir as ir

from edgepipe.passes.base import apply_rules_until_stable, onnx_opset

HARDSWISH_OPSET = 14  # HardSwish entered the standard opset at 14


class ActivationPass:
    name = "activation"
    summary = "merge Relu/Clip chains, Min/Max to Clip, decomposed HardSwish to HardSwish (opset >= 14)"

    def apply(self, model: ir.Model) -> int:
        from onnxscript.rewriter.rules import common as rules

        hardswish = rules.fuse_hardswish_rules().rules if onnx_opset(model) >= HARDSWISH_OPSET else []
        return apply_rules_until_stable(model, [
            rules.successive_relu_rule, rules.successive_clip_rule, rules.successive_clip_relu_rule,
            rules.successive_relu_clip_rule, rules.min_max_rule, rules.max_min_rule, *hardswish,
        ])
