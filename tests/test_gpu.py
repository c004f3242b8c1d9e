"""CUDA-side paths: run only on a machine with an NVIDIA GPU and CUDA-enabled onnxruntime."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DIGITS

CUDA_TARGET = '''
name = "onnxruntime-cuda"
description = "NVIDIA GPU through ONNX Runtime's CUDA provider"
backend = "onnxruntime"
[device]
kind = "gpu"
[runtime]
providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
'''


@pytest.mark.gpu
def test_cuda_provider_build_and_profile(cli, tmp_path):
    target = tmp_path / "cuda.toml"
    target.write_text(CUDA_TARGET)
    result = cli("build", DIGITS, "--target", target, "--out", tmp_path / "b", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["parity"]["max_tolerance_ratio"] <= 1.0
    profiled = cli("profile", tmp_path / "b", "--runs", "20", "--json")
    assert profiled.exit_code == 0, profiled.stderr
    assert json.loads(profiled.stdout)["runtime"]["providers"][0] == "CUDAExecutionProvider"
