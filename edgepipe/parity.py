"""Output parity between a transformed model and the reference it must match."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Feed = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs_diff: float
    mean_abs_diff: float
    cosine: float
    tolerance_ratio: float  # worst |diff| / (atol + rtol * |ref|); above 1 fails allclose
    top1_agreement: float | None  # for classifier-shaped (batch, classes) outputs
    nonfinite_reference: int = 0  # NaN/inf elements: any breaks parity (nothing can be compared)
    nonfinite_candidate: int = 0
    max_abs_reference: float = math.inf

    def to_json(self, elementwise: bool = True) -> dict[str, Any]:
        """`elementwise`: whether an atol/rtol budget applied (after int8 none does: no ratio)."""
        return {
            "name": self.name,
            "max_abs_diff": float(f"{self.max_abs_diff:.6g}"),
            "mean_abs_diff": float(f"{self.mean_abs_diff:.6g}"),
            "cosine": float(f"{self.cosine:.9f}"),
            "tolerance_ratio": float(f"{self.tolerance_ratio:.4g}") if elementwise else None,
            "top1_agreement": self.top1_agreement,
            **({"nonfinite_reference": self.nonfinite_reference, "nonfinite": self.nonfinite_candidate}
               if self.nonfinite_reference or self.nonfinite_candidate else {}),
        }


@dataclass(frozen=True)
class ParityReport:
    samples: int
    atol: float | None  # None (both): no elementwise budget, as after int8; cosine judges
    rtol: float | None
    outputs: tuple[OutputParity, ...]

    @property
    def max_abs_diff(self) -> float:
        return max(o.max_abs_diff for o in self.outputs)

    @property
    def min_cosine(self) -> float:
        return min(o.cosine for o in self.outputs)

    @property
    def min_top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    def violations(self, budget: Any) -> list[str]:
        """Each way the report exceeds `budget` (an AccuracyBudget), as a readable phrase."""
        found = []
        for out in self.outputs:
            # Written as "not within" so that NaN (which compares false with everything) fails.
            if out.nonfinite_reference:
                found.append(f"output '{out.name}' of the reference model holds {out.nonfinite_reference} "
                             "NaN or infinite values")
                continue
            if out.nonfinite_candidate or not math.isfinite(out.cosine):
                found.append(f"output '{out.name}' holds {out.nonfinite_candidate} NaN or infinite values "
                             "where the reference is finite")
                continue
            if budget.atol is not None and not out.tolerance_ratio <= 1.0:
                found.append(f"output '{out.name}' differs by up to {out.tolerance_ratio:.3g}x "
                             f"the tolerance atol {self.atol or 0:g} + rtol {self.rtol or 0:g} * |ref| "
                             f"(max abs diff {out.max_abs_diff:.3g})")
            # Cosine is blind to scale: on an output whose every value lies within atol of zero (a
            # detector's probability map on random input peaks near 1e-6) float reassociation
            # alone moves it (PP-OCRv3 det: 0.989 at max |diff| 1.5e-7). Where both the output and
            # its differences are negligible at the budget's own scale (values within atol, no
            # difference above atol / 100), the elementwise test has said all there is to say.
            negligible = (budget.atol is not None and out.max_abs_reference <= budget.atol
                          and out.max_abs_diff <= budget.atol / 100)
            if not out.cosine >= budget.min_cosine and not negligible:
                found.append(f"output '{out.name}' cosine {out.cosine:.6f} < {budget.min_cosine:g}")
            if out.top1_agreement is not None and not out.top1_agreement >= budget.min_top1_agreement:
                found.append(f"output '{out.name}' top-1 agreement {out.top1_agreement:.3f} "
                             f"< {budget.min_top1_agreement:g}")
        return found

    def to_json(self) -> dict[str, Any]:
        elementwise = self.atol is not None or self.rtol is not None
        return {
            "samples": self.samples,
            "atol": self.atol,
            "rtol": self.rtol,
            "max_tolerance_ratio": float(f"{max(o.tolerance_ratio for o in self.outputs):.4g}")
            if elementwise else None,
            "max_abs_diff": float(f"{self.max_abs_diff:.6g}"),
            "min_cosine": float(f"{self.min_cosine:.9f}"),
            "min_top1_agreement": self.min_top1_agreement,
            "outputs": [o.to_json(elementwise) for o in self.outputs],
        }


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        # Two all-zero outputs are identical; one all-zero output is not.
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norm)


def compare_outputs(reference: Sequence[Feed], candidate: Sequence[Feed], atol: float | None,
                    rtol: float | None) -> ParityReport:
    """Compare per output over all samples, matching outputs by position.

    The tolerance test is numpy.allclose's, |got - ref| <= atol + rtol * |ref| for
    every element, so large-magnitude outputs are judged relative to their size.

    Outputs are matched by position because exporters and optimizers may rename
    them; the reference's names are the ones reported.
    """
    if len(reference) != len(candidate):
        raise ValueError("reference and candidate have different sample counts")
    if reference and len(reference[0]) != len(candidate[0]):
        raise ValueError(f"{len(reference[0])} outputs became {len(candidate[0])}")
    names = list(reference[0])
    results = []
    for position, name in enumerate(names):
        ref = [np.asarray(list(sample.values())[position]) for sample in reference]
        got = [np.asarray(list(sample.values())[position]) for sample in candidate]
        ref_flat = np.concatenate([r.astype(np.float64).ravel() for r in ref])
        got_flat = np.concatenate([g.astype(np.float64).ravel() for g in got])
        if ref_flat.shape != got_flat.shape:
            raise ValueError(f"output '{name}' changed shape: {ref[0].shape} -> {got[0].shape}")
        # NaN/inf make every number below NaN or inf: counted apart and reported as such.
        with np.errstate(all="ignore"):
            diff = np.abs(ref_flat - got_flat)
            allowed = (atol or 0.0) + (rtol or 0.0) * np.abs(ref_flat)
            ratio = np.where(diff == 0, 0.0, diff / allowed)
            cos = cosine(ref_flat, got_flat)
        top1 = None
        if all(r.ndim == 2 and r.shape[1] > 1 for r in ref):
            agree = sum(int((r.argmax(1) == g.argmax(1)).sum()) for r, g in zip(ref, got, strict=True))
            top1 = agree / sum(r.shape[0] for r in ref)
        results.append(OutputParity(
            name=name,
            max_abs_diff=float(diff.max()) if diff.size else 0.0,
            mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
            cosine=cos,
            tolerance_ratio=float(ratio.max()) if ratio.size else 0.0,
            top1_agreement=top1,
            nonfinite_reference=int((~np.isfinite(ref_flat)).sum()),
            nonfinite_candidate=int((~np.isfinite(got_flat)).sum()),
            max_abs_reference=float(np.abs(ref_flat).max()) if ref_flat.size else 0.0,
        ))
    return ParityReport(samples=len(reference), atol=atol, rtol=rtol, outputs=tuple(results))
