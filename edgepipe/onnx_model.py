"""Loading, checking, describing and saving ONNX files safely.

Every ONNX file a user hands us goes through `load_checked`, so a truncated
file, a non-model or an external-data path escaping the model's folder is
refused with one line before any tool parses it further.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper

from edgepipe.artifact import TensorSpec, layout_guess
from edgepipe.errors import BadInputError, first_line

PROTOBUF_LIMIT = 2**31 - 1  # serialised models above this need external data


def all_tensors(graph: onnx.GraphProto):
    """Initializers and tensor attributes, sub-graphs included (onnx's own walker is private)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from all_tensors(subgraph)


def _external_locations(model: onnx.ModelProto) -> list[str]:
    locations = []
    for tensor in all_tensors(model.graph):
        if external_data_helper.uses_external_data(tensor):
            info = {entry.key: entry.value for entry in tensor.external_data}
            locations.append(info.get("location", ""))
    return locations


def check_external_data_paths(model: onnx.ModelProto, model_path: Path) -> list[Path]:
    """Refuse external-data locations outside the model's folder; return the files used."""
    base = model_path.resolve().parent
    files = []
    for location in sorted(set(_external_locations(model))):
        if (base / location).is_symlink():  # it could be re-pointed after this check: never follow one
            raise BadInputError(f"{model_path}: external data location '{location}' is a symlink; refused")
        candidate = (base / location).resolve()
        if Path(location).is_absolute() or not candidate.is_relative_to(base):
            raise BadInputError(
                f"{model_path}: external data location '{location}' points outside the "
                "model's folder; refused"
            )
        if not candidate.is_file():
            raise BadInputError(f"{model_path}: external data file '{location}' is missing")
        files.append(candidate)
    return files


def _check_structure(model: onnx.ModelProto, path: Path) -> None:
    """What the ONNX checker lets through but every later tool trips over."""
    if not model.graph.output:
        raise BadInputError(f"{path}: the graph declares no outputs")
    initializers = {init.name for init in model.graph.initializer}
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            if value.name in initializers:
                continue
            which = value.type.WhichOneof("value")
            if which != "tensor_type" or not value.type.tensor_type.elem_type:
                what = {"sequence_type": "a sequence", "optional_type": "an optional", "map_type": "a map",
                        "sparse_tensor_type": "a sparse tensor", "tensor_type": "a tensor of undefined type"
                        }.get(which or "", "of no type")
                raise BadInputError(f"{path}: graph {kind} '{value.name}' is {what}; edgepipe builds models "
                                    "whose inputs and outputs are dense tensors")
            dims = value.type.tensor_type.shape.dim
            if any(d.HasField("dim_value") and d.dim_value == 0 for d in dims):
                shape = "x".join(str(d.dim_value) if d.HasField("dim_value") else "?" for d in dims)
                raise BadInputError(f"{path}: graph {kind} '{value.name}' has a zero-sized dimension "
                                    f"({shape})")
    seen: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            continue  # ONNX Runtime turns these into initializers first; `normalise` renames them
        if node.name and node.name in seen:
            raise BadInputError(f"{path}: two nodes are named '{node.name}' ({seen[node.name]} and "
                                f"{node.op_type}); ONNX Runtime refuses that: give them distinct names")
        seen[node.name] = node.op_type
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise BadInputError(f"{path}: opset {opset.version} is newer than this onnx package knows "
                                f"({newest}); export with opset <= {newest}")
    names = [model.graph.name, *(n.name for n in model.graph.node),
             *(t for n in model.graph.node for t in (*n.input, *n.output)),
             *(t.name for t in model.graph.initializer),
             *(v.name for v in (*model.graph.input, *model.graph.output, *model.graph.value_info))]
    for name in names:
        try:
            name.decode("utf-8") if isinstance(name, bytes) else name.encode("utf-8")
        except UnicodeError:
            shown = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else \
                name.encode("utf-8", "backslashreplace").decode()
            raise BadInputError(f"{path}: name '{shown}' is not valid UTF-8") from None


def load_checked(path: Path) -> onnx.ModelProto:
    """Load an ONNX model with its external data and run the ONNX checker on it."""
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: empty file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise BadInputError(f"{path}: not a valid ONNX model ({first_line(exc)})") from None
    if not model.HasField("graph") or not model.graph.node or not model.opset_import:
        raise BadInputError(f"{path}: not a valid ONNX model (no graph, nodes or opset)")
    _check_structure(model, path)
    check_external_data_paths(model, path)
    try:
        external_data_helper.load_external_data_for_model(model, str(path.resolve().parent))
    except Exception as exc:
        raise BadInputError(f"{path}: cannot read external data ({first_line(exc)})") from None
    try:
        if model.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
        else:
            onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise BadInputError(f"{path}: invalid ONNX model: {first_line(exc)}") from None
    return model



def check_tensor_sizes(model: onnx.ModelProto, path: Path, limit: int = 2**31 - 1) -> None:
    """Refuse a model whose shape inference finds a tensor of more than `limit` elements (a Pad by
    2^40, a Resize by 10^6, an Expand to 10^14): a runtime would fail allocating it, with a long
    log instead of the node's name."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # what inference cannot do, the export stage's strict run reports
        return
    producers = {out: node for node in inferred.graph.node for out in node.output}
    for value in (*inferred.graph.value_info, *inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or not all(d.HasField("dim_value") for d in dims):
            continue
        count = int(np.prod([float(d.dim_value) for d in dims]))
        if count > limit:
            node = producers.get(value.name)
            where = f"node '{node.name or node.op_type}' ({node.op_type})" if node else "the graph"
            raise BadInputError(f"{path}: {where} makes tensor '{value.name}' of {count:.3g} elements "
                                f"({'x'.join(str(d.dim_value) for d in dims)}); refused")


def _dtype_name(elem_type: int) -> str:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def _spec_of(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dims: list[int | str] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or "?")
    shape = tuple(dims)
    return TensorSpec(value.name, shape, _dtype_name(tensor_type.elem_type), layout_guess(shape))


def load_plain(path: Path) -> onnx.ModelProto:
    """A model edgepipe wrote itself (no user-facing checks needed), weights included."""
    return onnx.load(str(path))


def graph_inputs(model: onnx.ModelProto) -> tuple[TensorSpec, ...]:
    """The inputs a caller feeds: graph inputs that are not initializers."""
    initializers = {init.name for init in model.graph.initializer}
    return tuple(_spec_of(v) for v in model.graph.input if v.name not in initializers)


def with_outputs(model: onnx.ModelProto, names) -> bytes:
    """A copy of `model` (serialized) that also returns the intermediate tensors `names`: how
    calibration-side measures observe a layer's output."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
    return copy.SerializeToString()


def graph_outputs(model: onnx.ModelProto) -> tuple[TensorSpec, ...]:
    return tuple(_spec_of(v) for v in model.graph.output)


def set_static_input_shapes(model: onnx.ModelProto, specs: tuple[TensorSpec, ...],
                            dynamic_axes: Mapping[str, set[int]] | None = None) -> None:
    """Write resolved static shapes into the graph so later tools can fold shape sub-graphs;
    `dynamic_axes` (input -> axes) stay symbolic, for inputs built for a range of shapes."""
    by_name = {spec.name: spec for spec in specs}
    for value in model.graph.input:
        spec = by_name.get(value.name)
        if spec is None:
            continue
        shape = value.type.tensor_type.shape
        keep = (dynamic_axes or {}).get(value.name, set())
        for axis, (dim, size) in enumerate(zip(shape.dim, spec.shape, strict=True)):
            if axis in keep and not dim.HasField("dim_value"):
                continue  # symbolic in the source: keep it (a static one stays, and pre-checks say so)
            dim.Clear()
            dim.dim_value = int(size)


def eliminate_identities(model) -> None:
    """onnx_ir's IdentityEliminationPass, except where it would change what a graph computes.

    The pass (onnx_ir 1.1) folds `y = Identity(x)` into `x` renamed `y`. Two cases break: `x` is
    itself an output of the same graph (a Scan body returning its state and a copy of it then
    returns one value twice; found on a valid Scan model), and `x` lives in an outer graph (an If
    branch returning an outer value: renamed, or refused with an error when the outer value is an
    output too). Those Identity nodes are kept, by hiding them from the pass for its run.
    """
    from onnx_ir.passes.common import IdentityEliminationPass

    def home(value):
        producer = value.producer()
        return producer.graph if producer is not None else value.graph

    kept = []
    for graph in (model.graph, *model.graph.subgraphs()):
        for node in graph:
            if node.op_type != "Identity" or node.domain != "" or not node.inputs or node.inputs[0] is None:
                continue
            source, result = node.inputs[0], node.outputs[0]
            if home(source) is not graph or (source.is_graph_output() and result.is_graph_output()):
                node.domain = "edgepipe.keep"
                kept.append(node)
    try:
        IdentityEliminationPass()(model)
    finally:
        for node in kept:
            node.domain = ""


def normalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Clean an exported graph with onnx_ir's standard passes.

    The legacy torch exporter can leave initializers behind Identity nodes and
    unused nodes; TFLite and TensorRT converters choke on those, so the graph is
    tidied here once, before any stage sees it.
    """
    import onnx_ir
    from onnx_ir.passes import Sequential
    from onnx_ir.passes import common as passes

    ir_model = onnx_ir.from_proto(model)
    Sequential(
        passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16),
        passes.RemoveInitializersFromInputsPass(),
    )(ir_model)
    # IR < 4 requires every initializer to be a graph input too (caffe2-era files); with them
    # removed from the inputs, the file is only valid at IR 4 or later.
    ir_model.ir_version = max(ir_model.ir_version, 4)
    eliminate_identities(ir_model)
    Sequential(
        passes.RemoveUnusedNodesPass(),
        passes.RemoveUnusedOpsetsPass(),
        passes.TopologicalSortPass(),
    )(ir_model)
    _distinct_node_names(ir_model)
    return onnx_ir.to_proto(ir_model)


def _distinct_node_names(model) -> None:
    """Exporters reuse names (spox names every Constant 'F0::anon'); ONNX Runtime tolerates that
    for Constants only, and later tools key nodes by name, so every name is made unique."""
    import onnx_ir

    seen: set[str] = set()
    for node in onnx_ir.traversal.RecursiveGraphIterator(model.graph):
        if not node.name:
            continue
        name, index = node.name, 1
        while name in seen:
            name, index = f"{node.name}_{index}", index + 1
        node.name = name
        seen.add(name)


def infer_shapes_afresh(model: onnx.ModelProto, path_hint: Path) -> onnx.ModelProto:
    """Shapes inferred with the file's declarations where they agree with the graph, else from
    the graph alone. Exporters write stale or wrong declarations (paddle2onnx: dim_value -1;
    torch 1.9: an output declared [1, seqlen] that is [32, 1, 8210] when run), and strict
    inference refuses a graph that disagrees with them. An output inference cannot shape keeps
    what the file said, unknown dims cleared."""
    try:
        return infer_shapes(model, path_hint)
    except BadInputError:
        pass
    declared = {}
    del model.graph.value_info[:]
    for value in model.graph.output:
        declared[value.name] = onnx.TypeProto()
        declared[value.name].CopyFrom(value.type)
        value.type.tensor_type.ClearField("shape")
    inferred = infer_shapes(model, path_hint)
    for value in inferred.graph.output:
        own = declared[value.name].tensor_type
        if not value.type.tensor_type.HasField("shape") and own.HasField("shape"):
            value.type.tensor_type.shape.CopyFrom(own.shape)
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_value") and dim.dim_value < 0:
                    dim.Clear()
    return inferred


def scalar_if_conditions(model: onnx.ModelProto) -> int:
    """ONNX lets an If test any one-element tensor; OpenVINO's frontend takes rank 0 or 1 only,
    and torch 1.x exports conditions of shape [1, 1] (openWakeWord's models). A Squeeze before the
    If makes such a condition a scalar for every backend. Needs inferred shapes; returns how many
    conditions it changed."""
    names = {name for graph in _graphs(model.graph) for node in graph.node for name in node.output}
    changed = 0
    for graph in _graphs(model.graph):
        shapes = {v.name: v.type.tensor_type.shape for v in (*graph.value_info, *graph.input)
                  if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
        index = 0
        while index < len(graph.node):
            node = graph.node[index]
            shape = shapes.get(node.input[0]) if node.op_type == "If" and node.domain in ("", "ai.onnx") \
                else None
            if shape is not None and len(shape.dim) > 1 and all(
                    d.HasField("dim_value") and d.dim_value == 1 for d in shape.dim):
                scalar = f"{node.input[0]}_scalar"
                while scalar in names:
                    scalar += "_"
                names.add(scalar)
                # Squeeze without axes drops every size-1 axis, the same at every opset.
                graph.node.insert(index, onnx.helper.make_node("Squeeze", [node.input[0]], [scalar],
                                                               name=f"{node.name or 'If'}_condition"))
                node.input[0] = scalar
                changed += 1
                index += 1
            index += 1
    return changed


def _graphs(graph: onnx.GraphProto):
    """A graph and all its subgraphs (If/Loop/Scan bodies), outermost first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _graphs(sub)


def infer_shapes(model: onnx.ModelProto, path_hint: Path) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                 data_prop=True)
    except Exception as exc:
        raise BadInputError(f"{path_hint}: shape inference failed: {first_line(exc)}") from None


def save(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save deterministically; large models keep their weights in one `<name>.data` file."""
    if model.ByteSize() < PROTOBUF_LIMIT:
        onnx.save_model(model, str(path))
        return [path]
    data_name = f"{path.name}.data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return [path, path.parent / data_name]


def describe(model: onnx.ModelProto) -> dict[str, Any]:
    """Facts a user asks about first: I/O, opsets, op histogram, parameters."""
    params = sum(int(np.prod(init.dims)) if init.dims else 1 for init in model.graph.initializer)
    ops = Counter(
        f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        for node in model.graph.node
    )
    return {
        "inputs": [spec.to_json() for spec in graph_inputs(model)],
        "outputs": [spec.to_json() for spec in graph_outputs(model)],
        "opsets": {op.domain or "ai.onnx": op.version for op in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "nodes": len(model.graph.node),
        "op_histogram": dict(sorted(ops.items(), key=lambda item: (-item[1], item[0]))),
        "parameters": params,
    }
