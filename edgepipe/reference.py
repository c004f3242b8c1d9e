"""Sample inputs and the reference outputs every stage is compared against.

The reference is the user's own model run by its own framework: torch for torch
sources, ONNX Runtime with every graph optimization off for ONNX sources.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.artifact import TensorSpec
from edgepipe.data.samples import random_samples
from edgepipe.errors import BadInputError, EdgepipeError, first_line
from edgepipe.sources import SourceModel

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Reference:
    inputs: list[Feed]
    outputs: list[Feed]
    origin: str  # how the inputs were made, for the report

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs[0])


def _flatten_torch_outputs(value: Any, prefix: str = "output") -> list[tuple[str, Any]]:
    import torch

    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    if isinstance(value, Mapping):
        return [pair for key, item in value.items() for pair in _flatten_torch_outputs(item, str(key))]
    if isinstance(value, list | tuple):
        flat = [pair for i, item in enumerate(value)
                for pair in _flatten_torch_outputs(item, f"{prefix}_{i}")]
        return flat
    raise BadInputError(f"model returned {type(value).__name__}; expected tensors")


def torch_runner(module, specs: tuple[TensorSpec, ...], label: str) -> Callable[[Feed], Feed]:
    """`run(feed) -> {output name: array}` for a torch module, named as the reference names them."""
    import torch

    def run(feed: Feed) -> Feed:
        args = [torch.from_numpy(np.asarray(feed[s.name], order="C")) for s in specs]
        with torch.inference_mode():
            try:
                value = module(*args)
            except (Exception, SystemExit) as exc:
                raise BadInputError(
                    f"{label}: forward pass failed on inputs "
                    f"{ {s.name: list(s.shape) for s in specs} }: {first_line(exc)}"
                ) from None
        flat = _flatten_torch_outputs(value)
        if len(flat) == 1:
            flat = [("output", flat[0][1])]
        return {name: t.detach().cpu().numpy() for name, t in flat}
    return run


def torch_outputs(source: SourceModel, specs: tuple[TensorSpec, ...], inputs: list[Feed]) -> list[Feed]:
    module = source.module.module() if source.kind == "exported_program" else source.module
    run = torch_runner(module, specs, source.spec)
    return [run(feed) for feed in inputs]


def onnx_outputs(model_path: Path, specs: tuple[TensorSpec, ...], inputs: list[Feed]) -> list[Feed]:
    from edgepipe.backends.onnxruntime import exact_runner

    with exact_runner(model_path, specs) as runner:
        return [runner.infer(feed) for feed in inputs]


def source_outputs(source: SourceModel, specs: tuple[TensorSpec, ...], inputs: list[Feed]) -> list[Feed]:
    """The source model run by its own framework (torch, or ONNX Runtime exactly as written)."""
    if source.kind == "onnx":
        return onnx_outputs(source.path, specs, inputs)
    return torch_outputs(source, specs, inputs)


def make_reference(source: SourceModel, specs: tuple[TensorSpec, ...], count: int, seed: int,
                   samples: list[Feed] | None = None, samples_origin: str = "") -> Reference:
    random = samples is None
    if random:
        examples = None
        if source.example_inputs:
            examples = {k: v.detach().cpu().numpy() for k, v in source.example_inputs.items()}
        samples = random_samples(specs, count, seed, examples)
        origin = f"{count} seeded random samples (seed {seed})"
    else:
        origin = samples_origin
    try:
        outputs = source_outputs(source, specs, samples)
    except EdgepipeError as exc:
        guessed = [s for s in specs if np.dtype(s.dtype).kind in "iub" and s.values is None]
        if not random or not guessed:
            raise
        first = guessed[0]
        raise BadInputError(
            f"the source model fails on seeded random samples ({first_line(exc, 240)}); its integer "
            f"input{'s' if len(guessed) > 1 else ''} {', '.join(repr(s.name) for s in guessed)} got "
            f"random values: give real samples with --calib, or the values it takes with --input "
            f"{first.name}=A,B or {first.name}=LOW..HIGH") from None
    _check_finite(outputs, origin, random=random)
    return Reference(inputs=samples, outputs=outputs, origin=origin)


@dataclass(frozen=True)
class RangeReference:
    """The source model at both ends of the --input MIN/OPT/MAX ranges. The build itself runs at
    OPT; these two samples are what holds every stage to the rest of the range it ships for."""

    labels: list[str]  # "min shape images 1x3x96x96", "max shape ..."
    inputs: list[Feed]
    outputs: list[Feed]


def range_reference(source: SourceModel, specs: tuple[TensorSpec, ...], seed: int) -> RangeReference | None:
    """One seeded random sample at the ranges' min shapes and one at their max (None: no range)."""
    if not any(spec.shape_range for spec in specs):
        return None
    labels, inputs, outputs = [], [], []
    for index, end in enumerate(("min", "max")):
        at = tuple(replace(s, shape=s.shape_range[index]) if s.shape_range else s for s in specs)
        label = f"{end} shape " + ", ".join(f"{s.name} {'x'.join(map(str, s.shape))}"
                                            for s, own in zip(at, specs, strict=True) if own.shape_range)
        feed = random_samples(at, 1, seed + index)[0]
        try:
            out = source_outputs(source, at, [feed])[0]
        except EdgepipeError as exc:
            raise BadInputError(f"--input range: the source model does not run at its {label} "
                                f"({first_line(exc, 240)})") from None
        labels.append(label)
        inputs.append(feed)
        outputs.append(out)
    _check_finite(outputs, "the --input range's ends", random=True)
    return RangeReference(labels, inputs, outputs)


def _check_finite(outputs: list[Feed], origin: str, random: bool) -> None:
    """A reference that holds NaN or inf can be matched by nothing (NaN equals nothing, and every
    parity number turns NaN): refuse it, saying whether the samples or the model are at fault."""
    for index, sample in enumerate(outputs):
        for name, value in sample.items():
            array = np.asarray(value)
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                bad = "NaN" if np.isnan(array).any() else "infinite"
                if random:
                    raise BadInputError(
                        f"the source model's output '{name}' is {bad} on seeded random samples: they are "
                        "outside the inputs it accepts (e.g. a log or sqrt of negative numbers); give "
                        "real samples with --calib")
                raise BadInputError(f"the source model's output '{name}' is {bad} on sample {index} of "
                                    f"{origin}: the model itself (a NaN weight?) or that sample is broken")
