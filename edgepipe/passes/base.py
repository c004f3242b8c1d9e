"""The one interface of a graph pass: rewrite an onnx_ir model in place, say how many times."""

from __future__ import annotations

from typing import Protocol

import onnx_ir as ir


class GraphPass(Protocol):
    name: str
    summary: str  # one line for listings and reports

    def apply(self, model: ir.Model) -> int:
        """Rewrite `model` in place; return the number of rewrites made (0: unchanged)."""
        ...


def onnx_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def unavailable_ops(model: ir.Model) -> list[str]:
    """Standard-domain ops (in every graph, subgraphs included) that the model's opset does not
    define, as "OpType (node name)". A rewrite rule knows the op it writes but not the opset it
    writes into; checking after a pass catches every rule, ours and onnxscript's, at once."""
    import onnx.defs

    opset = onnx_opset(model)
    missing = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type, opset, ""):
            missing.append(f"{node.op_type} ({node.name or 'unnamed'})")
    return missing


def constant_value(value: ir.Value):
    """The numpy value of an initializer or Constant-node input, or None."""
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().numpy()
    return None


def apply_rules_until_stable(model: ir.Model, rules, max_rounds: int = 8,
                             commute: bool = False) -> int:
    """Apply onnxscript rules until nothing matches (rewrites can expose new matches).

    `commute` also tries every operand order of commutative ops (Add, Mul) in the patterns.
    """
    from onnxscript.rewriter import pattern

    rule_set = pattern.RewriteRuleSet(list(rules), commute=commute)
    total = 0
    for _ in range(max_rounds):
        count = rule_set.apply_to_model(model)
        if not count:
            break
        total += count
    if total:
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        RemoveUnusedNodesPass()(model)
    return total
