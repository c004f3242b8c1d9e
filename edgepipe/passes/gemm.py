"""MatMul + Add on 2-D operands -> Gemm, the form every backend's fully-connected kernel reads."""

from __future__ import annotations

import onnx_ir as ir

from edgepipe.passes.base import apply_rules_until_stable


class GemmPass:
    name = "gemm"
    summary = "MatMul+Add (2-D) to Gemm"

    def apply(self, model: ir.Model) -> int:
        from onnxscript.rewriter.rules import common as rules

        return apply_rules_until_stable(model, [
            rules.matmul_add_to_gemm_rule, rules.transpose_a_matmul_add_to_gemm_rule,
            rules.transpose_b_matmul_add_to_gemm_rule, rules.transpose_ab_matmul_add_to_gemm_rule,
        ])
