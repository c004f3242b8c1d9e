"""`edgepipe compare BASELINE NEW`: decide a latency regression from raw samples, noise-aware.

Two profiles from the same device are compared on a statistic of their raw per-run
latencies (median or p90). The decision needs both:
- significance: a one-sided Mann-Whitney U test that NEW is slower (scipy.stats), and
- size: a seeded bootstrap confidence interval of the statistic's ratio NEW / BASELINE.

A regression is reported only when the test is significant *and* the whole interval lies
beyond the allowed slowdown; when the interval straddles the threshold the answer is
"inconclusive" (the noise is larger than the threshold), never a coin flip that makes a
release pipeline flap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgepipe.errors import BadInputError

Metric = Literal["p50", "p90"]
PROFILE_SCHEMA = "edgepipe.profile/1"
BOOTSTRAP_RESAMPLES = 2000


def parse_threshold(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise BadInputError(f"--max-slowdown {text!r}: expected a percentage such as 5% or a "
                            "fraction such as 0.05") from None
    if not 0 <= value < 10:
        raise BadInputError(f"--max-slowdown {text!r}: must be between 0% and 1000%")
    return value


def load_document(path: Path, schema: str, what: str) -> dict[str, Any]:
    """A JSON file edgepipe wrote (profile.json, matrix.json), or a one-line error saying why not."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except (ValueError, OSError) as exc:
        raise BadInputError(f"{path}: not a readable {what} ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise BadInputError(f"{path}: not an edgepipe {what} (schema {schema!r} expected)")
    return data


def load_profile_json(path: Path) -> dict[str, Any]:
    data = load_document(path, PROFILE_SCHEMA, "profile.json")
    samples = data.get("latency_ms", {}).get("samples")
    if not isinstance(samples, list) or len(samples) < 5:
        raise BadInputError(f"{path}: needs at least 5 raw latency samples to compare")
    return data


def _statistic(metric: Metric):
    percentile = {"p50": 50, "p90": 90}[metric]
    return lambda values, axis=-1: np.percentile(values, percentile, axis=axis)


@dataclass(frozen=True)
class Decision:
    metric: str
    baseline: float
    new: float
    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    threshold: float
    verdict: str  # regression | pass | inconclusive

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict == "regression" else 0

    def to_json(self) -> dict[str, Any]:
        return {key: (round(value, 6) if isinstance(value, float) else value)
                for key, value in self.__dict__.items()}


def decide(baseline: list[float], new: list[float], *, metric: Metric = "p50", max_slowdown: float = 0.05,
           alpha: float = 0.01, seed: int = 0) -> Decision:
    """The regression decision for two raw latency samples (milliseconds)."""
    from scipy import stats

    a, b = np.asarray(baseline, np.float64), np.asarray(new, np.float64)
    statistic = _statistic(metric)
    rng = np.random.default_rng(seed)
    # Independent resamples of each side: the ratio's distribution under run-to-run noise.
    ratios = (statistic(rng.choice(b, (BOOTSTRAP_RESAMPLES, len(b)), replace=True), axis=1)
              / statistic(rng.choice(a, (BOOTSTRAP_RESAMPLES, len(a)), replace=True), axis=1))
    low, high = np.percentile(ratios, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    p_value = float(stats.mannwhitneyu(b, a, alternative="greater").pvalue)
    limit = 1.0 + max_slowdown
    if p_value < alpha and low > limit:
        verdict = "regression"
    elif high <= limit:
        verdict = "pass"
    else:
        verdict = "inconclusive"
    base_value, new_value = float(statistic(a)), float(statistic(b))
    return Decision(metric=metric, baseline=base_value, new=new_value, ratio=new_value / base_value,
                    ci_low=float(low), ci_high=float(high), confidence=1 - alpha, p_value=p_value,
                    threshold=max_slowdown, verdict=verdict)


def _manifest_of(profile: dict[str, Any]) -> dict[str, Any] | None:
    path = Path(profile.get("bundle", {}).get("path", "")) / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def context_rows(baseline: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Side information (not gated): memory, cold start, energy, size and accuracy."""
    def energy(profile: dict[str, Any]) -> float | None:
        value = profile.get("energy", {})
        return value.get("joules_per_inference") if value.get("available") else None

    rows = [
        {"what": "peak RSS MiB", "baseline": baseline["memory"].get("peak_rss_mb"),
         "new": new["memory"].get("peak_rss_mb")},
        {"what": "cold start ms", "baseline": baseline["cold_start_ms"]["total"],
         "new": new["cold_start_ms"]["total"]},
        {"what": "energy J/inference", "baseline": energy(baseline), "new": energy(new)},
    ]
    manifests = [_manifest_of(baseline), _manifest_of(new)]
    if all(manifests):
        size = [sum(f["size"] for f in m["files"]) for m in manifests]
        cosine = [m["parity"]["min_cosine"] for m in manifests]
        rows += [{"what": "bundle bytes", "baseline": size[0], "new": size[1]},
                 {"what": "cosine vs source", "baseline": cosine[0], "new": cosine[1]}]
    return rows


def compare_files(baseline_path: Path, new_path: Path, *, metric: str, max_slowdown: float,
                  alpha: float) -> dict[str, Any]:
    if not 0 < alpha < 0.5:
        raise BadInputError("--alpha must be between 0 and 0.5")
    if metric not in ("p50", "p90", "energy"):
        raise BadInputError(f"--metric {metric!r}: expected p50, p90 or energy")
    baseline, new = load_profile_json(baseline_path), load_profile_json(new_path)
    if metric == "energy":
        samples = []
        for path, profile in ((baseline_path, baseline), (new_path, new)):
            energy = profile.get("energy", {})
            if not energy.get("available") or len(energy.get("samples_j_per_inference", [])) < 5:
                raise BadInputError(f"{path}: no energy samples to compare "
                                    f"({energy.get('reason', 'too few segments: profile longer')})")
            samples.append(energy["samples_j_per_inference"])
    warnings = []
    for key in ("model", "target", "backend"):
        if baseline["bundle"].get(key) != new["bundle"].get(key):
            warnings.append(f"{key} differs: {baseline['bundle'].get(key)} vs {new['bundle'].get(key)}")
    if baseline["device"].get("cpu") != new["device"].get("cpu"):
        warnings.append("profiled on different CPUs: the comparison measures the device, not the model")
    if metric == "energy":  # joules per inference per run segment; the median decides
        decision = decide(samples[0], samples[1], metric="p50", max_slowdown=max_slowdown, alpha=alpha)
        decision = Decision(**{**decision.__dict__, "metric": "energy (J/inference, median)"})
    else:
        decision = decide(baseline["latency_ms"]["samples"], new["latency_ms"]["samples"], metric=metric,
                          max_slowdown=max_slowdown, alpha=alpha)
    return {"decision": decision.to_json(), "exit_code": decision.exit_code,
            "samples": {"baseline": len(baseline["latency_ms"]["samples"]),
                        "new": len(new["latency_ms"]["samples"])},
            "context": context_rows(baseline, new), "warnings": warnings}
