"""Remove what computes nothing at inference: Identity, Dropout, exact x+0, x-0, x*1, x/1, no-op
Cast/Transpose/Expand, back-to-back Reshapes, Transposes and Casts.

The arithmetic no-op rules are written here rather than taken from onnxscript: its
`add_0`/`mul_by_1` rules match constants within abs_tol 1e-8, so they delete the
epsilon of a LayerNorm (`var + 1e-12`) and turn a zero-variance row into a division
by zero. Ours remove only exact scalar zeros and ones.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepipe.passes.base import apply_rules_until_stable, constant_value


def _exact_no_op_rules():
    from onnxscript.rewriter import pattern

    def no_op(neutral: float, op_type: str):
        class _ExactNoOp(pattern.RewriteRuleClassBase):
            def pattern(self, op, x, c):
                return getattr(op, op_type)(x, c)

            def check(self, context, x, c, **_):
                result = pattern.MatchResult()
                value = constant_value(c)
                if value is None or value.size != 1 or value.reshape(()) != neutral:
                    return result.fail("not an exact neutral scalar")
                if x.shape is None or len(x.shape) < value.ndim or x.dtype is None \
                        or np.dtype(x.dtype.numpy()) != value.dtype:
                    return result.fail("broadcasting or type promotion would change the output")
                return result

            def rewrite(self, op, x, c, **_):
                return op.Identity(x)

        return _ExactNoOp.rule(name=f"exact_{op_type.lower()}_{neutral:g}")

    return [no_op(0.0, "Add"), no_op(0.0, "Sub"), no_op(1.0, "Mul"), no_op(1.0, "Div")]


class CleanupPass:
    name = "cleanup"
    summary = "drop Identity, Dropout and exact no-op arithmetic, Cast, Transpose, Reshape, Expand"

    def apply(self, model: ir.Model) -> int:
        from onnxscript.rewriter.rules import common as rules

        from edgepipe.onnx_model import eliminate_identities

        rewrites = apply_rules_until_stable(model, [
            *_exact_no_op_rules(), rules.dropout_inference_rule, rules.dropout_zero_rule,
            rules.no_op_cast_rule, rules.cast_cast_rule, rules.no_op_transpose_rule,
            rules.transpose_transpose_rule, rules.no_op_expand_rule, rules.reshape_reshape_rule,
            rules.unsqueeze_unsqueeze_rule,
        ])
        before = sum(1 for _ in model.graph)
        eliminate_identities(model)  # last: the rules above rewrite no-ops to Identity
        return rewrites + before - sum(1 for _ in model.graph)
