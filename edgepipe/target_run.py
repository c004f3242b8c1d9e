"""Run a stage's candidate as the target's backend will, for scoring and timing inside a stage.

Which kernels saturate, and what a removed channel is worth in milliseconds, differ
between runtimes and CPUs, so stages that judge accuracy or speed do it with the
target's own backend and settings (the runtime's runner, as the device creates it)
rather than with whatever runtime is at hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter

from edgepipe.artifact import Artifact
from edgepipe.backends import get_backend
from edgepipe.data.samples import Feed
from edgepipe.stages.base import BuildContext


@contextmanager
def target_run(artifact: Artifact, ctx: BuildContext) -> Iterator[Callable[[Feed], dict]]:
    backend = get_backend(ctx.target.backend)
    precision = getattr(ctx.profile.stage_settings.get("lower"), "precision", "f32")
    with backend.candidate_runner(artifact, ctx.target.runtime, precision) as runner:
        yield runner.infer


def time_run(run: Callable[[Feed], dict], feed: Feed, runs: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of `run(feed)`: an in-build estimate (one process, few runs) for
    reports; bench/ measures properly."""
    times = []
    for _ in range(runs + warmup):
        started = perf_counter()
        run(feed)
        times.append(perf_counter() - started)
    times = sorted(times[warmup:])
    return 1000 * times[len(times) // 2]

