"""Last: share duplicate initializers (tied weights), drop dead nodes and opsets, sort."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def _make_initializers_contiguous(model: ir.Model) -> None:
    """onnx_ir's de-duplication hashes `numpy()` directly and raises on strided views,
    which constant-folding a Transpose of a weight leaves behind; copy those once."""
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.Tensor) and isinstance(tensor.raw, np.ndarray) \
                and not tensor.raw.flags.c_contiguous:
            value.const_value = ir.Tensor(np.ascontiguousarray(tensor.raw), name=tensor.name)


class TidyPass:
    name = "tidy"
    summary = "de-duplicate initializers, remove dead code, topological sort"

    def apply(self, model: ir.Model) -> int:
        from onnx_ir.passes.common import (
            DeduplicateHashedInitializersPass,
            RemoveUnusedNodesPass,
            RemoveUnusedOpsetsPass,
            TopologicalSortPass,
        )

        initializers = len(model.graph.initializers)
        nodes = sum(1 for _ in model.graph)
        _make_initializers_contiguous(model)
        DeduplicateHashedInitializersPass()(model)
        RemoveUnusedNodesPass()(model)
        RemoveUnusedOpsetsPass()(model)
        TopologicalSortPass()(model)
        return (initializers - len(model.graph.initializers)) + (nodes - sum(1 for _ in model.graph))
