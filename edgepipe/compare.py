"""`edgepipe compare BASELINE NEW`: decide a latency regression from raw samples, noise-aware.

The statistical unit is the process. A profile is several rounds, each a fresh process, and
one process's runs are not independent samples of the device (thread placement, memory
layout and neighbours are fixed for its life), so the decision rests on the rounds:
- significance: a one-sided Welch t-test that the logarithms of NEW's per-round statistics
  (median or p90 of each round) are larger than BASELINE's (scipy.stats; a rank test cannot
  reach 1 % with the handful of rounds a profile has: 4 against 4 gives at best p = 1/70), and
- size: a seeded hierarchical bootstrap confidence interval of the ratio NEW / BASELINE:
  rounds resampled, then runs within each chosen round, so the interval carries the
  between-process noise.

Rounds timed A/B on one device (`compare --run`) are compared pair by pair instead: each new
round against the old round beside it in time (a one-sided t-test on the pairs' log ratios,
pairs resampled for the interval), so drift of the device between pairs cancels out.

A regression is reported only when the test is significant *and* the whole interval lies
beyond the allowed slowdown; when the interval straddles the threshold the answer is
"inconclusive" (the noise is larger than the threshold), never a coin flip that makes a
release pipeline flap. A profile of one round (older profiles, `--rounds 1`) is still
compared, run against run, with a warning that the verdict cannot see process noise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgepipe.errors import BadInputError

Metric = Literal["p50", "p90"]
PROFILE_SCHEMA = "edgepipe.profile/1"
BOOTSTRAP_RESAMPLES = 2000
Rounds = Sequence[Sequence[float]]  # raw samples of each round (fresh process)
ONE_ROUND = ("one round per profile: the verdict compares runs of one process each and cannot "
             "account for the larger noise between processes (profile with --rounds 5 or more)")


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


def _numbers(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in values)


def load_profile_json(path: Path) -> dict[str, Any]:
    data = load_document(path, PROFILE_SCHEMA, "profile.json")
    latency = data.get("latency_ms")
    samples = latency.get("samples") if isinstance(latency, dict) else None
    if not _numbers(samples):
        raise BadInputError(f"{path}: latency_ms.samples must be a list of finite, positive "
                            "numbers")
    rounds = latency.get("rounds")
    if rounds is not None and (not isinstance(rounds, list) or not rounds or not all(
            _numbers(r) and r for r in rounds)):
        raise BadInputError(f"{path}: latency_ms.rounds must be lists of finite, positive numbers")
    if len(samples) < 5:
        raise BadInputError(f"{path}: needs at least 5 raw latency samples to compare")
    return data


def latency_rounds(profile: dict[str, Any]) -> list[list[float]]:
    """A profile's samples per round (fresh process); an older profile is one round."""
    latency = profile["latency_ms"]
    return [list(r) for r in latency.get("rounds") or [latency["samples"]]]


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
    unit: str = "process"  # what was resampled: "process" (rounds), or "run" (one-round profiles)
    rounds: tuple[int, int] = (1, 1)

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict == "regression" else 0

    def to_json(self) -> dict[str, Any]:
        return {key: (round(value, 6) if isinstance(value, float) else
                      list(value) if isinstance(value, tuple) else value)
                for key, value in self.__dict__.items()}


def _as_rounds(samples: Rounds | Sequence[float]) -> list[np.ndarray]:
    """Rounds of samples; a flat list of numbers is one round."""
    if len(samples) and isinstance(samples[0], int | float):
        return [np.asarray(samples, np.float64)]
    return [np.asarray(r, np.float64) for r in samples]  # type: ignore[union-attr]


def _verdict(p_value: float, low: float, high: float, alpha: float, limit: float) -> str:
    if p_value < alpha and low > limit:
        return "regression"
    if high <= limit:
        return "pass"
    return "inconclusive"


def _resampled(rounds: list[np.ndarray], statistic, rng: np.random.Generator,
               picks: np.ndarray) -> np.ndarray:
    """The two-stage bootstrap's inner stage: for each replicate (row) and each pick (column) of a
    round, that round's statistic over a fresh resample of its runs."""
    out = np.empty(picks.shape)
    for index, values in enumerate(rounds):
        where = picks == index
        draws = int(where.sum())
        if draws:
            out[where] = statistic(rng.choice(values, (draws, len(values)), replace=True), axis=1)
    return out


def _bootstrap_side(rounds: list[np.ndarray], statistic, rng: np.random.Generator) -> np.ndarray:
    """BOOTSTRAP_RESAMPLES draws of a side's statistic: rounds resampled with replacement, runs
    resampled afresh within each chosen round, the median of the chosen rounds' statistics."""
    picks = rng.integers(0, len(rounds), (BOOTSTRAP_RESAMPLES, len(rounds)))
    return np.median(_resampled(rounds, statistic, rng, picks), axis=1)


def _log_welch(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided p-value that b's rounds are slower than a's, on the log scale (ratios, not
    differences, are what timing noise multiplies)."""
    from scipy import stats

    log_a, log_b = np.log(a), np.log(b)
    if np.ptp(log_a) == 0 and np.ptp(log_b) == 0:  # no spread at all: the means decide
        return 0.0 if log_b.mean() > log_a.mean() else 1.0
    return float(stats.ttest_ind(log_b, log_a, equal_var=False, alternative="greater").pvalue)


def _paired(a_rounds: list[np.ndarray], b_rounds: list[np.ndarray], statistic,
            rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """Interleaved A/B rounds: each B round against the A round beside it in time, so drift of
    the device between pairs cancels. (bootstrap ratios, p-value, ratio): pairs resampled, runs
    resampled afresh within each pair's rounds; a one-sided t-test on the pairs' log ratios; the
    ratio is the median pair's, the quantity the interval describes."""
    from scipy import stats

    picks = rng.integers(0, len(a_rounds), (BOOTSTRAP_RESAMPLES, len(a_rounds)))
    logs = (np.log(_resampled(b_rounds, statistic, rng, picks))
            - np.log(_resampled(a_rounds, statistic, rng, picks)))
    differences = (np.log([statistic(r) for r in b_rounds]) - np.log([statistic(r) for r in a_rounds]))
    if np.ptp(differences) == 0:
        p_value = 0.0 if differences[0] > 0 else 1.0
    else:
        p_value = float(stats.ttest_1samp(differences, 0.0, alternative="greater").pvalue)
    return np.exp(np.median(logs, axis=1)), p_value, float(np.exp(np.median(differences)))


def decide(baseline: Rounds | Sequence[float], new: Rounds | Sequence[float], *, metric: Metric = "p50",
           max_slowdown: float = 0.05, alpha: float = 0.01, seed: int = 0, paired: bool = False) -> Decision:
    """The regression decision for two profiles' raw latencies (milliseconds), given per round
    (a list of lists) or as one round (a flat list). `paired`: the rounds were interleaved on one
    device (`compare --run`), round i of each side beside the other in time."""
    from scipy import stats

    a_rounds, b_rounds = _as_rounds(baseline), _as_rounds(new)
    statistic = _statistic(metric)
    rng = np.random.default_rng(seed)
    a_stats = np.array([statistic(r) for r in a_rounds])
    b_stats = np.array([statistic(r) for r in b_rounds])
    if not (a_stats > 0).all() or not (b_stats > 0).all():
        raise BadInputError(f"a round's {metric} is zero: there is no ratio to judge (an energy meter "
                            "too coarse for this model? profile longer)")
    base_value, new_value = float(np.median(a_stats)), float(np.median(b_stats))
    ratio = new_value / base_value
    if paired and len(a_rounds) == len(b_rounds) >= 2:
        ratios, p_value, ratio = _paired(a_rounds, b_rounds, statistic, rng)
        unit = "process pair"
    elif len(a_rounds) >= 2 and len(b_rounds) >= 2:
        ratios = _bootstrap_side(b_rounds, statistic, rng) / _bootstrap_side(a_rounds, statistic, rng)
        p_value = _log_welch(a_stats, b_stats)
        unit = "process"
    else:  # one process a side: runs are the only samples there are
        a, b = np.concatenate(a_rounds), np.concatenate(b_rounds)
        # Independent resamples of each side: the ratio's distribution under run-to-run noise.
        ratios = (statistic(rng.choice(b, (BOOTSTRAP_RESAMPLES, len(b)), replace=True), axis=1)
                  / statistic(rng.choice(a, (BOOTSTRAP_RESAMPLES, len(a)), replace=True), axis=1))
        p_value = float(stats.mannwhitneyu(b, a, alternative="greater").pvalue)
        base_value, new_value, unit = float(statistic(a)), float(statistic(b)), "run"
        ratio = new_value / base_value
    low, high = np.percentile(ratios, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    limit = 1.0 + max_slowdown
    return Decision(metric=metric, baseline=base_value, new=new_value, ratio=ratio,
                    ci_low=float(low), ci_high=float(high), confidence=1 - alpha, p_value=p_value,
                    threshold=max_slowdown, verdict=_verdict(p_value, float(low), float(high), alpha, limit),
                    unit=unit, rounds=(len(a_rounds), len(b_rounds)))


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


def energy_rounds(path: Path, profile: dict[str, Any]) -> list[list[float]]:
    """Joules per inference per run segment, per round; or why a profile has none."""
    energy = profile.get("energy", {})
    rounds = energy.get("rounds_samples_j_per_inference") or [energy.get("samples_j_per_inference", [])]
    if not energy.get("available") or sum(len(r) for r in rounds) < 5:
        raise BadInputError(f"{path}: no energy samples to compare "
                            f"({energy.get('reason', 'too few segments: profile longer')})")
    if not all(isinstance(r, list) and all(isinstance(v, int | float) and math.isfinite(v) and v >= 0
                                           for v in r) for r in rounds):
        raise BadInputError(f"{path}: energy samples must be finite numbers, none negative")
    return [list(r) for r in rounds]  # empty where a round measured none: kept, so pairs stay aligned


def compare_profiles(baseline: dict[str, Any], new: dict[str, Any], *, metric: str, max_slowdown: float,
                     alpha: float, names: tuple[str, str] = ("baseline", "new"),
                     paired: bool = False) -> dict[str, Any]:
    """The decision and its context for two loaded profiles (files, or an A/B run's own)."""
    if not 0 < alpha < 0.5:
        raise BadInputError("--alpha must be between 0 and 0.5")
    if metric not in ("p50", "p90", "energy"):
        raise BadInputError(f"--metric {metric!r}: expected p50, p90 or energy")
    warnings = []
    for key in ("model", "target", "backend"):
        if baseline["bundle"].get(key) != new["bundle"].get(key):
            warnings.append(f"{key} differs: {baseline['bundle'].get(key)} vs {new['bundle'].get(key)}")
    if baseline["device"].get("cpu") != new["device"].get("cpu"):
        warnings.append("profiled on different CPUs: the comparison measures the device, not the model")
    if metric == "energy":  # joules per inference per run segment; the median decides
        sides = [energy_rounds(Path(name), profile) for name, profile in zip(names, (baseline, new),
                                                                            strict=True)]
        if paired and len(sides[0]) == len(sides[1]):  # drop whole pairs, never shift them
            kept = [(a, b) for a, b in zip(*sides, strict=True) if a and b]
            sides = [[a for a, _ in kept], [b for _, b in kept]]
        else:
            sides = [[r for r in side if r] for side in sides]
        decision = decide(sides[0], sides[1], metric="p50", max_slowdown=max_slowdown, alpha=alpha,
                          paired=paired)
        decision = Decision(**{**decision.__dict__, "metric": "energy (J/inference, median)"})
    else:
        decision = decide(latency_rounds(baseline), latency_rounds(new), metric=metric,
                          max_slowdown=max_slowdown, alpha=alpha, paired=paired)
    if decision.unit == "run":
        warnings.append(ONE_ROUND)
    return {"decision": decision.to_json(), "exit_code": decision.exit_code,
            "samples": {"baseline": len(baseline["latency_ms"]["samples"]),
                        "new": len(new["latency_ms"]["samples"])},
            "rounds": {"baseline": len(latency_rounds(baseline)), "new": len(latency_rounds(new))},
            "context": context_rows(baseline, new), "warnings": warnings}


def compare_files(baseline_path: Path, new_path: Path, *, metric: str, max_slowdown: float,
                  alpha: float) -> dict[str, Any]:
    baseline, new = load_profile_json(baseline_path), load_profile_json(new_path)
    return compare_profiles(baseline, new, metric=metric, max_slowdown=max_slowdown, alpha=alpha,
                            names=(str(baseline_path), str(new_path)))
