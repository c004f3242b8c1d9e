"""Byte-identical builds: the same inputs and tools, with SOURCE_DATE_EPOCH set, give the same
flashable folder, every file of it (manifest and report included), on every route.

What differs per build (times, in-build latencies, how the build host ran the model) goes to
`<bundle>.build/build.json`. Two routes needed help to be reproducible, both named here:
OpenVINO numbers the default names of unnamed ops from a process-wide counter (renumbered in
graph order before saving, `backends/openvino.py`), and the build used to write its own timings
into manifest.json and report.md. Encrypted bundles are not reproducible by design (a fresh
nonce per file and build).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import DIGITS, run_edgepipe

SOURCE_DATE_EPOCH = "1700000000"


def _int8_profile(folder: Path, engine: str) -> Path:
    path = folder / f"int8-{engine}.toml"
    path.write_text(f'name = "int8-{engine}"\ndescription = "int8 by {engine}"\nextends = "int8"\n'
                    f'[quantize]\nengine = "{engine}"\n')
    return path


def _prune_profile(folder: Path) -> Path:
    path = folder / "pruned-finetuned.toml"
    path.write_text(textwrap.dedent("""\
        name = "pruned-finetuned"
        description = "30 % of the channels, two epochs of seeded distillation"
        extends = "pruned"
        [prune]
        ratio = 0.3
        [prune.finetune]
        epochs = 2
        [prune.budget]
        on_exceed = "backoff"
        max_top1_drop = 5.0
        """))
    return path


ROUTES = [
    pytest.param("onnxruntime-cpu", "fp32", id="ort-fp32"),
    pytest.param("openvino-cpu", "fp32", id="openvino-fp32"),
    pytest.param("openvino-cpu", "bf16", id="openvino-bf16-f16-weights"),
    pytest.param("onnxruntime-cpu", "int8", id="ort-int8"),
    pytest.param("openvino-cpu", "int8", id="openvino-int8-qdq"),
    pytest.param("openvino-cpu", "nncf-openvino", id="openvino-int8-nncf-ir"),
    pytest.param("onnxruntime-cpu", "nncf", id="ort-int8-nncf", marks=pytest.mark.slow),
    pytest.param("jetson", "fp32", id="tensorrt-10-fp16"),
    pytest.param("jetson", "int8", id="tensorrt-10-int8"),
    pytest.param("jetson-xavier-nx", "int8", id="tensorrt-8.5-int8-cache", marks=pytest.mark.slow),
    pytest.param("onnxruntime-cpu", "pruned", id="structured-prune-finetuned", marks=pytest.mark.slow),
    pytest.param("mobile", "fp32", id="tflite-litert-torch-fp32", marks=pytest.mark.slow),
    pytest.param("mobile", "int8", id="tflite-litert-torch-int8", marks=pytest.mark.slow),
    pytest.param("mobile", "onnx-fp32", id="tflite-onnx2tf-fp32", marks=pytest.mark.slow),
    pytest.param("mobile", "onnx-int8", id="tflite-onnx2tf-int8", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("target", "route"), ROUTES)
def test_two_builds_in_separate_processes_are_byte_identical(tmp_path, trained_digits, digits_trained_onnx,
                                                             target, route):
    if target == "openvino-cpu":
        pytest.importorskip("openvino")
    if target == "mobile":
        pytest.importorskip("ai_edge_litert")
    # Timed speed decides nothing here (min-speedup 0): the same bytes whatever the host's load.
    data = ["--calib", trained_digits["test"], "--eval", trained_digits["test"], "--min-speedup", "0"]
    model = [DIGITS, "--weights", trained_digits["weights"]]
    if route.startswith("onnx-"):
        model, route = [digits_trained_onnx], route.removeprefix("onnx-")
    args = {"fp32": [], "bf16": ["--profile", "bf16"],
            "int8": ["--profile", "int8" if target != "mobile" else _int8_profile(tmp_path, "litert"), *data],
            "nncf": ["--profile", _int8_profile(tmp_path, "nncf"), *data],
            "nncf-openvino": ["--profile", _int8_profile(tmp_path, "nncf-openvino"), *data],
            "pruned": ["--profile", _prune_profile(tmp_path), "--calib", trained_digits["train"],
                       "--eval", trained_digits["test"]]}[route]
    env = {"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    for name in ("first", "second"):
        result = run_edgepipe("build", *model, "--target", target, *args, "--out", tmp_path / name, env=env)
        assert result.returncode == 0, result.stderr
    first, second = tmp_path / "first", tmp_path / "second"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    different = [str(f) for f in files if (first / f).read_bytes() != (second / f).read_bytes()]
    assert not different, different
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["build"] == {"time": "2023-11-14T22:13:20Z", "platform": manifest["build"]["platform"]}
    record = json.loads((tmp_path / "first.build" / "build.json").read_text())
    assert record["host"] and record["seconds"] > 0 and record["machine"]["cpu"]
    assert any(m["path"] == "stages[0].seconds" for m in record["measured"])


def test_the_build_folder_keeps_what_the_bundle_leaves_out(cli, tmp_path):
    out = tmp_path / "b"
    assert cli("build", DIGITS, "--target", "onnxruntime-cpu", "--out", out).exit_code == 0
    bundle_report = (out / "report.md").read_text()
    full_report = (tmp_path / "b.build" / "report.md").read_text()
    assert "| seconds |" not in bundle_report and "see `report.md` and `build.json`" in bundle_report
    assert "| seconds |" in full_report
    from edgepipe.manifest import full_manifest

    assert "seconds" not in json.loads((out / "manifest.json").read_text())["stages"][0]
    assert full_manifest(out)["stages"][0]["seconds"] > 0
