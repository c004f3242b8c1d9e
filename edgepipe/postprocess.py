"""What a bundle does with a detector's head: the manifest's `postprocess` record, and, with
`[detect] nms = "graph"`, the decode and NMS appended to the model itself.

Raw head (the default, `nms = "host"`): the model ends at its `(batch, 4 + classes, anchors)` head and
run.py decodes it with numpy (runtime/detection.py), as most runtimes' apps expect.

In the graph (`nms = "graph"`): cx cy w h to x1 y1 x2 y2, each anchor's best class, ONNX
`NonMaxSuppression` (per class, the profile's IoU and score thresholds), the best
`max_detections` kept and padded to a fixed size, the way TensorRT's EfficientNMS plugin
and Ultralytics' `nms=True` exports shape them: `det_boxes (B, M, 4)`, `det_scores (B, M)`,
`det_classes (B, M)` and `num_dets (B, 1)` (int32, as EfficientNMS gives them), one row per
image of a batch (a dynamic batch stays dynamic). The raw head stays an output too, so every
stage's parity is still judged on it. Written with onnx.helper:
no library appends NMS to a foreign head (onnx-graphsurgeon, which Ultralytics uses for this,
works at the same level).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgepipe.artifact import Artifact, TensorSpec
from edgepipe.data.evaluation import is_detection_eval
from edgepipe.errors import BadInputError
from edgepipe.runtime import detection

if TYPE_CHECKING:
    import onnx

    from edgepipe.stages.base import BuildContext

GRAPH_OUTPUTS = ("det_boxes", "det_scores", "det_classes", "num_dets")
MIN_OPSET = 11  # NonMaxSuppression-11, GatherND, TopK with a k input, Pad with a pads input


def is_detector(ctx: BuildContext) -> bool:
    """`[detect] head`, or with `auto` whether --eval holds labelled boxes."""
    head = ctx.profile.detect.head
    return is_detection_eval(ctx.eval) if head == "auto" else head != "none"


def _class_names(ctx: BuildContext, classes: int) -> list[str] | None:
    if not is_detection_eval(ctx.eval):
        return None
    from edgepipe.data.detection_sets import open_detection_set

    names = open_detection_set(Path(str(ctx.eval)), ctx.inputs[0], None).classes
    return list(names) if names and len(names) == classes else None


def head_classes(output: TensorSpec) -> int:
    """The class count of the model's head (runtime.detection.head_classes decides it)."""
    return detection.head_classes(output.shape, f"output '{output.name}'")


def record(ctx: BuildContext, model: Artifact) -> dict[str, Any] | None:
    """The manifest's `postprocess` for a detector (None for any other model)."""
    if not is_detector(ctx):
        return None
    detect = ctx.profile.detect
    head = model.outputs[0]
    classes = head_classes(head)
    return {"kind": "detection", "head": "yolov8", "output": head.name, "classes": classes,
            "class_names": _class_names(ctx, classes), "score_threshold": detect.score_threshold,
            "iou_threshold": detect.iou_threshold, "max_detections": detect.max_detections,
            "nms": detect.nms,
            **({"graph_outputs": list(GRAPH_OUTPUTS)} if detect.nms == "graph" else {})}


def with_nms(model: Artifact, post: dict[str, Any], path: Path, backend: str) -> Artifact:
    """The model with its head decoded and NMS'd in the graph (`nms = "graph"`), written to `path`,
    in the form the target's `backend` converter reads."""
    import onnx

    from edgepipe import onnx_model

    if model.format != "onnx":
        raise BadInputError(f"[detect] nms = \"graph\" appends ONNX NonMaxSuppression to the model; this "
                            f"target's int8 is a .{model.path.suffix.lstrip('.')} its converter wrote "
                            "(use nms = \"host\": run.py decodes the head)")
    proto = onnx_model.load_plain(model.path)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise BadInputError(f"[detect] nms = \"graph\" needs opset {MIN_OPSET} or later; the model has "
                            f"opset {opset}")
    taken = {name for n in proto.graph.node for name in n.output} | {i.name for i in proto.graph.initializer}
    clash = sorted(name for name in taken if name.startswith("nms_") or name in GRAPH_OUTPUTS)
    if clash:
        raise BadInputError(f"[detect] nms = \"graph\": the model already has a tensor named '{clash[0]}'")
    # onnx2tf (1.29) reads a constant TopK K with int(), which numpy 2 refuses for the 1-element
    # array ONNX prescribes; TensorRT 8.5 wants K constant. TFLite gets K computed (always M).
    # The batch as the head has it: a number, or (a dynamic batch) read off the head at run time.
    head = next((o for o in proto.graph.output if o.name == post["output"]), None)
    dims = head.type.tensor_type.shape.dim if head is not None else []
    first = dims[0] if dims else None
    batch: int | None = first.dim_value if first is not None and first.dim_value > 0 else None
    proto.graph.node.extend(_nms_nodes(post["output"], opset, constant_k=backend != "tflite",
                                       static_batch=batch is not None))
    proto.graph.initializer.extend(_constants(post, opset, batch))
    m = post["max_detections"]
    rows: int | str = batch if batch is not None else "batch"
    proto.graph.output.extend([
        onnx.helper.make_tensor_value_info("det_boxes", onnx.TensorProto.FLOAT, [rows, m, 4]),
        onnx.helper.make_tensor_value_info("det_scores", onnx.TensorProto.FLOAT, [rows, m]),
        onnx.helper.make_tensor_value_info("det_classes", onnx.TensorProto.INT32, [rows, m]),
        onnx.helper.make_tensor_value_info("num_dets", onnx.TensorProto.INT32, [rows, 1])])
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    outputs = (*model.outputs, TensorSpec("det_boxes", (rows, m, 4), "float32"),
               TensorSpec("det_scores", (rows, m), "float32"), TensorSpec("det_classes", (rows, m), "int32"),
               TensorSpec("num_dets", (rows, 1), "int32"))
    return Artifact(path, "onnx", model.inputs, outputs, facts=dict(model.facts))


def _constants(post: dict[str, Any], opset: int, batch: int | None) -> list[onnx.TensorProto]:
    """The graph's constants; with a static `batch`, the per-image blocks at their full size, else
    one image's block, expanded to the batch at run time."""
    from onnx import numpy_helper

    m, c = post["max_detections"], post["classes"]
    b = batch or 1
    values = {"nms_max_per_class": np.array([m], np.int64),
              "nms_iou": np.array([post["iou_threshold"]], np.float32),
              "nms_score": np.array([post["score_threshold"]], np.float32),
              "nms_starts_xy": np.array([0], np.int64), "nms_starts_wh": np.array([2], np.int64),
              "nms_starts_cls": np.array([4], np.int64), "nms_ends_cls": np.array([4 + c], np.int64),
              "nms_axis2": np.array([2], np.int64), "nms_half": np.array(0.5, np.float32),
              "nms_batch_box": np.array([0, 2], np.int64), "nms_class": np.array(1, np.int64),
              "nms_max": np.array([m], np.int64),
              "nms_shape_boxes": np.array([batch or -1, m, 4], np.int64),
              "nms_shape_row": np.array([batch or -1, m], np.int64),
              "nms_shape_one": np.array([batch or -1, 1], np.int64),
              "nms_shape_column": np.array([-1, 1], np.int64), "nms_shape_line": np.array([1, -1], np.int64),
              "nms_sentinel_box": np.zeros((b, 1, 4), np.float32),
              "nms_sentinel_scores": np.full((b, c, 1), -1.0, np.float32),
              "nms_minus_one": np.array(-1.0, np.float32), "nms_minus_half": np.array(-0.5, np.float32),
              "nms_zero_score": np.array(0.0, np.float32),
              "nms_pad_scores": np.full((b, m), -1.0, np.float32),
              "nms_pad_boxes": np.zeros((m, 4), np.float32),
              "nms_pad_classes": np.zeros((m,), np.int64),
              "nms_batch_column": np.array(0, np.int64), "nms_axis1": np.array([1], np.int64),
              "nms_shape_flat": np.array([-1], np.int64),
              "nms_zero_class": np.array(0, np.int64)}
    if batch is not None:  # each image's index, as a column
        values["nms_image_ids"] = np.arange(batch, dtype=np.int64).reshape(batch, 1)
    else:
        values.update({"nms_zero": np.array([0], np.int64), "nms_one": np.array([1], np.int64),
                       "nms_box_tail": np.array([1, 4], np.int64),
                       "nms_score_tail": np.array([c, 1], np.int64),
                       "nms_row_tail": np.array([m], np.int64)})
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
        values["nms_axes2"] = np.array([2], np.int64)
    return [numpy_helper.from_array(value, name) for name, value in values.items()]


def _nms_nodes(head: str, opset: int, constant_k: bool, static_batch: bool) -> list[onnx.NodeProto]:
    """The decode and NMS as ONNX nodes. Every TensorRT parser edgepipe targets takes them: TopK's K is
    a constant (TensorRT 8.5 wants an initializer), reductions run on float, and the selection is
    padded by a constant block (expanded to a dynamic batch) rather than by a run-time Pad.
    NonMaxSuppression selects over the whole batch; each image's best M are then its row of a
    (batch, selected + M) score table (-1 where a selection belongs to another image), so one TopK
    serves every batch size, no loop."""
    from onnx import helper

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], name=f"/postprocess/{output}", **attributes)

    nodes = [] if static_batch else [
        # A dynamic batch: the per-image constants expanded to it, the image ids 0..B-1 counted up.
        node("Shape", [head], "nms_head_shape"),
        node("Slice", ["nms_head_shape", "nms_zero", "nms_one"], "nms_batch"),
        node("Concat", ["nms_batch", "nms_box_tail"], "nms_sentinel_box_shape", axis=0),
        node("Expand", ["nms_sentinel_box", "nms_sentinel_box_shape"], "nms_sentinel_box_b"),
        node("Concat", ["nms_batch", "nms_score_tail"], "nms_sentinel_scores_shape", axis=0),
        node("Expand", ["nms_sentinel_scores", "nms_sentinel_scores_shape"], "nms_sentinel_scores_b"),
        node("Concat", ["nms_batch", "nms_row_tail"], "nms_pad_scores_shape", axis=0),
        node("Expand", ["nms_pad_scores", "nms_pad_scores_shape"], "nms_pad_scores_b"),
        # Range on scalars (TensorRT 8.5 parses it; its ConstantOfShape and CumSum are float-only).
        node("Gather", ["nms_head_shape", "nms_batch_column"], "nms_batch_size", axis=0),
        node("Range", ["nms_batch_column", "nms_batch_size", "nms_class"], "nms_counted"),
        node("Reshape", ["nms_counted", "nms_shape_column"], "nms_image_ids"),
    ]
    suffix = "" if static_batch else "_b"
    nodes += [
        node("Transpose", [head], "nms_rows", perm=[0, 2, 1]),  # (B, anchors, 4 + classes)
        node("Slice", ["nms_rows", "nms_starts_xy", "nms_starts_wh", "nms_axis2"], "nms_cxcy"),
        node("Slice", ["nms_rows", "nms_starts_wh", "nms_starts_cls", "nms_axis2"], "nms_wh"),
        node("Slice", ["nms_rows", "nms_starts_cls", "nms_ends_cls", "nms_axis2"], "nms_probabilities"),
        node("Mul", ["nms_wh", "nms_half"], "nms_half_wh"),
        node("Sub", ["nms_cxcy", "nms_half_wh"], "nms_x1y1"),
        node("Add", ["nms_cxcy", "nms_half_wh"], "nms_x2y2"),
        node("Concat", ["nms_x1y1", "nms_x2y2"], "nms_boxes_real", axis=2),
        # A sentinel anchor 0 with score -1, which no threshold passes: TFLite's NMS (onnx2tf writes
        # NON_MAX_SUPPRESSION_V4) pads its selection with index 0, and the padding must not count.
        node("Concat", [f"nms_sentinel_box{suffix}", "nms_boxes_real"], "nms_boxes", axis=1),
    ]
    # Each anchor's best class only, as run.py's host path decodes (an exact tie keeps both); the
    # others get -1, below any threshold whether a runtime compares strictly or not.
    if opset >= 18:
        nodes.append(node("ReduceMax", ["nms_probabilities", "nms_axes2"], "nms_best", keepdims=1))
    else:
        nodes.append(node("ReduceMax", ["nms_probabilities"], "nms_best", axes=[2], keepdims=1))
    nodes += [
        node("Equal", ["nms_probabilities", "nms_best"], "nms_is_best"),
        node("Where", ["nms_is_best", "nms_probabilities", "nms_minus_one"], "nms_scores_nc"),
        node("Transpose", ["nms_scores_nc"], "nms_scores_real", perm=[0, 2, 1]),  # (B, classes, anchors)
        node("Concat", [f"nms_sentinel_scores{suffix}", "nms_scores_real"], "nms_scores", axis=2),
        node("NonMaxSuppression", ["nms_boxes", "nms_scores", "nms_max_per_class", "nms_iou", "nms_score"],
             "nms_selected"),  # (K, 3): batch, class, box
        node("GatherND", ["nms_scores", "nms_selected"], "nms_selected_scores"),
        node("Gather", ["nms_selected", "nms_batch_box"], "nms_batch_box_index", axis=1),
        node("GatherND", ["nms_boxes", "nms_batch_box_index"], "nms_selected_boxes"),
        node("Gather", ["nms_selected", "nms_class"], "nms_selected_classes", axis=1),
        # (batch, K): each selection's score in its own image's row, -1 in the others.
        node("Gather", ["nms_selected", "nms_batch_column"], "nms_selected_images", axis=1),
        node("Reshape", ["nms_selected_images", "nms_shape_line"], "nms_selected_images_line"),
        node("Equal", ["nms_image_ids", "nms_selected_images_line"], "nms_in_image"),
        node("Reshape", ["nms_selected_scores", "nms_shape_line"], "nms_selected_scores_line"),
        node("Where", ["nms_in_image", "nms_selected_scores_line", "nms_minus_one"], "nms_image_scores"),
        # M entries of score -1 after the K selected: a constant TopK of M then always has M to take.
        node("Concat", ["nms_image_scores", f"nms_pad_scores{suffix}"], "nms_all_scores", axis=1),
        node("Concat", ["nms_selected_boxes", "nms_pad_boxes"], "nms_all_boxes", axis=0),
        node("Concat", ["nms_selected_classes", "nms_pad_classes"], "nms_all_classes", axis=0),
        *([] if constant_k else [node("Shape", ["nms_all_scores"], "nms_all_shape"),
                                 node("Slice", ["nms_all_shape", "nms_axis1", "nms_axis2"], "nms_all_count"),
                                 node("Min", ["nms_all_count", "nms_max"], "nms_k")]),
        helper.make_node("TopK", ["nms_all_scores", "nms_max" if constant_k else "nms_k"],
                         ["nms_top_scores", "nms_top_index"], name="/postprocess/nms_topk", axis=1,
                         largest=1, sorted=1),
        # Boxes gathered as a (B*M, 4) list: onnx2tf reads 3-D tensors as channel-first and would
        # mistranspose a (B, M, 4) one.
        node("Reshape", ["nms_top_index", "nms_shape_flat"], "nms_top_index_flat"),
        node("Gather", ["nms_all_boxes", "nms_top_index_flat"], "nms_top_boxes", axis=0),
        node("Gather", ["nms_all_classes", "nms_top_index"], "nms_top_classes", axis=0),
        node("Greater", ["nms_top_scores", "nms_minus_half"], "nms_is_real"),
        node("Cast", ["nms_is_real"], "nms_real", to=1),
        (node("ReduceSum", ["nms_real", "nms_axis1"], "nms_count", keepdims=1) if opset >= 13
         else node("ReduceSum", ["nms_real"], "nms_count", axes=[1], keepdims=1)),
        node("Max", ["nms_top_scores", "nms_zero_score"], "nms_scores_out"),  # padding reads 0
        # Padding rows zeroed: in a batch, an image's padding would else repeat other images' picks.
        node("Reshape", ["nms_real", "nms_shape_column"], "nms_real_column"),
        node("Mul", ["nms_top_boxes", "nms_real_column"], "nms_boxes_out"),
        node("Where", ["nms_is_real", "nms_top_classes", "nms_zero_class"], "nms_classes_out"),
        # Constant shapes at the end (the batch as -1 where it is dynamic): TensorRT and TFLite know
        # every other dimension when they allocate;
        # int32 counts and classes, as EfficientNMS gives them (TensorRT 8.5 has no int64 outputs).
        node("Reshape", ["nms_boxes_out", "nms_shape_boxes"], "det_boxes"),
        node("Reshape", ["nms_scores_out", "nms_shape_row"], "det_scores"),
        node("Cast", ["nms_classes_out"], "nms_classes_int32", to=6),
        node("Reshape", ["nms_classes_int32", "nms_shape_row"], "det_classes"),
        node("Cast", ["nms_count"], "nms_count_int32", to=6),
        node("Reshape", ["nms_count_int32", "nms_shape_one"], "num_dets"),
    ]
    return nodes
