"""Stage registry. A stage is added by writing its module and adding one entry here."""

from __future__ import annotations

from collections.abc import Sequence

from edgepipe.stages.base import BuildContext, Stage, StageOutcome
from edgepipe.stages.export import ExportStage
from edgepipe.stages.fuse import FuseStage
from edgepipe.stages.lower import LowerStage
from edgepipe.stages.prune import PruneStage
from edgepipe.stages.quantize import QuantizeStage

STAGES: dict[str, type[Stage]] = {
    ExportStage.name: ExportStage,
    FuseStage.name: FuseStage,
    PruneStage.name: PruneStage,
    QuantizeStage.name: QuantizeStage,
    LowerStage.name: LowerStage,
}

__all__ = ["STAGES", "BuildContext", "Stage", "StageOutcome", "validate_stage_order"]


def validate_stage_order(stages: Sequence[str]) -> str | None:
    """Why a stage list cannot run, or None: it starts with export and ends with lower."""
    if not stages or stages[0] != "export":
        return "the first stage must be 'export'"
    if stages[-1] != "lower":
        return "the last stage must be 'lower'"
    if len(set(stages)) != len(stages):
        return "a stage is listed twice"
    if "prune" in stages and "quantize" in stages and stages.index("prune") > stages.index("quantize"):
        return "'prune' must come before 'quantize' (int8 ranges are calibrated on the final weights)"
    return None
