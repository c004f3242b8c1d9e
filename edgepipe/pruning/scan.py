"""Sensitivity scan: how much accuracy each prunable layer group loses at each ratio, alone.

Each group is pruned on its own, without fine-tuning, and scored in eager torch
(hundreds of candidates: exporting each one would cost more than the scan tells).
The shipped model is still scored in the target's runtime by the prune stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgepipe.artifact import TensorSpec
from edgepipe.pruning.structured import ChannelPlan, channel_counts, layer_groups, prune_channels
from edgepipe.reference import torch_runner
from edgepipe.scoring import Evaluator


@dataclass(frozen=True)
class ScanRow:
    layer: str
    ratio: float
    channels: int  # the root layer's output channels after pruning
    score: float  # the evaluator's primary number (top-1 %, metric, or mean cosine)
    drop: float  # float model's primary minus this one (positive: worse)

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "ratio": self.ratio, "channels": self.channels,
                "score": round(self.score, 6), "drop": round(self.drop, 6)}


def scan(module, example: tuple, specs: tuple[TensorSpec, ...], plan: ChannelPlan,
         ratios: Sequence[float], evaluator: Evaluator, gradients: Callable[[Any], None] | None = None,
         on_row: Callable[[ScanRow], None] = lambda row: None) -> list[ScanRow]:
    reference = evaluator.float_primary
    rows = []
    for layer in layer_groups(module, example, plan):
        for ratio in ratios:
            single = replace(plan, ratio=0.0, layer_ratios={layer: ratio}, global_pruning=False)
            pruned = prune_channels(module, example, single, gradients)
            value = evaluator.primary_value(evaluator.score(torch_runner(pruned, specs, layer)))
            row = ScanRow(layer, ratio, channel_counts(pruned).get(layer, 0), value, reference - value)
            rows.append(row)
            on_row(row)
    return rows


def choose_ratios(rows: Sequence[ScanRow], max_ratio: float, tolerance: float) -> dict[str, float]:
    """Per group, the largest scanned ratio (up to `max_ratio`) that alone costs at most `tolerance`.

    Groups that cannot lose even the smallest ratio get 0. Drops add up when groups
    are pruned together, so the stage still scores the combined model against the
    budget and backs off when needed.
    """
    chosen: dict[str, float] = {}
    for row in rows:
        chosen.setdefault(row.layer, 0.0)
        if row.ratio <= max_ratio and row.drop <= tolerance:
            chosen[row.layer] = max(chosen[row.layer], row.ratio)
    return chosen
