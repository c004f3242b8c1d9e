"""Absorb a constant zero Pad into the following Conv's `pads` (after folding "same" padding)."""

from __future__ import annotations

import onnx_ir as ir

from edgepipe.passes.base import apply_rules_until_stable


class PadIntoConvPass:
    name = "pad_into_conv"
    summary = "absorb constant zero Pad into Conv pads"

    def apply(self, model: ir.Model) -> int:
        from onnxscript.rewriter.rules import common as rules

        return apply_rules_until_stable(model, [rules.normalize_pad_format_conv_rule,
                                                rules.fuse_pad_into_conv_rule])
