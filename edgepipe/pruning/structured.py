"""Structured channel pruning of a PyTorch module with torch-pruning's dependency graph.

DepGraph keeps coupled layers consistent (a residual add prunes the same channels
on both branches, a depthwise conv follows its input, a concat maps its slices),
which is the part that is easy to get wrong by hand. This module only turns the
profile's settings into torch-pruning calls and checks the outcome.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edgepipe.errors import BadInputError, first_line
from edgepipe.extras import require

Importance = Literal["l1", "l2", "bn_scale", "taylor"]


@dataclass(frozen=True)
class ChannelPlan:
    """How many channels to take from where."""

    ratio: float  # fraction of each group's channels removed (global: of all channels)
    layer_ratios: dict[str, float]  # module name (a layer or a block) -> its own ratio
    skip: tuple[str, ...]  # module names never pruned (their output channels stay)
    keep_first: bool  # the first conv sees raw pixels: few channels, each one matters
    round_to: int | None  # channel counts rounded to a multiple (int8 kernels and tensor cores)
    importance: Importance
    global_pruning: bool


def _tp():
    return require("torch_pruning", "structured pruning")


def _importance(kind: Importance):
    tp = _tp()
    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


def _weight_layers(module) -> list[tuple[str, Any]]:
    import torch

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    return [(name, m) for name, m in module.named_modules() if isinstance(m, kinds)]


def _named(module, names: Sequence[str], key: str) -> list[Any]:
    modules = dict(module.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        layers = ", ".join(name for name, _ in _weight_layers(module)[:6])
        raise BadInputError(f"[prune] {key}: no module named '{unknown[0]}' in the model "
                            f"(its layers are named like: {layers}, ...)")
    return [modules[n] for n in names]


def ignored_layers(module, plan: ChannelPlan) -> list[Any]:
    """The last weight layer always (its outputs are the model's), the first when asked, and `skip`."""
    layers = _weight_layers(module)
    if not layers:
        raise BadInputError("[prune] the model has no Conv or Linear layer to prune")
    ignored = [layers[-1][1], *_named(module, plan.skip, "skip_layers")]
    if plan.keep_first:
        ignored.append(layers[0][1])
    return ignored


def _outputs(module, example: tuple) -> list:
    import torch

    with torch.no_grad():
        out = module(*example)
    return list(out) if isinstance(out, list | tuple) else [out]


def prune_channels(module, example: tuple, plan: ChannelPlan,
                   gradients: Callable[[Any], None] | None = None) -> Any:
    """A pruned deep copy of `module`; `gradients(copy)` runs backward passes for Taylor importance."""
    tp = _tp()
    pruned = copy.deepcopy(module).eval()
    ratios = {m: r for m, r in zip(_named(pruned, list(plan.layer_ratios), "layer_ratios"),
                                   plan.layer_ratios.values(), strict=True)}
    try:
        pruner = tp.pruner.BasePruner(
            pruned, example, importance=_importance(plan.importance), global_pruning=plan.global_pruning,
            pruning_ratio=plan.ratio, pruning_ratio_dict=ratios or None,
            ignored_layers=ignored_layers(pruned, plan), round_to=plan.round_to)
        if plan.importance == "taylor":
            if gradients is None:
                raise BadInputError("[prune] importance = \"taylor\" needs data: give --train or --calib")
            pruned.zero_grad()
            gradients(pruned)
        pruner.step()
    except BadInputError:
        raise
    except Exception as exc:
        raise BadInputError(f"[prune] torch-pruning could not prune this model: {first_line(exc)}") from None
    pruned.zero_grad(set_to_none=True)
    before = [tuple(t.shape) for t in _outputs(module, example)]
    after = [tuple(t.shape) for t in _outputs(pruned, example)]
    if before != after:
        raise BadInputError(f"[prune] pruning changed the model's output shapes {before} -> {after}: "
                            "add the layers that produce outputs to skip_layers")
    return pruned


def layer_groups(module, example: tuple, plan: ChannelPlan) -> list[str]:
    """The names of the layers that root a prunable channel group: the units a scan varies."""
    tp = _tp()
    graph = tp.DependencyGraph().build_dependency(module, example_inputs=example)
    ignored = ignored_layers(module, plan)
    names = {m: name for name, m in module.named_modules()}
    roots = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[
            tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR]):
        root = group[0].dep.target.module
        if root in names and names[root] not in roots:
            roots.append(names[root])
    return roots


def channel_counts(module) -> dict[str, int]:
    """Output channels of every weight layer, for the report's before/after table."""
    return {name: int(m.weight.shape[0]) for name, m in _weight_layers(module)}
