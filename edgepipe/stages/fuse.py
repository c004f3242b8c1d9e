"""Fuse: fold and fuse the graph to standard ONNX, pass by pass, each pass's parity measured.

Its output feeds quantization (BatchNorm must be folded before calibration) and every
backend, so it emits standard ONNX ops only. The value is portability and correct int8
scales more than ORT fp32 speed: ORT's own load-time optimizer does most of this already.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter
from typing import Any

from pydantic import Field, field_validator

from edgepipe import onnx_model
from edgepipe.artifact import Artifact
from edgepipe.errors import BackendError
from edgepipe.parity import compare_outputs
from edgepipe.passes import PASSES
from edgepipe.passes.base import onnx_opset, unavailable_ops
from edgepipe.settings import StrictModel
from edgepipe.stages.base import BuildContext, ParityCheck, StageOutcome

STANDARD_DOMAINS = {"", "ai.onnx"}


class FuseSettings(StrictModel):
    skip: list[str] = Field(default_factory=list, description="pass names not to run")

    @field_validator("skip")
    @classmethod
    def _known_passes(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in PASSES:
                raise ValueError(f"unknown pass '{name}' (known: {', '.join(PASSES)})")
        return names


def op_histogram(model) -> Counter[str]:
    return Counter(node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}.{node.op_type}"
                   for node in model.graph)


def _histogram_change(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    return {op: after[op] - before[op] for op in sorted(set(before) | set(after))
            if after[op] != before[op]}


def _run(model: Path | bytes, ctx: BuildContext, name: str) -> list[dict[str, Any]]:
    from edgepipe.backends.onnxruntime import exact_runner

    with exact_runner(model, ctx.inputs, name=name) as runner:
        return [runner.infer(feed) for feed in ctx.reference.inputs]


class FuseStage:
    name = "fuse"
    Settings = FuseSettings

    def run(self, model: Artifact, settings: FuseSettings, ctx: BuildContext,
            output: Path) -> Iterator[StageOutcome]:
        import onnx
        import onnx_ir

        budget = ctx.profile.accuracy
        proto = onnx.load(str(model.path))
        input_domains = {o.domain for o in proto.opset_import}
        baseline = _run(model.path, ctx, model.path.name)  # parity is against the stage's input
        graph = onnx_ir.serde.deserialize_model(proto)
        nodes_before = sum(1 for _ in graph.graph)
        rows: list[dict[str, Any]] = []
        checks: list[ParityCheck] = []
        warnings: list[str] = []
        parity = None
        before_pass = proto.SerializeToString()  # the model as the next pass finds it
        for name, graph_pass in PASSES.items():
            if name in settings.skip:
                rows.append({"pass": name, "skipped": True})
                continue
            histogram = op_histogram(graph)
            unavailable = set(unavailable_ops(graph))
            started = perf_counter()
            rewrites = graph_pass.apply(graph)
            seconds = perf_counter() - started
            written = sorted(set(unavailable_ops(graph)) - unavailable)
            change = _histogram_change(histogram, op_histogram(graph))
            problem = ""
            if written:
                problem = f"it wrote {written[0]}, which opset {onnx_opset(graph)} does not define"
            if not problem and (rewrites or change or parity is None):
                candidate = onnx_ir.serde.serialize_model(graph).SerializeToString()
                try:
                    outputs = _run(candidate, ctx, f"model after pass '{name}'")
                except BackendError as exc:
                    problem = f"onnxruntime cannot run its result ({exc})"
            if problem:
                # An optimisation that breaks a model nobody here wrote (an op its opset lacks, a
                # folded dead If branch whose shapes no longer agree) is dropped, not the build;
                # a pass that runs but changes outputs still fails parity below.
                graph = onnx_ir.serde.deserialize_model(onnx.load_from_string(before_pass))
                warnings.append(f"fuse pass '{name}' undone: {problem}")
                rows.append({"pass": name, "skipped": False, "rewrites": 0, "undone": problem,
                             "seconds": round(perf_counter() - started, 3)})
                continue
            if rewrites or change or parity is None:
                before_pass = candidate
                parity = compare_outputs(baseline, outputs, budget.atol, budget.rtol)
                checks.append(ParityCheck(f"fuse pass '{name}'", parity,
                                          f"skip it with --skip-pass {name} or [fuse] skip = [\"{name}\"]"))
            rows.append({
                "pass": name, "skipped": False, "rewrites": rewrites, "seconds": round(seconds, 3),
                "nodes_before": sum(histogram.values()), "nodes_after": sum(1 for _ in graph.graph),
                "op_change": change, "max_abs_diff": float(f"{parity.max_abs_diff:.4g}"),
                "min_cosine": float(f"{parity.min_cosine:.9f}"),
            })
        result = onnx_model.infer_shapes_afresh(onnx_ir.serde.serialize_model(graph), output)
        new_domains = {o.domain for o in result.opset_import} - input_domains - STANDARD_DOMAINS
        if new_domains:
            raise BackendError(f"fuse emitted non-standard ops from {sorted(new_domains)}; "
                               "this is a bug in a pass")
        onnx.checker.check_model(result)
        files = onnx_model.save(result, output)
        nodes_after = len(result.graph.node)
        artifact = Artifact(output, "onnx", model.inputs, onnx_model.graph_outputs(result),
                            tuple(files[1:]))
        yield StageOutcome(artifact, checks=checks, warnings=warnings, metrics={
            "nodes_before": nodes_before, "nodes_after": nodes_after, "passes": rows,
            "skipped": list(settings.skip),
        })
