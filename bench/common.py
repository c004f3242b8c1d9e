"""What every benchmark script shares: running a timing worker, and naming the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def add_timing_options(parser, rounds: int = 3) -> None:
    """The options every benchmark takes: one thread count for all candidates, interleaved rounds."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)


def run_worker(command: list[str]) -> dict:
    """Run one candidate's timing process; its last stdout line is a JSON object."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"benchmark worker failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> dict[str, object]:
    """The CPU (model and the ISA features that pick kernels) that produced the numbers."""
    from edgepipe.runtime.machine import machine_facts

    facts = machine_facts()
    facts.pop("hostname")
    return facts


def time_interleaved(candidates: dict[str, list[str]], rounds: int) -> dict[str, float]:
    """Median over rounds of each candidate's median latency; rounds interleave (A B C, A B C)."""
    import statistics

    per_round: dict[str, list[float]] = {key: [] for key in candidates}
    for _ in range(rounds):
        for key, command in candidates.items():
            per_round[key].append(statistics.median(run_worker(command)["latencies_ms"]))
    return {key: statistics.median(values) for key, values in per_round.items()}


def write_report(out: Path, benchmark: str, settings: dict[str, object], models: dict[str, object]) -> None:
    from datetime import UTC, datetime

    report = {"benchmark": benchmark, "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
              "machine": machine(), "settings": settings, "models": models}
    out.parent.mkdir(parents=True, exist_ok=True)
    from edgepipe.runtime import strict_json

    out.write_text(strict_json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
