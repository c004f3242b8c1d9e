"""Last: share duplicate initializers (tied weights), drop dead nodes and opsets, sort."""

from __future__ import annotations

import onnx_ir as ir


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
        DeduplicateHashedInitializersPass()(model)
        RemoveUnusedNodesPass()(model)
        RemoveUnusedOpsetsPass()(model)
        TopologicalSortPass()(model)
        return (initializers - len(model.graph.initializers)) + (nodes - sum(1 for _ in model.graph))
