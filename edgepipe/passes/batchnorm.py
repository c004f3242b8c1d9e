"""Fold BatchNormalization (and un-fused BN: Mul+Add after Conv) into the preceding Conv,
ConvTranspose or Gemm. Needed before int8 calibration, or the scales are wrong.

onnxscript's rules only fold when the producer's output has no other consumer, so a BN whose
input also feeds another node is left alone, as it must be."""

from __future__ import annotations

import onnx_ir as ir

from edgepipe.passes.base import apply_rules_until_stable


class BatchNormPass:
    name = "batchnorm"
    summary = "fold BatchNormalization and affine Mul+Add into Conv/ConvTranspose/Gemm"

    def apply(self, model: ir.Model) -> int:
        from onnxscript.rewriter.rules import common as rules

        return apply_rules_until_stable(model, [
            rules.fuse_batchnorm_into_conv_rule, rules.fuse_batchnorm_into_conv_transpose_rule,
            rules.fuse_batchnorm_into_gemm_rule, rules.conv_affine_fusion_rule,
        ])
