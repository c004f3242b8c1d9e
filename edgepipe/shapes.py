"""`--input NAME:1x3x224x224[:dtype][=VALUES]` (or NAME:MIN/OPT/MAX, NAME:scalar, NAME=VALUES) specs,
resolved against a model's inputs. VALUES ("8000,16000", "0..255") is what random samples of that
input are drawn from (`runtime.feeds.parse_values`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgepipe.artifact import TensorSpec, layout_guess
from edgepipe.errors import BadInputError
from edgepipe.runtime.feeds import parse_values

_DIMS = r"\d+(?:x\d+)*"
# The name may hold colons (tf2onnx names inputs "serving_default_x:0"): it is the shortest
# prefix after which the rest parses, and a dtype starts with a letter, so "x:0:1x4" is x:0 at 1x4.
_SPEC = re.compile(rf"^(?P<name>[^=]+?)(?::(?P<dims>scalar|{_DIMS}(?:/{_DIMS}/{_DIMS})?)"
                   r"(?::(?P<dtype>[a-z][a-z0-9]*))?)?(?:=(?P<values>[^=]+))?$")
EXAMPLE = "input:1x3x224x224"


@dataclass(frozen=True)
class InputOverride:
    name: str
    shape: tuple[int, ...] | None  # what the build runs with: the single shape, or a range's opt
    dtype: str | None
    # MIN/OPT/MAX, for runtimes that build for a range of shapes (TensorRT profiles)
    shape_range: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None
    values: str | None = None


def parse_input_spec(text: str) -> InputOverride:
    match = _SPEC.match(text.strip())
    if not match or not (match["dims"] or match["values"]):
        raise BadInputError(
            f"bad --input '{text}': expected NAME:DIMxDIMx...[:dtype][=VALUES], e.g. {EXAMPLE}, "
            "sr:scalar:int64=8000,16000 or ids=0..30521"
        )
    values = match["values"]
    if values is not None:
        try:  # the check against the input's own dtype follows in resolve_inputs
            parse_values(values, _dtype(text, match["dtype"]) or "float64")
        except BadInputError:
            raise BadInputError(f"bad --input '{text}': expected NAME:DIMxDIMx...[:dtype][=VALUES], VALUES "
                                "as LOW..HIGH (LOW <= HIGH) or A,B,... of numbers the dtype holds") from None
    if match["dims"] is None:
        return InputOverride(match["name"], None, None, values=values)
    if match["dims"] == "scalar":
        return InputOverride(match["name"], (), _dtype(text, match["dtype"]), values=values)
    shapes = [tuple(int(d) for d in part.split("x")) for part in match["dims"].split("/")]
    if any(d == 0 for shape in shapes for d in shape):
        raise BadInputError(f"bad --input '{text}': dimensions must be positive")
    shape_range = None
    if len(shapes) == 3:
        low, dims, high = shapes
        if not len(low) == len(dims) == len(high) or not all(
                a <= b <= c for a, b, c in zip(low, dims, high, strict=True)):
            raise BadInputError(f"bad --input '{text}': MIN/OPT/MAX need the same rank and "
                                "min <= opt <= max in every dimension")
        shape_range = (low, dims, high)
    else:
        dims = shapes[0]
    return InputOverride(match["name"], dims, _dtype(text, match["dtype"]), shape_range, values)


def _dtype(text: str, dtype: str | None) -> str | None:
    if dtype is None:
        return None
    try:
        return np.dtype(dtype).name
    except TypeError:
        raise BadInputError(f"bad --input '{text}': unknown dtype '{dtype}'") from None


def parse_input_specs(texts: Sequence[str]) -> dict[str, InputOverride]:
    overrides: dict[str, InputOverride] = {}
    for text in texts:
        override = parse_input_spec(text)
        if override.name in overrides:
            raise BadInputError(f"--input '{override.name}' given twice")
        overrides[override.name] = override
    return overrides


def resolve_inputs(
    declared: Sequence[TensorSpec], overrides: dict[str, InputOverride]
) -> tuple[TensorSpec, ...]:
    """Give every declared input a static shape: the model's own, or the user's override."""
    names = [spec.name for spec in declared]
    for name in overrides:
        if name not in names:
            raise BadInputError(
                f"--input names '{name}', but the model's inputs are: {', '.join(names)}"
            )
    resolved = []
    for spec in declared:
        override = overrides.get(spec.name)
        if override is not None and override.values is not None:
            try:
                parse_values(override.values, spec.dtype)
            except BadInputError as exc:
                raise BadInputError(f"--input {spec.name}: {exc}") from None
        if override is None or override.shape is None:
            if not spec.is_static:
                raise BadInputError(
                    f"input '{spec.name}' has dynamic shape {_show(spec.shape)}: "
                    f"give it one with --input {spec.name}:"
                    + "x".join(str(d) if isinstance(d, int) and d > 0 else "N" for d in spec.shape)
                )
            resolved.append(dataclasses.replace(spec, values=override and override.values))
            continue
        if len(override.shape) != len(spec.shape):
            raise BadInputError(
                f"--input {override.name}: {len(override.shape)} dimensions given, "
                f"but the model's input has {len(spec.shape)}: {_show(spec.shape)}"
            )
        for given, own in zip(override.shape, spec.shape, strict=True):
            if isinstance(own, int) and own > 0 and given != own:
                raise BadInputError(
                    f"--input {override.name}: shape {_show(override.shape)} does not fit "
                    f"the model's input shape {_show(spec.shape)}"
                )
        if override.dtype is not None and override.dtype != spec.dtype:
            raise BadInputError(
                f"--input {override.name}: dtype {override.dtype} given, model expects {spec.dtype}"
            )
        ranged = override.shape_range
        resolved.append(TensorSpec(spec.name, override.shape, spec.dtype,
                                   layout_guess(override.shape), override.values,
                                   (ranged[0], ranged[2]) if ranged and ranged[0] != ranged[2] else None))
    for spec in resolved:
        _check_size(spec)
        if spec.shape_range:  # MAX runs on the build host too (the range's parity sample)
            _check_size(dataclasses.replace(spec, shape=spec.shape_range[1]))
    return tuple(resolved)


# One input of more elements than this (2**31: 8 GiB of float32) is a corrupt or hostile
# shape, not an edge model; refusing it beats an allocation failure deep inside a runtime.
MAX_INPUT_ELEMENTS = 2**31


def _check_size(spec: TensorSpec) -> None:
    count = 1
    for dim in spec.shape:
        count *= int(dim)
    if count > MAX_INPUT_ELEMENTS:
        raise BadInputError(f"input '{spec.name}': shape {_show(spec.shape)} holds {count:.3g} elements "
                            f"(more than {MAX_INPUT_ELEMENTS:.3g}); give a real one with --input "
                            f"{spec.name}:...")


def _show(shape: Sequence[int | str]) -> str:
    return "x".join(str(d) for d in shape)
