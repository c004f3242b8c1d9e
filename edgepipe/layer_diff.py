"""`edgepipe diff SOURCE BUNDLE`: which layer loses the accuracy, on the runtime the device uses.

Every vendor tool answers "which layer kills my int8 accuracy?" for its own runtime only
(ONNX Runtime's qdq_loss_debug for QDQ models, OpenVINO's accuracy checker, TensorRT's
Polygraphy). This compares the float source model's intermediate tensors with the same
tensors of what a bundle runs, by name, in the float model's topological order: ONNX Runtime
bundles (their QDQ model, with the target's session settings) and OpenVINO bundles (the IR,
compiled with the target's settings; OpenVINO keeps ONNX tensor names on the ops it converts).
A tensor the runtime quantizes is compared as the next layer sees it: dequantized.

TFLite bundles are compared too, though their converters rename every tensor and store
activations channel-last: their intermediates are matched to the source's by value (see
`_align`). The bundle is data: its manifest and model file are read, nothing in it is imported or run
as code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.errors import BadInputError

JUMP_DB = 6.0  # an SQNR fall this large from a layer's inputs to its output marks where error arises
# What int8 rounding of a well-ranged tensor leaves (8 bits, ~6 dB each, less the crest of real
# activations): an exact input counts as this, so a first layer that merely rounds is no jump.
EXACT_DB = 40.0
Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class TensorDiff:
    name: str
    node: str
    op_type: str
    depth: int  # position in the float model's topological order
    sqnr_db: float
    cosine: float
    max_abs: float
    jump_db: float  # SQNR lost from this node's inputs (the worst of them) to its output

    def to_json(self) -> dict[str, Any]:
        def finite(value: float) -> float | str:
            return round(value, 4) if math.isfinite(value) else ("inf" if value > 0 else "-inf")

        return {"tensor": self.name, "node": self.node, "op_type": self.op_type, "depth": self.depth,
                "sqnr_db": finite(self.sqnr_db), "cosine": finite(self.cosine),
                "max_abs_diff": finite(self.max_abs), "jump_db": finite(self.jump_db)}


def _float_tensors(model) -> list[tuple[str, Any]]:
    """(tensor name, producing node) for every float node output, in topological order."""
    import onnx

    typed = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.output)}
    found = []
    for node in model.graph.node:
        for name in node.output:
            if name and typed.get(name, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT:
                found.append((name, node))
    return found


def _run_source(model, names: Sequence[str], feeds: Sequence[Feed]) -> list[dict[str, np.ndarray]]:
    from edgepipe.backends.onnxruntime import exact_runner
    from edgepipe.onnx_model import graph_inputs, with_outputs

    with exact_runner(with_outputs(model, names), graph_inputs(model), name="source") as runner:
        return [runner.infer(feed) for feed in feeds]


def _dequantized_names(model) -> dict[str, str]:
    """float tensor -> the DequantizeLinear output carrying it after its QuantizeLinear."""
    quantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return {quantized[n.input[0]]: n.output[0] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in quantized}


def _quantization_of(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """An int8 tensor -> (scale, zero point), read where it is consumed: DequantizeLinear and
    every QLinear* op take an int8 input followed by its scale and zero point."""
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" and not node.op_type.startswith("QLinear"):
            continue
        inputs = list(node.input)
        for index, name in enumerate(inputs[:-2]):
            scale, zero = inputs[index + 1], inputs[index + 2]
            if name and name not in constants and scale in constants and zero in constants:
                found.setdefault(name, (constants[scale], constants[zero]))
    return found


def _run_onnxruntime(artifact: Path, manifest: dict[str, Any], names: Sequence[str],
                     feeds: Sequence[Feed]) -> list[dict[str, np.ndarray]]:
    """ONNX Runtime's offline optimization fuses QDQ into QLinearConv/QLinearAdd: a float tensor
    X then exists only as the int8 X_QuantizeLinear_Output, dequantized here with its own scale."""
    import onnx

    from edgepipe.onnx_model import with_outputs
    from edgepipe.runtime.runners import make_runner

    model = onnx.load(str(artifact))
    dequantized = _dequantized_names(model)
    quantization = _quantization_of(model)
    present = {out for node in model.graph.node for out in node.output}
    wanted: dict[str, str] = {}
    for name in names:
        for inner in (dequantized.get(name), name, f"{name}_QuantizeLinear_Output"):
            if inner in present and (inner != f"{name}_QuantizeLinear_Output" or inner in quantization):
                wanted[name] = inner
                break
    runner = make_runner("onnxruntime", with_outputs(model, list(wanted.values())),
                         inputs=manifest["inputs"], outputs=[], settings=manifest["backend"]["runtime"],
                         name=artifact.name)
    with runner:
        results = [runner.infer(feed) for feed in feeds]

    def value(inner: str, array: np.ndarray) -> np.ndarray:
        if inner not in quantization or array.dtype.kind == "f":
            return array
        scale, zero = quantization[inner]
        return (array.astype(np.float64) - zero.astype(np.float64)) * scale.astype(np.float64)

    return [{name: value(inner, values[inner]) for name, inner in wanted.items() if inner in values}
            for values in results]


def _run_openvino(artifact: Path, manifest: dict[str, Any], names: Sequence[str], feeds: Sequence[Feed],
                  work: Path) -> list[dict[str, np.ndarray]]:
    from edgepipe.extras import require
    from edgepipe.runtime.runners.openvino import compile_model

    ov = require("openvino", "edgepipe diff on an OpenVINO bundle")
    model = ov.Core().read_model(str(artifact))
    order = {name: index for index, name in enumerate(names)}
    by_name = {}
    for op in model.get_ordered_ops():
        for port in op.outputs():
            # A fused op keeps the names of what it absorbed (a Conv's output also named after the
            # Clip folded into the FakeQuantize after it): the port stands for the last of them.
            known = [n for n in port.get_names() if n in order]
            if not known:
                continue
            name = max(known, key=order.__getitem__)
            consumers = [target.get_node() for target in port.get_target_inputs()]
            if len(consumers) == 1 and consumers[0].get_type_name() == "FakeQuantize":
                port = consumers[0].output(0)  # as the next layer sees it: quantized
            by_name.setdefault(name, port)
    # One output per port, and none for a port that already is a model output: add_outputs
    # merges those, which would shift every later position.
    already = len(model.outputs)
    existing = {}
    for position, output in enumerate(model.outputs):
        for tensor_name in output.get_names():
            existing[tensor_name] = position
    seen: set[tuple[str, int]] = set()
    wanted, index = [], {}
    for name in names:
        port = by_name.get(name)
        if port is None:
            continue
        if any(target.get_node().get_type_name() == "Result" for target in port.get_target_inputs()):
            shared = [existing[n] for n in port.get_names() if n in existing]
            if shared:
                index[name] = shared[0]
            continue
        key = (port.get_node().get_friendly_name(), port.get_index())
        if key not in seen:
            seen.add(key)
            wanted.append(name)
    if wanted:
        model.add_outputs([by_name[name] for name in wanted])
    # Added outputs come after the model's own, in the order given; saving keeps that order.
    index.update({name: already + position for position, name in enumerate(wanted)})
    probe = work / "diff.xml"
    ov.save_model(model, str(probe), compress_to_fp16=False)
    compiled = compile_model(probe, manifest["backend"]["runtime"],
                             manifest["backend"].get("precision", "f32"), name=artifact.name)
    if len(compiled.outputs) != already + len(wanted):
        index = {}  # OpenVINO merged outputs: nothing can be attributed safely
    request = compiled.create_infer_request()
    results = []
    for feed in feeds:
        produced = request.infer(dict(feed))
        values = list(produced.values())
        results.append({name: np.asarray(values[position]) for name, position in index.items()})
    return results


ALIGN_ELEMENTS = 4096  # values per tensor that decide which source tensor a TFLite tensor is


def _layouts(array: np.ndarray) -> list[np.ndarray]:
    """A TFLite activation as the source would hold it: as is, and channel-last moved back."""
    found = [array]
    if array.ndim >= 3:
        found.append(np.moveaxis(array, -1, 1))
    return found


def _align(reference: dict[str, np.ndarray], names: Sequence[str],
           candidates: list[tuple[int, list[np.ndarray]]]) -> dict[str, tuple[int, int]]:
    """Which TFLite tensor (and layout) is which source tensor: a monotone alignment of the two
    topological orders that pairs as many same-shaped tensors as it can and, among such
    alignments, the best-correlated ones (on one sample). The count comes first because a badly
    quantized model, the one a user diffs, correlates poorly even with its own float tensors.

    Hand-written because no tool maps tensors across converters: onnx2tf and litert-torch name
    tensors after TensorFlow scopes or torch modules, fuse Conv+BatchNorm+ReLU into one tensor
    and store activations channel-last. Shape alone is ambiguous (a MobileNet repeats shapes
    block after block); values are not, because each layer's output correlates with its own
    float counterpart far more than with another layer's of the same shape."""
    rng = np.random.default_rng(0)
    picks: dict[int, np.ndarray] = {}  # the same positions for every tensor of a size

    def sample(array: np.ndarray) -> np.ndarray:
        flat = array.astype(np.float64).ravel()
        if flat.size not in picks:
            picks[flat.size] = rng.choice(flat.size, min(flat.size, ALIGN_ELEMENTS), replace=False)
        values = flat[picks[flat.size]]
        return values - values.mean()

    sources = [(name, reference[name]) for name in names if name in reference]
    src = [(name, value.shape, sample(value)) for name, value in sources]
    sampled = [[(layout.shape, sample(layout)) for layout in layouts] for _, layouts in candidates]
    weight: dict[tuple[int, int], tuple[float, int]] = {}
    for i, (_, shape, a) in enumerate(src):
        norm_a = np.linalg.norm(a)
        for j, layouts in enumerate(sampled):
            for k, (layout_shape, b) in enumerate(layouts):
                if layout_shape != shape:
                    continue
                norms = norm_a * np.linalg.norm(b)
                cosine = float(a @ b / norms) if norms > 0 else 0.0
                score = 10.0 + cosine  # in [9, 11]: one more pair beats any gain in correlation
                if score > weight.get((i, j), (0.0, 0))[0]:
                    weight[(i, j)] = (score, k)
    n, m = len(src), len(candidates)
    best = np.zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            paired = weight.get((i - 1, j - 1))
            best[i, j] = max(best[i - 1, j], best[i, j - 1],
                             best[i - 1, j - 1] + paired[0] if paired else -1.0)
    matched: dict[str, tuple[int, int]] = {}
    i, j = n, m
    while i > 0 and j > 0:
        paired = weight.get((i - 1, j - 1))
        if paired and best[i, j] == best[i - 1, j - 1] + paired[0]:
            matched[src[i - 1][0]] = (j - 1, paired[1])
            i, j = i - 1, j - 1
        elif best[i, j] == best[i - 1, j]:
            i -= 1
        else:
            j -= 1
    return matched


def _run_tflite(artifact: Path, manifest: dict[str, Any], names: Sequence[str], feeds: Sequence[Feed],
                reference: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Every intermediate the interpreter computed, dequantized, matched to source tensors by
    `_align`. Read with LiteRT's builtin kernels: XNNPACK fuses whole subgraphs, whose
    intermediates it never writes back."""
    import warnings

    from edgepipe.runtime.runners import tflite as litert

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LiteRT warns that keeping every tensor is for debugging
        threads = manifest["backend"]["runtime"].get("threads", 0)
        built, _, _ = litert.interpreter(artifact.read_bytes(), threads, xnnpack=False, delegate="none",
                                         keep_all_tensors=True)
    inputs = litert.match_tensors(built.get_input_details(), manifest["inputs"])
    details = {d["index"]: d for d in built.get_tensor_details()}
    try:
        order = [out for op in built._get_ops_details() for out in op["outputs"]]  # execution order
    except AttributeError:  # an interpreter without op details: tensor index order
        order = sorted(details)
    order = [index for index in order if index in details and index >= 0]

    def activations(feed: Feed) -> dict[int, np.ndarray]:
        for spec, entry in zip(manifest["inputs"], inputs, strict=True):
            value = litert.to_model_layout(np.asarray(feed[spec["name"]]), list(entry["shape"]))
            built.set_tensor(entry["index"], litert.quantize_to(value, entry))
        built.invoke()
        found = {}
        for index in order:
            value = built.get_tensor(index)
            if np.dtype(value.dtype).kind in "fiu" and value.dtype != np.int32:
                found[index] = np.asarray(litert.dequantize(value, details[index]), dtype=np.float64)
        return found

    first = activations(feeds[0])
    candidates = [(index, _layouts(value)) for index, value in first.items()]
    matched = _align(reference[0], names, candidates)
    results = []
    for position, feed in enumerate(feeds):
        values = first if position == 0 else activations(feed)
        results.append({name: _layouts(values[candidates[j][0]])[k] for name, (j, k) in matched.items()
                        if candidates[j][0] in values})
    return results


def _compare(reference: np.ndarray, value: np.ndarray) -> tuple[float, float, float]:
    """(SQNR dB, cosine, max |difference|) of samples stacked on axis 0. SQNR is the mean over
    channels (sensitivity.py's measure): one outlier channel that sets an int8 range crushes the
    others while the power-weighted SQNR, dominated by the outlier, still looks fine."""
    from edgepipe.quantization.sensitivity import _channel_axis, _channel_mean_db, _per_channel_power

    ref, got = reference.astype(np.float64), value.astype(np.float64)
    axis = _channel_axis(ref.ndim)
    sqnr = _channel_mean_db(_per_channel_power(ref, axis), _per_channel_power(ref - got, axis))
    flat_ref, flat_got = ref.ravel(), got.ravel()
    noise = float(np.sum((flat_ref - flat_got) ** 2))
    norms = float(np.linalg.norm(flat_ref) * np.linalg.norm(flat_got))
    cosine = float(np.dot(flat_ref, flat_got) / norms) if norms > 0 else (1.0 if noise == 0 else 0.0)
    return sqnr, cosine, float(np.max(np.abs(flat_ref - flat_got))) if flat_ref.size else 0.0


def diff(source: Path, bundle: Path, feeds: Sequence[Feed], work: Path) -> dict[str, Any]:
    """Per-tensor error of the bundle against the float source, in the source's order."""
    import onnx

    from edgepipe.runtime.bundle import inside, load_manifest

    manifest = load_manifest(bundle)
    backend = manifest["backend"]["name"]
    if manifest["backend"].get("encrypted") or manifest.get("encryption"):
        raise BadInputError(f"{bundle}: an encrypted bundle's model cannot be compared layer by layer")
    if backend not in ("onnxruntime", "openvino", "tflite"):
        raise BadInputError(f"edgepipe diff compares ONNX Runtime, OpenVINO and TFLite bundles; {bundle} "
                            f"is a {backend} bundle")
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError, OSError and others for a bad file
        raise BadInputError(f"{source}: not an ONNX model ({type(exc).__name__})") from None
    tensors = _float_tensors(model)
    names = [name for name, _ in tensors]
    artifact = inside(bundle, manifest["backend"]["artifact"])
    reference = _run_source(model, names, feeds)
    if backend == "onnxruntime":
        device = _run_onnxruntime(artifact, manifest, names, feeds)
    elif backend == "openvino":
        device = _run_openvino(artifact, manifest, names, feeds, work)
    else:
        device = _run_tflite(artifact, manifest, names, feeds, reference)
    rows: list[TensorDiff] = []
    by_name: dict[str, TensorDiff] = {}
    producers = {out: node for node in model.graph.node for out in node.output}
    nearest: dict[str, float] = {}

    def upstream_sqnr(tensor: str) -> float:
        """SQNR of the nearest compared ancestors (the worst of them); a graph input or weight is
        exact (inf). A tensor the runtime fused away is looked through, not taken as exact."""
        if tensor in by_name:
            return by_name[tensor].sqnr_db
        if tensor not in nearest:
            node = producers.get(tensor)
            nearest[tensor] = min((upstream_sqnr(i) for i in node.input if i), default=math.inf) \
                if node is not None else math.inf
        return nearest[tensor]

    for depth, (name, node) in enumerate(tensors):
        pairs = [(ref[name], got[name]) for ref, got in zip(reference, device, strict=True)
                 if name in got and name in ref and np.shape(ref[name]) == np.shape(got[name])]
        if not pairs:
            continue
        sqnr, cosine, max_abs = _compare(np.concatenate([np.asarray(r) for r, _ in pairs]),
                                         np.concatenate([np.asarray(g) for _, g in pairs]))
        before = min((upstream_sqnr(i) for i in node.input if i), default=math.inf)
        jump = min(before, EXACT_DB) - sqnr if math.isfinite(sqnr) else 0.0
        row = TensorDiff(name, node.name or node.op_type, node.op_type, depth, sqnr, cosine, max_abs, jump)
        rows.append(row)
        by_name[name] = row
    if not rows:
        raise BadInputError(f"no tensor of {source.name} was found in {bundle}'s {backend} model: was the "
                            "bundle built from this source?")
    finite_jumps = [r for r in rows if math.isfinite(r.jump_db)]
    first_jump = next((r for r in rows if math.isfinite(r.jump_db) and r.jump_db >= JUMP_DB), None)
    return {"source": str(source), "bundle": str(bundle), "backend": backend, "samples": len(feeds),
            "compared": len(rows), "of": len(tensors),
            "first_jump": first_jump.to_json() if first_jump else None,
            "largest_jumps": [r.to_json() for r in sorted(finite_jumps, key=lambda r: -r.jump_db)[:5]],
            "tensors": [r.to_json() for r in rows]}


def write_html(result: dict[str, Any], path: Path) -> Path:
    """One self-contained page: SQNR along the depth of the network, and the table."""
    import html

    from edgepipe.extras import require
    from edgepipe.profiler.html_report import _svg

    pyplot = require("matplotlib.pyplot", "edgepipe diff --html")
    rows = result["tensors"]
    depth = [r["depth"] for r in rows]
    sqnr = [r["sqnr_db"] if isinstance(r["sqnr_db"], float) else (120.0 if r["sqnr_db"] == "inf" else -20.0)
            for r in rows]
    figure, axis = pyplot.subplots(figsize=(11, 3.6))
    axis.plot(depth, sqnr, marker=".", color="#4472c4")
    if result["first_jump"]:
        axis.axvline(result["first_jump"]["depth"], linestyle=":", color="#c00000")
    axis.set(title="SQNR of each tensor against the float source (dotted: first jump)",
             xlabel="depth (topological position in the source)", ylabel="SQNR dB")
    svg = _svg(figure)
    pyplot.close(figure)
    body = "".join(
        f"<tr><td>{r['depth']}</td><td>{html.escape(r['tensor'])}</td><td>{html.escape(r['op_type'])}</td>"
        f"<td>{r['sqnr_db']}</td><td>{r['cosine']}</td><td>{r['jump_db']}</td></tr>" for r in rows)
    first = result["first_jump"]
    headline = (f"First jump: <b>{html.escape(first['tensor'])}</b> ({html.escape(first['op_type'])}, "
                f"{first['jump_db']} dB lost)" if first else "No layer loses 6 dB or more.")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>edgepipe diff</title>"
            f"<style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;text-align:right}}"
            f"td:nth-child(2){{text-align:left}}</style></head><body>"
            f"<h1>{html.escape(Path(result['source']).name)} vs {html.escape(result['bundle'])} "
            f"({html.escape(result['backend'])})</h1><p>{result['compared']} of {result['of']} tensors "
            f"compared on {result['samples']} samples. {headline}</p>{svg}"
            f"<table><tr><th>depth</th><th>tensor</th><th>op</th><th>SQNR dB</th><th>cosine</th>"
            f"<th>jump dB</th></tr>{body}</table></body></html>")
    path.write_text(page)
    return path
