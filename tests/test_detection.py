"""Detectors end to end: box data as --eval (COCO and YOLO layouts), mAP by pycocotools as the
int8 gate, letterboxing, the device's decode and NMS, and the detection-aware int8 scheme, on a
detector trained in-test and on a real-weight YOLOv8n from the registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgepipe.artifact import TensorSpec
from edgepipe.errors import BadInputError
from edgepipe.runtime.detection import detect, letterbox_geometry, nms, to_image_pixels

from .conftest import EXAMPLES, ROOT, import_example, run_edgepipe

DETECTOR = f"{EXAMPLES / 'shapes_detector.py'}:shapes_detector"
SPEC = TensorSpec("images", (1, 3, 128, 128), "float32")
YOLOV8N = ROOT / ".third-party" / "nudenet" / "320n.onnx"


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """The example detector trained in-test (about 40 s on 2 cores), with COCO val and calib sets."""
    pytest.importorskip("skimage")
    folder = tmp_path_factory.mktemp("shapes")
    train = import_example("train_shapes", EXAMPLES.parent)
    train.write_example(folder, scenes=1200, epochs=8, val=60, calib=32, log=lambda line: None)
    return folder


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    return overlap / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap)


# --------------------------------------------------------------------------- the device's decode and NMS


def test_nms_keeps_what_onnxruntime_nonmaxsuppression_keeps():
    """The hand-written NMS run.py ships against ONNX Runtime's NonMaxSuppression kernel."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (300, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (300, 2)).astype(np.float32)], 1)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max", "iou"], ["selected"])
    graph = helper.make_graph(
        [node], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 300, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 300])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
        [helper.make_tensor("max", TensorProto.INT64, [1], [300]),
         helper.make_tensor("iou", TensorProto.FLOAT, [1], [0.45])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    selected = session.run(None, {"boxes": boxes[None], "scores": scores[None, None]})[0][:, 2]
    ours = nms(boxes, scores, 0.45)
    assert 40 < len(ours) < 300
    assert ours.tolist() == selected.tolist()


def test_detect_suppresses_per_class_and_keeps_ties_like_the_graph():
    # Two overlapping boxes of different classes both stay; a third, same class as the first, goes.
    anchors = np.array([[50, 50, 40, 40], [52, 50, 40, 40], [51, 51, 40, 40], [10, 10, 4, 4]], np.float32)
    scores = np.array([[0.9, 0.0], [0.0, 0.8], [0.7, 0.0], [0.1, 0.0]], np.float32)
    head = np.concatenate([anchors, scores], 1).T[None]  # (1, 4 + 2, 4), as YOLOv8 exports it
    found = detect(head, score_threshold=0.25, iou_threshold=0.45, max_detections=10, classes=2)
    assert found["classes"].tolist() == [0, 1]
    assert found["scores"].tolist() == pytest.approx([0.9, 0.8])
    assert found["boxes"][0].tolist() == [30, 30, 70, 70]
    tie = np.concatenate([anchors[:1], [[0.6, 0.6]]], 1).T[None]  # one anchor, two classes tied
    tied = detect(tie, score_threshold=0.25, iou_threshold=0.45, max_detections=10)
    assert sorted(tied["classes"].tolist()) == [0, 1]  # as the graph's Equal(ReduceMax) keeps both
    with pytest.raises(BadInputError, match="yolov8 detection head"):
        detect(head.transpose(0, 2, 1), score_threshold=0.25, iou_threshold=0.45, max_detections=10)
    many = detect(head, score_threshold=0.001, iou_threshold=0.45, max_detections=10, classes=2,
                  multi_label=True)
    assert len(many["scores"]) == 3  # the fourth anchor's 0.1 is kept at a low threshold
    with pytest.raises(BadInputError, match="has 2 classes, not 3"):
        detect(head, score_threshold=0.25, iou_threshold=0.45, max_detections=10, classes=3)


def test_letterboxed_boxes_land_on_their_pixels_and_map_back(tmp_path):
    from PIL import Image

    from edgepipe.data.detection_sets import _to_input_frame
    from edgepipe.data.preprocessing import ImagePreprocessing, resolve

    image = np.full((120, 160, 3), 255, np.uint8)
    image[30:70, 40:100] = (255, 0, 0)  # a red box: x 40..100, y 30..70
    Image.fromarray(image).save(tmp_path / "scene.png")
    pre = resolve(ImagePreprocessing(), SPEC, detection=True)
    assert pre.letterbox and pre.to_json()["resize_mode"] == "letterbox"
    array = pre.image_to_array(tmp_path / "scene.png")
    box = _to_input_frame(np.array([[40, 30, 60, 40]], np.float32), 160, 120, pre)[0]
    assert letterbox_geometry(160, 120, (128, 128)) == (0.8, 128, 96, 0, 16)
    assert box.tolist() == pytest.approx([32, 40, 80, 72])
    red = (array[0] > 0.9) & (array[1] < 0.1)
    rows, cols = np.nonzero(red)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (32, 40, 80, 72)
    assert array[:, :16].max() == pytest.approx(114 / 255)  # the padding above the image
    back = to_image_pixels(box[None], 160, 120, pre.to_json())[0]
    assert back.tolist() == pytest.approx([40, 30, 100, 70])


# --------------------------------------------------------------------------- mAP and the data sets


def test_map_by_pycocotools_is_100_for_the_truth_and_0_for_the_wrong_class():
    from edgepipe.data.detection_map import mean_average_precision
    from edgepipe.data.detection_sets import GroundTruth

    truth = [GroundTruth(np.array([[10, 10, 50, 50], [60, 60, 90, 100]], np.float32), np.array([0, 1]),
                         np.zeros(2, bool))]
    exact = [{"boxes": truth[0].boxes, "scores": np.array([0.9, 0.8], np.float32),
              "classes": np.array([0, 1])}]
    assert mean_average_precision(truth, exact, 2) == pytest.approx((100.0, 100.0))
    swapped = [{**exact[0], "classes": np.array([1, 0])}]
    assert mean_average_precision(truth, swapped, 2) == (0.0, 0.0)
    shifted = [{**exact[0], "boxes": exact[0]["boxes"] + 4}]
    map50, map50_95 = mean_average_precision(truth, shifted, 2)
    assert map50 == pytest.approx(100.0) and 20 < map50_95 < 80


def _to_yolo(coco: Path, out: Path) -> None:
    """The same scenes in Ultralytics' layout: images/, labels/*.txt (class cx cy w h, normalised)."""
    data = json.loads((coco / "instances.json").read_text())
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    shutil.copy(coco / "preprocess.toml", out / "preprocess.toml")
    for image in data["images"]:
        shutil.copy(coco / image["file_name"], out / "images" / image["file_name"])
        lines = [f"{a['category_id'] - 1} {(a['bbox'][0] + a['bbox'][2] / 2) / image['width']} "
                 f"{(a['bbox'][1] + a['bbox'][3] / 2) / image['height']} {a['bbox'][2] / image['width']} "
                 f"{a['bbox'][3] / image['height']}"
                 for a in data["annotations"] if a["image_id"] == image["id"]]
        (out / "labels" / Path(image["file_name"]).with_suffix(".txt").name).write_text("\n".join(lines))


def test_coco_and_yolo_layouts_give_the_same_map(shapes, tmp_path):
    import torch

    from edgepipe.data.evaluation import open_eval
    from edgepipe.scoring import Evaluator

    module = import_example("shapes_detector").ShapesDetector()
    module.load_state_dict(torch.load(shapes / "shapes_detector.pt", weights_only=True))
    module.eval()

    def run(feed):
        with torch.inference_mode():
            return {"output": module(torch.from_numpy(feed["images"])).numpy()}

    _to_yolo(shapes / "val", tmp_path / "yolo")
    coco = Evaluator(open_eval(shapes / "val", (SPEC,), limit=60), run).float_scores
    yolo = Evaluator(open_eval(tmp_path / "yolo", (SPEC,), limit=60), run).float_scores
    assert coco.map50_95 is not None and coco.map50_95 > 60  # trained in-test: real boxes found
    assert yolo.map50_95 == pytest.approx(coco.map50_95, abs=0.05)  # only float rounding of the labels
    assert yolo.map50 == pytest.approx(coco.map50, abs=0.05)


def _coco(folder: Path, data: object, image: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if image:
        from PIL import Image

        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "a.png")
    (folder / "instances.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return folder


GOOD = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "x"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]}


@pytest.mark.parametrize(("data", "message"), [
    ("{not json", "not JSON"),
    ({**GOOD, "annotations": None}, "'annotations' missing or not a list"),
    ({**GOOD, "annotations": [{"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]}]}, "names image 7"),
    ({**GOOD, "annotations": [{"image_id": 1, "category_id": 9, "bbox": [1, 2, 3, 4]}]}, "names category 9"),
    ({**GOOD, "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]}, "bbox"),
    ({**GOOD, "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, "x", 4]}]}, "finite number"),
    ({**GOOD, "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, -3, 4]}]}, "negative size"),
    ({**GOOD, "images": [{"id": 1, "file_name": "../a.png"}]}, "leaves the data set's folder"),
    ({**GOOD, "images": [{"id": 1, "file_name": "missing.png"}]}, "not found"),
    ({**GOOD, "categories": []}, "no categories"),
])
def test_bad_coco_data_is_named(tmp_path, data, message):
    from edgepipe.data.evaluation import open_eval

    folder = _coco(tmp_path / "val", data)
    with pytest.raises(BadInputError, match=message.replace("(", "\\(")):
        open_eval(folder, (SPEC,), limit=10)


def test_bad_yolo_label_is_named_by_file_and_line(tmp_path):
    from PIL import Image

    from edgepipe.data.evaluation import open_eval

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n1.5 0.5 0.5 0.2\n")
    with pytest.raises(BadInputError, match=r"a\.txt:2: expected 'class cx cy w h'"):
        open_eval(tmp_path, (SPEC,), limit=10)


def test_a_model_that_is_no_detector_is_refused_before_calibrating(tmp_path, shapes, trained_digits):
    from .conftest import DIGITS

    result = run_edgepipe("build", DIGITS, "--target", "onnxruntime-cpu", "--profile", "int8", "--calib",
                          trained_digits["test"], "--eval", shapes / "val", "--out", tmp_path / "b")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "a yolov8 detection head is (batch, 4 + classes, anchors)" in last
    assert "Traceback" not in result.stderr


def test_labels_the_float_model_cannot_find_are_refused_not_passed(tmp_path, shapes):
    """Boxes that are not where the objects are (here: every box mirrored left to right, as a
    wrong coordinate convention does): float and int8 both score about 0, a drop of 0 that any
    budget would pass. It is a data error, said so."""
    val = tmp_path / "val"
    shutil.copytree(shapes / "val", val)
    data = json.loads((val / "instances.json").read_text())
    widths = {image["id"]: image["width"] for image in data["images"]}
    for annotation in data["annotations"]:
        x, y, w, h = annotation["bbox"]
        annotation["bbox"] = [widths[annotation["image_id"]] - x - w, y, w, h]
    (val / "instances.json").write_text(json.dumps(data))
    result = run_edgepipe("build", DETECTOR, "--weights", shapes / "shapes_detector.pt", "--target",
                          "onnxruntime-cpu", "--profile", "int8", "--calib", shapes / "calib",
                          "--eval", val, "--out", tmp_path / "b")
    assert result.returncode == 2, result.stderr
    assert "finds almost none of the labelled boxes" in result.stderr.strip().splitlines()[-1]


def test_a_bad_annotation_file_fails_the_build_in_one_line(tmp_path, shapes):
    folder = _coco(tmp_path / "val", {**GOOD, "annotations": [{"image_id": 3, "category_id": 1,
                                                                 "bbox": [0, 0, 1, 1]}]})
    out = tmp_path / "bundle"
    result = run_edgepipe("build", DETECTOR, "--weights", shapes / "shapes_detector.pt", "--target",
                          "onnxruntime-cpu", "--profile", "int8", "--calib", shapes / "calib",
                          "--eval", folder, "--out", out)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --eval ")
    assert "names image 3" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- the detection-aware scheme


def test_head_tail_of_real_yolov8n_is_its_six_prediction_convs_and_the_decode():
    if not YOLOV8N.is_file():
        pytest.skip("needs nudenet's YOLOv8n (make third-party)")
    from edgepipe.quantization.detection_head import head_tail

    prediction, decode = head_tail(onnx.load(str(YOLOV8N)))
    assert sorted(prediction) == sorted(f"/model.22/{branch}.{level}/{branch}.{level}.2/Conv"
                                        for branch in ("cv2", "cv3") for level in range(3))
    assert "/model.22/dfl/conv/Conv" in decode  # 16 constant weights: an expectation, not a layer
    assert not any(name.startswith("/model.2") and "/cv1/" in name for name in decode)  # the neck stays int8


def _profile(tmp_path: Path, keep_head_float: bool) -> Path:
    path = tmp_path / f"int8-head-{keep_head_float}.toml"
    path.write_text(f'name = "int8-detector"\ndescription = "test"\nextends = "int8"\n'
                    f'[detect]\nkeep_head_float = {str(keep_head_float).lower()}\n'
                    '[quantize.budget]\non_exceed = "fail"\nmin_speedup = 0\n')
    return path


@pytest.mark.slow
def test_int8_detector_ships_on_cpu_with_map_and_run_py_returns_boxes(tmp_path, shapes):
    """The issue's command on the CPU target: mAP within budget in the report, boxes from run.py."""
    out = tmp_path / "cpu"
    result = run_edgepipe("build", DETECTOR, "--weights", shapes / "shapes_detector.pt", "--target", "cpu",
                          "--profile", _profile(tmp_path, True), "--calib", shapes / "calib",
                          "--eval", shapes / "val", "--out", out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["postprocess"]["kind"] == "detection"
    assert manifest["postprocess"]["class_names"] == ["rectangle", "circle", "triangle", "ellipse"]
    assert manifest["inputs"][0]["preprocessing"]["resize_mode"] == "letterbox"
    quantize = next(s for s in manifest["stages"] if s["stage"] == "quantize")["metrics"]
    scores = quantize["evaluation"]
    assert scores["float"]["map50_95"] > 60
    assert scores["float"]["map50_95"] - scores["int8"]["map50_95"] <= 1.0
    assert len(quantize["detection"]["kept_float"]) > 4
    report = (out / "report.md").read_text()
    assert "| model | mAP@0.5 | mAP@0.5:0.95 |" in report and "detection-aware scheme" in report

    truth = json.loads((shapes / "val" / "instances.json").read_text())
    image = truth["images"][0]
    photo = shapes / "val" / image["file_name"]
    done = subprocess.run([sys.executable, str(out / "run.py"), "--input", str(photo), "--json",
                           "--output", str(tmp_path / "out.npz")], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    boxes = np.asarray(printed["boxes"]["values"]).reshape(-1, 4)
    saved = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(saved["boxes"], boxes, rtol=1e-6)
    assert set(saved.files) >= {"boxes", "scores", "classes", "output"}
    expected = [a for a in truth["annotations"] if a["image_id"] == image["id"]]
    matched = 0
    for annotation in expected:  # in the image's own pixels: the letterbox undone
        x, y, w, h = annotation["bbox"]
        hits = [i for i, box in enumerate(boxes) if _box_iou(box, np.array([x, y, x + w, y + h])) > 0.5]
        matched += any(saved["classes"][i] == annotation["category_id"] - 1 for i in hits)
    assert matched >= len(expected) - 1


@pytest.mark.slow
def test_int8_detector_ships_for_mobile_and_builds_for_jetson(tmp_path, shapes):
    for target in ("mobile", "jetson"):
        out = tmp_path / target
        result = run_edgepipe("build", DETECTOR, "--weights", shapes / "shapes_detector.pt",
                              "--target", target, "--profile", _profile(tmp_path, True),
                              "--calib", shapes / "calib", "--eval", shapes / "val", "--out", out)
        assert result.returncode == 0, f"{target}: {result.stderr[-2000:]}"
        manifest = json.loads((out / "manifest.json").read_text())
        quantize = next(s for s in manifest["stages"] if s["stage"] == "quantize")["metrics"]
        scores = quantize["evaluation"]
        assert scores["float"]["map50_95"] - scores["int8"]["map50_95"] <= 1.0, target
        assert quantize["detection"]["float_head"] == ("pt2e" if target == "mobile" else "qdq")
        assert manifest["postprocess"]["kind"] == "detection"
    # The TensorRT bundle's QDQ model keeps the prediction convs float: no Q/DQ on their weights.
    qdq = onnx.load(str(tmp_path / "jetson" / "model.onnx"))
    prediction = [n for n in qdq.graph.node if n.op_type == "Conv" and n.name.startswith("/heads")
                  and n.name.endswith(".2/Conv")]
    dequantized = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert len(prediction) == 4
    assert not any(n.input[1] in dequantized for n in prediction)


@pytest.mark.slow
def test_quantizing_the_head_costs_map_that_keeping_it_float_saves(tmp_path, shapes):
    """Without the detection-aware scheme every head conv and the decode are int8; on ONNX Runtime
    that drops mAP by points (measured 4 points on the example, past the 1-point budget)."""
    scores = {}
    for keep in (True, False):
        out = tmp_path / f"ort-{keep}"
        result = run_edgepipe("build", DETECTOR, "--weights", shapes / "shapes_detector.pt", "--target",
                              "onnxruntime-cpu", "--profile", _profile(tmp_path, keep),
                              "--calib", shapes / "calib", "--eval", shapes / "val", "--out", out, "--json")
        if result.returncode == 0:
            manifest = json.loads((out / "manifest.json").read_text())
            quantize = next(s for s in manifest["stages"] if s["stage"] == "quantize")
            evaluation = quantize["metrics"]["evaluation"]
            scores[keep] = evaluation["float"]["map50_95"] - evaluation["int8"]["map50_95"]
        else:
            assert result.returncode == 1, result.stderr
            assert "mAP@0.5:0.95" in result.stderr.strip().splitlines()[-1]
            scores[keep] = float(result.stderr.split("(drop ")[1].split()[0])
    assert scores[True] <= 1.0
    assert scores[False] > scores[True] + 0.5


# --------------------------------------------------------------------------- NMS in the graph


def _nms_profile(tmp_path: Path, base: str) -> Path:
    path = tmp_path / f"{base}-nms.toml"
    path.write_text(f'name = "{base}-nms"\ndescription = "test"\nextends = "{base}"\n'
                    '[detect]\nhead = "yolov8"\nnms = "graph"\n' + ("[quantize.budget]\nmin_speedup = 0\n"
                                                                     if base == "int8" else ""))
    return path


def _scenes(shapes: Path, count: int) -> Path:
    """Letterboxed val scenes as an .npz stack (fp32 bundles record no image preprocessing)."""
    from edgepipe.data.preprocessing import ImagePreprocessing, resolve

    pre = resolve(ImagePreprocessing(), SPEC, detection=True)
    files = sorted((shapes / "val").glob("*.png"))[:count]
    path = shapes / f"scenes-{count}.npz"
    np.savez(path, images=np.stack([pre.image_to_array(f) for f in files]))
    return path


def _graph_against_host(bundle: Path, scenes: Path, tmp_path: Path, head: str = "output") -> int:
    """run.py's in-graph detections against runtime.detection.detect on the same run's head."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    post = manifest["postprocess"]
    assert post["nms"] == "graph" and post["graph_outputs"] == ["det_boxes", "det_scores", "det_classes",
                                                                "num_dets"]
    found = 0
    for index, image in enumerate(np.load(scenes)["images"]):
        np.savez(tmp_path / "one.npz", images=image[None])
        done = subprocess.run([sys.executable, str(bundle / "run.py"), "--input", str(tmp_path / "one.npz"),
                               "--output", str(tmp_path / "out.npz")], capture_output=True, text=True,
                              check=False, timeout=300)
        assert done.returncode == 0, done.stderr
        out = np.load(tmp_path / "out.npz")
        host = detect(out[head], score_threshold=post["score_threshold"],
                      iou_threshold=post["iou_threshold"], max_detections=post["max_detections"],
                      classes=post["classes"])
        count = int(out["num_dets"][0, 0])
        assert count == len(host["scores"]), index
        np.testing.assert_allclose(out["boxes"], host["boxes"], atol=1e-3)
        np.testing.assert_allclose(out["scores"], host["scores"], atol=1e-5)
        assert out["classes"].tolist() == host["classes"].tolist()
        assert out["det_boxes"].shape == (1, post["max_detections"], 4)
        found += count
    return found


@pytest.mark.slow
def test_nms_in_the_graph_matches_the_host_decode_on_each_runtime(tmp_path, shapes):
    """ONNX NonMaxSuppression appended to the int8 model (ONNX Runtime, OpenVINO's NMS op), and to the
    fp32 model converted by onnx2tf (LiteRT's NON_MAX_SUPPRESSION_V4 builtin), give what run.py's
    numpy decode gives on the raw head of the same run."""
    scenes = _scenes(shapes, 6)
    for target, base in (("onnxruntime-cpu", "int8"), ("openvino-cpu", "int8"), ("mobile", "fp32")):
        out = tmp_path / target
        extra = ["--eval", shapes / "val"] if base == "int8" else []
        result = run_edgepipe("build", DETECTOR, "--weights", shapes / "shapes_detector.pt",
                              "--target", target, "--profile", _nms_profile(tmp_path, base),
                              "--calib", shapes / "calib", *extra, "--out", out)
        assert result.returncode == 0, f"{target}: {result.stderr[-2000:]}"
        assert _graph_against_host(out, scenes, tmp_path) >= 6, target


def test_nms_in_the_graph_is_refused_where_the_converter_wrote_the_int8(tmp_path, shapes):
    result = run_edgepipe("build", DETECTOR, "--weights", shapes / "shapes_detector.pt", "--target", "mobile",
                          "--profile", _nms_profile(tmp_path, "int8"), "--calib", shapes / "calib",
                          "--eval", shapes / "val", "--out", tmp_path / "b")
    assert result.returncode == 2, result.stderr
    assert "nms = \"host\"" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and not (tmp_path / "b").exists()


def test_nms_graph_passes_the_tensorrt_parser_prechecks(tmp_path, shapes):
    """Every TensorRT line edgepipe targets (8.5 on) parses ONNX NonMaxSuppression natively
    (onnx-tensorrt 8.5 changelog): the jetson bundle carries the NMS in its engine's ONNX."""
    out = tmp_path / "jetson"
    result = run_edgepipe("build", DETECTOR, "--weights", shapes / "shapes_detector.pt", "--target", "jetson",
                          "--profile", _nms_profile(tmp_path, "fp32"), "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    model = onnx.load(str(out / "model.onnx"))
    names = [o.name for o in model.graph.output]
    assert names == ["output", "det_boxes", "det_scores", "det_classes", "num_dets"]
    assert sum(n.op_type == "NonMaxSuppression" for n in model.graph.node) == 1
    # What TensorRT 8.5's parser asks (onnx-tensorrt operators.md): TopK's K an initializer,
    # reductions on float tensors.
    constants = {i.name for i in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    assert all(n.input[1] in constants for n in model.graph.node if n.op_type == "TopK")
    sums = [n for n in model.graph.node if n.op_type == "ReduceSum" and n.name.startswith("/postprocess")]
    assert sums
    for reduce in sums:
        source = produced[reduce.input[0]]
        assert source.op_type == "Cast" and source.attribute[0].i == TensorProto.FLOAT
    plan = json.loads((out / "manifest.json").read_text())["backend"]["engine"]
    assert plan


@pytest.mark.slow
def test_nms_in_the_graph_of_real_yolov8n_matches_the_host_decode_on_real_photos(tmp_path):
    """nudenet's YOLOv8n (real weights, DFL head, 18 classes, dynamic anchors fixed by --input) with
    the NMS appended, on real photos, on each runtime: the same boxes as run.py's numpy decode."""
    from tests.third_party import photos

    files = photos.files("evaluation")[:4] + photos.files("calibration")[:4]
    if not YOLOV8N.is_file() or photos.missing():
        pytest.skip("needs nudenet's YOLOv8n and the photos (make third-party)")
    from edgepipe.data.preprocessing import ImagePreprocessing, resolve

    pre = resolve(ImagePreprocessing(), TensorSpec("images", (1, 3, 320, 320), "float32"), detection=True)
    scenes = tmp_path / "photos.npz"
    np.savez(scenes, images=np.stack([pre.image_to_array(f) for f in files]))
    profile = tmp_path / "yolo.toml"
    profile.write_text('name = "fp32-nms"\ndescription = "test"\nextends = "fp32"\n'
                       '[detect]\nhead = "yolov8"\nnms = "graph"\nscore_threshold = 0.05\n')
    for target in ("onnxruntime-cpu", "openvino-cpu", "mobile"):
        out = tmp_path / target
        result = run_edgepipe("build", YOLOV8N, "--input", "images:1x3x320x320", "--target", target,
                              "--profile", profile, "--out", out)
        assert result.returncode == 0, f"{target}: {result.stderr[-2000:]}"
        assert json.loads((out / "manifest.json").read_text())["postprocess"]["classes"] == 18
        assert _graph_against_host(out, scenes, tmp_path, head="output0") >= 5, target


RANGE = "images:1x3x96x96/1x3x128x128/4x3x192x192"  # batch 1 to 4, 96 to 192 pixels; built at OPT


def _batch_against_host(bundle: Path, batch: Path, tmp_path: Path, head: str) -> dict[str, np.ndarray]:
    """A batch through run.py: its in-graph detections, image by image, are what the host decode
    gives on the same run's head. Returns what run.py saved."""
    post = json.loads((bundle / "manifest.json").read_text())["postprocess"]
    done = subprocess.run([sys.executable, str(bundle / "run.py"), "--input", str(batch),
                           "--output", str(tmp_path / "out.npz")], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    got = dict(np.load(tmp_path / "out.npz"))
    for image in range(len(got[head])):
        host = detect(got[head], score_threshold=post["score_threshold"], image=image,
                      iou_threshold=post["iou_threshold"], max_detections=post["max_detections"])
        mine = got["batch"] == image
        assert int(got["num_dets"][image, 0]) == mine.sum() == len(host["scores"]), (bundle.name, image)
        np.testing.assert_allclose(got["boxes"][mine], host["boxes"], atol=1e-3)
        np.testing.assert_allclose(got["scores"][mine], host["scores"], atol=1e-5)
        assert got["classes"][mine].tolist() == host["classes"].tolist()
    return got


def test_real_yolov8n_with_dynamic_batch_and_size_gives_the_host_decode_per_image(tmp_path):
    """nudenet's YOLOv8n (exported by Ultralytics with dynamic axes) built for a range: a batch of 4
    real photos at 416x416, off its 320 OPT, through the in-graph NMS, image by image."""
    from tests.third_party import photos

    if not YOLOV8N.is_file() or photos.missing():
        pytest.skip("needs nudenet's YOLOv8n and the photos (make third-party)")
    from edgepipe.data.preprocessing import ImagePreprocessing, resolve

    pre = resolve(ImagePreprocessing(), TensorSpec("images", (1, 3, 416, 416), "float32"), detection=True)
    np.savez(tmp_path / "photos.npz", images=np.stack([pre.image_to_array(f)
                                                       for f in photos.files("evaluation")[:4]]))
    profile = tmp_path / "yolo.toml"
    profile.write_text('name = "fp32-nms"\ndescription = "test"\nextends = "fp32"\n'
                       '[detect]\nhead = "yolov8"\nnms = "graph"\nscore_threshold = 0.05\n')
    out = tmp_path / "bundle"
    result = run_edgepipe("build", YOLOV8N, "--input", "images:1x3x256x256/1x3x320x320/4x3x640x640",
                          "--target", "onnxruntime-cpu", "--profile", profile, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    got = _batch_against_host(out, tmp_path / "photos.npz", tmp_path, "output0")
    assert got["output0"].shape == (4, 22, 52 * 52 + 26 * 26 + 13 * 13)
    assert len(got["scores"]) >= 5


def _letterboxed(shapes: Path, count: int, size: int) -> np.ndarray:
    from edgepipe.data.preprocessing import ImagePreprocessing, resolve

    pre = resolve(ImagePreprocessing(), TensorSpec("images", (1, 3, size, size), "float32"), detection=True)
    return np.stack([pre.image_to_array(f) for f in sorted((shapes / "val").glob("*.png"))[:count]])


@pytest.mark.slow
def test_dynamic_batch_and_image_size_ship_with_nms_per_image(tmp_path, shapes):
    """A detector built for a range of batch and image sizes: int8 gated on mAP at OPT, held to parity
    at MIN and MAX, and its bundle (ONNX Runtime, OpenVINO) takes a batch of 3 at 160x160 whose
    in-graph NMS gives, image by image, what the host decode gives on the same run's head."""
    batch = _letterboxed(shapes, 3, 160)
    np.savez(tmp_path / "batch.npz", images=batch)
    for target in ("onnxruntime-cpu", "openvino-cpu"):
        out = tmp_path / target
        result = run_edgepipe("build", DETECTOR, "--weights", shapes / "shapes_detector.pt",
                              "--target", target, "--profile", _nms_profile(tmp_path, "int8"),
                              "--input", RANGE, "--calib", shapes / "calib", "--eval", shapes / "val",
                              "--out", out)
        assert result.returncode == 0, f"{target}: {result.stderr[-2000:]}"
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["inputs"][0]["shape"] == [1, 3, 128, 128]
        assert manifest["inputs"][0]["shape_range"] == {"min": [1, 3, 96, 96], "max": [4, 3, 192, 192]}
        scores = next(s for s in manifest["stages"] if s["stage"] == "quantize")["metrics"]["evaluation"]
        assert scores["float"]["map50_95"] - scores["int8"]["map50_95"] <= 1.0
        got = _batch_against_host(out, tmp_path / "batch.npz", tmp_path, "output")
        assert got["output"].shape == (3, 8, 20 * 20 + 10 * 10) and got["det_boxes"].shape == (3, 100, 4)
        assert all(count >= 1 for count in got["num_dets"][:, 0]), target
        # Outside the range: one line, exit 2.
        np.savez(tmp_path / "five.npz", images=np.concatenate([batch, batch[:2]]))
        done = subprocess.run([sys.executable, str(out / "run.py"), "--input", str(tmp_path / "five.npz")],
                              capture_output=True, text=True, check=False, timeout=300)
        assert done.returncode == 2 and "[1, 3, 96, 96] to [4, 3, 192, 192]" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_dynamic_shapes_reach_the_tensorrt_profile_and_are_refused_for_litert(tmp_path, shapes):
    out = tmp_path / "jetson"
    result = run_edgepipe("build", DETECTOR, "--weights", shapes / "shapes_detector.pt", "--target", "jetson",
                          "--profile", _nms_profile(tmp_path, "fp32"), "--input", RANGE, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    engine = json.loads((out / "manifest.json").read_text())["backend"]["engine"]
    assert engine["shapes"] == {"images": {"min": [1, 3, 96, 96], "opt": [1, 3, 128, 128],
                                           "max": [4, 3, 192, 192]}}
    model = onnx.load(str(out / "model.onnx"))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1] == 3 and all(isinstance(d, str) for d in dims[2:])
    boxes = model.graph.output[1].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in boxes][1:] == [100, 4]

    refused = run_edgepipe("build", DETECTOR, "--weights", shapes / "shapes_detector.pt",
                           "--target", "mobile", "--input", RANGE, "--out", tmp_path / "mobile")
    assert refused.returncode == 2, refused.stderr
    assert "one static shape" in refused.stderr.strip().splitlines()[-1]
    assert "Traceback" not in refused.stderr and not (tmp_path / "mobile").exists()


BAKED = '''
import torch


class Baked(torch.nn.Module):
    """Scales by its batch size read as a Python number: tracing bakes OPT's batch into the graph."""

    def forward(self, x):
        return x * float(x.shape[0])


def baked():
    return Baked(), {"x": torch.rand(2, 4)}
'''


def test_an_export_right_only_at_opt_is_refused_at_the_range_end_it_breaks(tmp_path):
    (tmp_path / "baked.py").write_text(BAKED)
    result = run_edgepipe("build", f"{tmp_path / 'baked.py'}:baked", "--target", "onnxruntime-cpu",
                          "--input", "x:1x4/2x4/8x4", "--out", tmp_path / "b")
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "stage 'export' is wrong at the --input range's min shape x 1x4" in last, last
    assert "Traceback" not in result.stderr and not (tmp_path / "b").exists()
    fixed = run_edgepipe("build", f"{tmp_path / 'baked.py'}:baked", "--target", "onnxruntime-cpu",
                         "--input", "x:2x4", "--out", tmp_path / "ok")
    assert fixed.returncode == 0, fixed.stderr
