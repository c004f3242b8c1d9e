"""Budget rules: what a stage's scores must satisfy. The pipeline (pipeline.py) is the only
caller that turns a violation into a verdict; stages measure and never judge.

Two kinds of budget: elementwise parity (`AccuracyBudget`: atol/rtol, cosine, top-1
agreement) for transformations that should change nothing, and task budgets
(`max_top1_drop`, `max_metric_drop`, `min_cosine` on evaluation data) for lossy stages
(int8, pruning), judged against the stage's own input model.
"""

from __future__ import annotations

import math
from typing import Protocol

from edgepipe.scoring import Scores


class TaskBudget(Protocol):
    max_top1_drop: float
    max_map_drop: float
    max_metric_drop: float
    min_cosine: float


def allowed_drop(primary: str, budget: TaskBudget) -> float:
    """How far the primary number may fall: top-1 points, mAP points, metric units, or 1 - cosine."""
    return {"top1": budget.max_top1_drop, "map": budget.max_map_drop, "metric": budget.max_metric_drop,
            "cosine": 1.0 - budget.min_cosine}[primary]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def task_violations(base: Scores, base_metric: float | None, scores: Scores, budget: TaskBudget,
                    against: str) -> list[str]:
    """What a candidate breaks of a task budget, judged against the model it was derived from.
    A score that is not a finite number breaks the budget: NaN compares false with everything."""
    found = []
    if base.top1 is not None and scores.top1 is not None:
        drop = base.top1 - scores.top1
        if not drop <= budget.max_top1_drop:
            found.append(f"top-1 {base.top1:.2f}% -> {scores.top1:.2f}% "
                         f"(drop {drop:.2f} > {budget.max_top1_drop:g} points)")
    if base.map50_95 is not None and scores.map50_95 is not None:
        drop = base.map50_95 - scores.map50_95
        if not drop <= budget.max_map_drop:
            found.append(f"mAP@0.5:0.95 {base.map50_95:.2f} -> {scores.map50_95:.2f} "
                         f"(drop {drop:.2f} > {budget.max_map_drop:g} points)")
    if base_metric is not None and scores.metric is not None:
        drop = base_metric - scores.metric
        if not drop <= budget.max_metric_drop:
            found.append(f"metric {base_metric:.4g} -> {scores.metric:.4g} "
                         f"(drop {drop:.4g} > {budget.max_metric_drop:g})")
    if scores.mean_cosine is not None and not scores.mean_cosine >= budget.min_cosine:
        found.append(f"mean cosine vs {against} {scores.mean_cosine:.4f} < {budget.min_cosine:g}")
    return found


TIMED = "timed on this host, fresh processes in interleaved rounds"  # how a speed-up is usually known


def speed_violation(speedup: float, min_speedup: float, against: str, method: str = TIMED) -> str | None:
    """A candidate that is not faster than the model it replaces by `min_speedup` is not worth
    its accuracy loss. `speedup` is the baseline's time over the candidate's."""
    if min_speedup > 0 and not speedup >= min_speedup:
        return f"speed-up over {against} {speedup:.2f}x < {min_speedup:g}x ({method})"
    return None
