"""Pre-checks on the CPU build host: refuse, naming node and op, what the device's TensorRT
would refuse after a long build (or silently run slower: asymmetric int8 has no TensorRT kernel).

Facts per TensorRT line live in `versions.py`; this module only walks the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgepipe.errors import BadInputError
from edgepipe.trt.plan import EnginePlan, ShapeRange
from edgepipe.trt.versions import TensorRtVersion

_STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class PrecheckSummary:
    nodes: int
    op_types: int
    opset: int
    qdq_nodes: int
    dynamic_inputs: tuple[str, ...]

    def to_json(self) -> dict:
        return {"nodes": self.nodes, "op_types": self.op_types, "opset": self.opset,
                "qdq_nodes": self.qdq_nodes, "dynamic_inputs": list(self.dynamic_inputs)}


def _all_nodes(graph) -> Iterator:
    """Nodes of the graph and of every subgraph (If/Loop/Scan bodies), which TensorRT parses too."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g.node:
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)


def _name(node) -> str:
    return node.name or f"<unnamed {node.op_type} -> {node.output[0] if node.output else '?'}>"


def _first(problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def check_ops(model, version: TensorRtVersion) -> None:
    rules = version.rules
    problems = []
    for node in _all_nodes(model.graph):
        if node.domain not in _STANDARD_DOMAINS:
            problems.append(f"node '{_name(node)}' is op {node.domain}::{node.op_type}, which TensorRT "
                            f"{version.major}.{version.minor}'s ONNX parser reads only with a plugin")
        elif node.op_type in rules.unsupported_ops:
            problems.append(f"node '{_name(node)}' is op {node.op_type}, which TensorRT "
                            f"{version.major}.{version.minor}'s ONNX parser does not support")
    if problems:
        raise BadInputError(_first(problems))


def check_opset(model, version: TensorRtVersion) -> int:
    rules = version.rules
    opset = next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), 0)
    if not rules.min_opset <= opset <= rules.max_opset:
        raise BadInputError(f"the model uses ONNX opset {opset}; TensorRT {version.major}.{version.minor} "
                            f"reads opsets {rules.min_opset}-{rules.max_opset} (re-export with "
                            f"opset {min(max(opset, rules.min_opset), rules.max_opset)})")
    return opset


def check_qdq_symmetric(model) -> int:
    """Every Q/DQ must be int8 with zero point 0: TensorRT has no asymmetric or uint8 int8."""
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:  # Constant nodes hold zero points too, in some exporters
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    count, problems = 0, []
    for node in _all_nodes(model.graph):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        count += 1
        if len(node.input) < 3 or not node.input[2]:
            problems.append(f"node '{_name(node)}' ({node.op_type}) has no zero point, so ONNX makes it "
                            "uint8; TensorRT needs int8 with zero point 0 (a target with "
                            "[int8] activations = \"int8\")")
            continue
        zero = constants.get(node.input[2])
        if zero is None:
            problems.append(f"node '{_name(node)}' ({node.op_type}): zero point '{node.input[2]}' is not "
                            "a constant; TensorRT needs a constant zero point of 0")
        elif zero.dtype.name == "int32":
            problems.append(f"node '{_name(node)}' ({node.op_type}) dequantizes an int32 tensor (a "
                            "quantized bias); TensorRT dequantizes int8 only: set [int8] quantize_bias "
                            "= false in the target")
        elif zero.dtype.name != "int8" or zero.any():
            shown = zero.ravel()[:4].tolist()
            problems.append(f"node '{_name(node)}' ({node.op_type}): zero point {shown} of type "
                            f"{zero.dtype.name}; TensorRT takes only symmetric int8 (zero point 0): "
                            "quantize for a target with [int8] activations = \"int8\"")
    if problems:
        raise BadInputError(_first(problems))
    return count


def _input_dims(value_info) -> list[int | str]:
    dims: list[int | str] = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(dim.dim_value)
        else:
            dims.append(dim.dim_param or "?")
    return dims


def check_shapes(model, shapes: dict[str, ShapeRange]) -> tuple[str, ...]:
    """Static inputs, or dynamic ones with an optimization profile that fits them."""
    initializers = {i.name for i in model.graph.initializer}
    dynamic = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = _input_dims(value)
        shown = "x".join(str(d) for d in dims)
        if all(isinstance(d, int) for d in dims):
            if value.name in shapes and shapes[value.name].min != tuple(dims) != shapes[value.name].max:
                raise BadInputError(f"input '{value.name}' is static ({shown}); its profile "
                                    "must be that shape")
            continue
        dynamic.append(value.name)
        profile = shapes.get(value.name)
        if profile is None:
            example = "x".join(str(d) if isinstance(d, int) else "1" for d in dims)
            upper = "x".join(str(d) if isinstance(d, int) else "8" for d in dims)
            raise BadInputError(f"input '{value.name}' has dynamic shape {shown} and no optimization "
                                f"profile: give one with --input {value.name}:{example}/{example}/{upper} "
                                "(min/opt/max)")
        for label, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
            if len(shape) != len(dims) or any(isinstance(d, int) and d != s
                                              for d, s in zip(dims, shape, strict=True)):
                raise BadInputError(f"input '{value.name}': profile {label} "
                                    f"{'x'.join(map(str, shape))} does not fit its shape {shown}")
        if not all(a <= b <= c for a, b, c in zip(profile.min, profile.opt, profile.max, strict=True)):
            raise BadInputError(f"input '{value.name}': profile needs min <= opt <= max in every dimension")
    return tuple(dynamic)


def check_plan(plan: EnginePlan, version: TensorRtVersion) -> None:
    rules = version.rules
    if plan.dla_core is not None and not rules.dla:
        raise BadInputError(f"DLA core {plan.dla_core} asked, but TensorRT {version.major}.{version.minor} "
                            "has no DLA support")
    if plan.dla_core is not None and plan.precision == "fp32":
        raise BadInputError("DLA runs fp16 and int8 only: use the fp16 or int8 profile, or dla_core = -1")


def run_prechecks(model_path: Path, plan: EnginePlan) -> PrecheckSummary:
    """Raise BadInputError (exit 2) on the first class of problem; return what was checked."""
    from edgepipe import onnx_model

    model = onnx_model.load_plain(model_path)
    version = TensorRtVersion.parse(plan.tensorrt_version)
    check_plan(plan, version)
    opset = check_opset(model, version)
    check_ops(model, version)
    qdq = check_qdq_symmetric(model)
    if plan.precision == "int8" and qdq == 0:
        raise BadInputError("int8 for TensorRT needs the quantize stage's QDQ model, and this one has "
                            "no QuantizeLinear/DequantizeLinear nodes")
    dynamic = check_shapes(model, plan.shapes)
    nodes = list(_all_nodes(model.graph))
    return PrecheckSummary(len(nodes), len({n.op_type for n in nodes}), opset, qdq, dynamic)
