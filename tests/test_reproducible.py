"""Same inputs and versions: byte-identical model files, manifests equal outside volatile fields."""

from __future__ import annotations

import json

import pytest

from edgepipe.manifest import without_volatile
from tests.conftest import DIGITS, run_edgepipe


@pytest.mark.parametrize(("target", "artifacts"), [("onnxruntime-cpu", ["model.ort.onnx"]),
                                                   ("openvino-cpu", ["model.xml", "model.bin"])])
def test_two_builds_in_separate_processes_are_identical(tmp_path, target, artifacts):
    if target == "openvino-cpu":
        pytest.importorskip("openvino")
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    for name in ("first", "second"):
        result = run_edgepipe("build", DIGITS, "--target", target, "--out", tmp_path / name, env=env)
        assert result.returncode == 0, result.stderr
    first, second = tmp_path / "first", tmp_path / "second"
    for name in ("model.onnx", *artifacts, "run.py"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    manifests = [json.loads((folder / "manifest.json").read_text()) for folder in (first, second)]
    assert manifests[0]["build"]["time"] == "2023-11-14T22:13:20Z"  # SOURCE_DATE_EPOCH honoured
    assert without_volatile(manifests[0]) == without_volatile(manifests[1])
    assert "build.time" in manifests[0]["volatile"]
