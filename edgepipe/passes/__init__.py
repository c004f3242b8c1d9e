"""Graph passes of the fuse stage, in the order they run. Add a pass: one module, one entry.

Order matters: cleanup first so patterns see the real graph; folding before BatchNorm
(pads and scales become constants); Gemm before BatchNorm (BN after MatMul+Add folds
into the Gemm); tidy last.
"""

from __future__ import annotations

from edgepipe.passes.activation import ActivationPass
from edgepipe.passes.base import GraphPass
from edgepipe.passes.batchnorm import BatchNormPass
from edgepipe.passes.cleanup import CleanupPass
from edgepipe.passes.constant_folding import ConstantFoldingPass
from edgepipe.passes.gelu import GeluPass
from edgepipe.passes.gemm import GemmPass
from edgepipe.passes.layer_norm import LayerNormPass
from edgepipe.passes.pad_into_conv import PadIntoConvPass
from edgepipe.passes.tidy import TidyPass

PASSES: dict[str, GraphPass] = {
    p.name: p for p in (
        CleanupPass(), ConstantFoldingPass(), GemmPass(), BatchNormPass(), PadIntoConvPass(),
        LayerNormPass(), GeluPass(), ActivationPass(), TidyPass(),
    )
}

__all__ = ["PASSES", "GraphPass"]
