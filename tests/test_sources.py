"""Every accepted model format, through the real loaders and exporters."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from tests.conftest import DIGITS, EXAMPLES, MINILM_TINY, assert_one_line_error, import_example, portable_of


@pytest.fixture(scope="module")
def digits_model():
    model, examples = import_example("digits_cnn").digits_cnn()
    return model, examples["input"]


def _build_json(cli, *args):
    result = cli("build", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_torchscript_archive_needs_input_shapes(cli, digits_model, tmp_path):
    model, example = digits_model
    path = tmp_path / "digits_ts.pt"
    torch.jit.save(torch.jit.trace(model, example), str(path))
    missing = cli("build", path, "--out", tmp_path / "a")
    assert missing.exit_code == 2
    assert_one_line_error(missing.stderr, "--input")
    summary = _build_json(cli, path, "--input", "input:1x1x8x8", "--out", tmp_path / "b")
    assert summary["stages"][0]["max_abs_diff"] < 1e-4


def test_exported_program_carries_its_own_inputs(cli, digits_model, tmp_path):
    model, example = digits_model
    path = tmp_path / "digits.pt2"
    torch.export.save(torch.export.export(model, (example,)), str(path))
    summary = _build_json(cli, path, "--out", tmp_path / "b")
    assert summary["inputs"][0]["shape"] == [1, 1, 8, 8]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["stages"][0]["metrics"]["exporter"] == "dynamo"


def test_pickled_module_needs_trust(cli, digits_model, tmp_path, monkeypatch):
    model, _ = digits_model
    path = tmp_path / "digits_pickle.pt"
    torch.save(model, str(path))
    refused = cli("build", path, "--input", "input:1x1x8x8", "--out", tmp_path / "a")
    assert refused.exit_code == 2
    assert_one_line_error(refused.stderr, "--trust-pickle", "arbitrary code")
    assert not (tmp_path / "a").exists()
    monkeypatch.chdir(EXAMPLES)  # where the pickled class's module is importable
    summary = _build_json(cli, path, "--trust-pickle", "--input", "input:1x1x8x8",
                          "--out", tmp_path / "b")
    assert summary["parity"]["min_cosine"] > 0.9999


def test_state_dict_combines_with_a_factory(cli, digits_model, tmp_path):
    model, _ = digits_model
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)  # weights the factory's seeded init cannot produce
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), str(weights))
    alone = cli("build", weights, "--out", tmp_path / "a")
    assert alone.exit_code == 2
    assert_one_line_error(alone.stderr, "state dict", "--weights")
    _build_json(cli, DIGITS, "--weights", weights, "--out", tmp_path / "b")
    exported = onnx.load(str(portable_of(tmp_path / "b")))
    bias = next(i for i in exported.graph.initializer if i.name == "classifier.bias")
    expected = model.classifier.bias.detach().numpy()
    assert onnx.numpy_helper.to_array(bias) == pytest.approx(expected)


def test_state_dict_that_does_not_fit_is_refused(cli, tmp_path):
    weights = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, str(weights))
    result = cli("build", DIGITS, "--weights", weights, "--out", tmp_path / "a")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "does not fit the model")


def test_onnx_with_external_data(cli, digits_onnx, tmp_path):
    folder = tmp_path / "external"
    folder.mkdir()
    model = onnx.load(str(digits_onnx))
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    summary = _build_json(cli, folder / "model.onnx", "--out", tmp_path / "b")
    assert summary["parity"]["max_abs_diff"] < 1e-5


def test_transformer_with_integer_inputs(cli, tmp_path):
    summary = _build_json(cli, MINILM_TINY, "--out", tmp_path / "b")
    assert [i["name"] for i in summary["inputs"]] == ["input_ids", "attention_mask"]
    assert summary["inputs"][0]["dtype"] == "int64"
    assert summary["parity"]["min_cosine"] > 0.99999


def test_dynamic_onnx_input_takes_its_shape_from_the_command_line(cli, digits_model, tmp_path):
    model, example = digits_model
    path = tmp_path / "dynamic.onnx"
    torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    missing = cli("build", path, "--out", tmp_path / "a")
    assert missing.exit_code == 2
    assert_one_line_error(missing.stderr, "input 'input' has dynamic shape", "--input input:Nx1x8x8")
    summary = _build_json(cli, path, "--input", "input:4x1x8x8", "--out", tmp_path / "b")
    assert summary["inputs"][0]["shape"] == [4, 1, 8, 8]
    assert summary["parity"]["min_top1_agreement"] == 1.0
