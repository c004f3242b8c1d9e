"""Fold every sub-graph whose inputs are known, shape arithmetic included.

With static input shapes, TF-style "same" padding (Shape -> Gather -> arithmetic -> Pad)
becomes a constant Pad, which the pad-into-conv pass then absorbs. onnxscript's folder
does the work; dynamic dimensions stay dynamic because their Shape is not known.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgepipe.passes.base import constant_value

SMALL_CONSTANT = 4096  # elements: shape arithmetic, pads; never weights


def _fold_small_constant_of_shape(node: ir.Node) -> bool | None:
    """onnxscript keeps every ConstantOfShape to avoid large constants; the small ones feeding
    shape arithmetic ("same" padding) must fold for the rest of the sub-graph to fold."""
    if node.op_type != "ConstantOfShape":
        return None
    shape = constant_value(node.inputs[0])
    return True if shape is not None and int(np.prod(shape)) <= SMALL_CONSTANT else None


class ConstantFoldingPass:
    name = "constant_folding"
    summary = "fold constant and shape sub-graphs"

    def apply(self, model: ir.Model) -> int:
        from onnx_ir.passes.common import LiftConstantsToInitializersPass, RemoveUnusedNodesPass
        from onnxscript.optimizer import fold_constants

        before = sum(1 for _ in model.graph)
        fold_constants(model, onnx_shape_inference=True, should_fold=_fold_small_constant_of_shape)
        RemoveUnusedNodesPass()(model)
        # Folded values arrive as Constant nodes; backends and later passes want initializers.
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        return before - sum(1 for _ in model.graph)
