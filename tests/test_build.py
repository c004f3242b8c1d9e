"""End-to-end builds: the bundle's contents, its manifest, and its parity with the source."""

from __future__ import annotations

import json

import numpy as np
import onnx

from edgepipe.manifest import SCHEMA, verify_bundle
from tests.conftest import RESNET18, portable_of


def test_resnet18_factory_builds_a_verified_bundle(cli, tmp_path):
    out = tmp_path / "resnet18-cpu"
    result = cli("build", RESNET18, "--target", "onnxruntime-cpu", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "export" in result.stderr and "lower" in result.stderr  # one line per stage
    assert sorted(p.name for p in out.iterdir()) == [
        "edgepipe_runtime", "manifest.json", "model.ort.onnx", "report.md", "run.py"]
    assert (tmp_path / "resnet18-cpu.build" / "00-export.onnx").is_file()
    assert (tmp_path / "resnet18-cpu.build" / "01-fuse.onnx").is_file()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema"] == SCHEMA
    assert manifest["model"]["name"] == "resnet18"
    assert manifest["target"]["name"] == "onnxruntime-cpu"
    assert manifest["target"]["requested"] == "onnxruntime-cpu"
    assert manifest["profile"]["name"] == "default"
    assert manifest["backend"]["artifact"] == "model.ort.onnx"
    assert manifest["inputs"] == [{"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32",
                                   "layout": "NCHW", "preprocessing": None}]
    assert manifest["outputs"][0]["shape"] == [1, 1000]
    assert [s["stage"] for s in manifest["stages"]] == ["export", "fuse", "lower"]
    assert manifest["stages"][0]["metrics"]["opset"] == 17
    assert {"edgepipe", "onnx", "onnxruntime", "torch", "numpy"} <= set(manifest["tools"])
    assert manifest["parity"]["min_cosine"] > 0.99999
    assert manifest["parity"]["max_abs_diff"] < 1e-3
    assert manifest["parity"]["min_top1_agreement"] == 1.0
    assert verify_bundle(out) == []

    report = (out / "report.md").read_text()
    assert "| export |" in report and "| lower |" in report

    # The portable model is standard ONNX; the ORT artifact holds ORT's fused ops.
    portable = onnx.load(str(portable_of(out)))
    assert {o.domain for o in portable.opset_import} <= {"", "ai.onnx"}
    assert "Identity" not in {n.op_type for n in portable.graph.node}
    optimized = onnx.load(str(out / "model.ort.onnx"))
    assert "FusedConv" in {n.op_type for n in optimized.graph.node}


def test_onnx_source_json_prints_only_json(cli, digits_onnx, tmp_path):
    result = cli("build", digits_onnx, "--target", "onnxruntime-cpu", "--out", tmp_path / "b", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert summary["model"] == "digits"
    assert summary["backend"] == "onnxruntime"
    assert summary["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert summary["parity"]["max_abs_diff"] < 1e-4
    assert summary["stages"][0]["stage"] == "export"


def test_failed_json_build_prints_a_json_error(cli, tmp_path):
    result = cli("build", tmp_path / "missing.onnx", "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {"error": f"{tmp_path / 'missing.onnx'}: no such file",
                                         "exit_code": 2}


def test_calib_samples_are_used_for_parity(cli, digits_onnx, tmp_path):
    samples = np.random.default_rng(1).random((5, 1, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "calib.npz", input=samples)
    result = cli("build", digits_onnx, "--out", tmp_path / "b", "--calib", tmp_path / "calib.npz",
                 "--json")
    assert result.exit_code == 0, result.stderr
    parity = json.loads(result.stdout)["parity"]
    assert parity["samples"] == 5
    assert "calib.npz" in parity["reference_inputs"]


def test_inspect_model_and_bundle(cli, digits_onnx, digits_bundle):
    model = json.loads(cli("inspect", digits_onnx, "--json").stdout)
    assert model["opsets"]["ai.onnx"] == 17
    assert model["op_histogram"]["Conv"] == 3
    assert model["parameters"] > 10_000
    assert model["inputs"][0]["name"] == "input"
    bundle = json.loads(cli("inspect", digits_bundle, "--json").stdout)
    assert bundle["kind"] == "bundle"
    assert bundle["target"] == "onnxruntime-cpu"
    assert cli("inspect", digits_bundle).exit_code == 0


def test_inspect_a_torch_factory(cli):
    info = json.loads(cli("inspect", RESNET18, "--json").stdout)
    assert info["kind"] == "factory"
    assert info["class"] == "ResNet"
    assert info["parameters"] == 11_689_512  # ResNet-18's published count
    assert info["inputs"][0]["shape"] == [1, 3, 224, 224]
