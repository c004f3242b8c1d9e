"""`edgepipe compare`: the noise-aware regression gate of a release pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgepipe.compare import decide, parse_threshold
from tests.conftest import assert_one_line_error


def _latencies(median_ms: float, noise: float, n: int = 200, seed: int = 0) -> list[float]:
    """Latencies as they come off a shared machine: log-normal around the median."""
    rng = np.random.default_rng(seed)
    return list(median_ms * np.exp(rng.normal(0.0, noise, n)))


def _profile(path: Path, samples: list[float], cpu: str = "AMD EPYC",
             energy: list[float] | None = None) -> Path:
    path.write_text(json.dumps({
        "schema": "edgepipe.profile/1",
        "bundle": {"path": "/nonexistent", "model": "m", "target": "onnxruntime-cpu",
                   "backend": "onnxruntime"},
        "device": {"cpu": cpu},
        "latency_ms": {"samples": samples},
        "memory": {"peak_rss_mb": 100.0},
        "cold_start_ms": {"total": 50.0},
        "energy": ({"available": True, "meter": "rapl", "joules_per_inference": float(np.median(energy)),
                    "samples_j_per_inference": energy} if energy
                   else {"available": False, "reason": "no meter"}),
    }))
    return path


def test_identical_distributions_pass():
    decision = decide(_latencies(10, 0.02, seed=1), _latencies(10, 0.02, seed=2), max_slowdown=0.05)
    assert decision.verdict == "pass" and decision.exit_code == 0
    assert abs(decision.ratio - 1) < 0.01 and decision.ci_low < 1.0 < decision.ci_high


def test_a_20_percent_slowdown_fails():
    decision = decide(_latencies(10, 0.05, seed=1), _latencies(12, 0.05, seed=2), max_slowdown=0.05)
    assert decision.verdict == "regression" and decision.exit_code == 1
    assert decision.ratio == pytest.approx(1.2, rel=0.03)
    assert decision.p_value < 1e-6


def test_a_noisy_2_percent_change_with_a_5_percent_threshold_passes():
    decision = decide(_latencies(10, 0.05, seed=1), _latencies(10.2, 0.05, seed=2), max_slowdown=0.05)
    assert decision.verdict == "pass"


def test_noise_larger_than_the_threshold_is_inconclusive_not_a_flap():
    decision = decide(_latencies(10, 0.4, n=20, seed=1), _latencies(10.6, 0.4, n=20, seed=2),
                      max_slowdown=0.05)
    assert decision.verdict == "inconclusive" and decision.exit_code == 0


def test_p90_metric_sees_a_tail_regression():
    base = _latencies(10, 0.02, seed=1)
    new = list(_latencies(10, 0.02, seed=2))
    new[::5] = [x * 1.6 for x in new[::5]]  # every fifth run stalls
    assert decide(base, new, metric="p50", max_slowdown=0.05).verdict != "regression"
    assert decide(base, new, metric="p90", max_slowdown=0.05).verdict == "regression"


def test_thresholds_parse_as_percent_or_fraction():
    assert parse_threshold("5%") == pytest.approx(0.05)
    assert parse_threshold("0.1") == pytest.approx(0.1)


def test_cli_exit_codes_and_json(cli, tmp_path):
    base = _profile(tmp_path / "base.json", _latencies(10, 0.03, seed=1))
    same = _profile(tmp_path / "same.json", _latencies(10, 0.03, seed=2))
    slow = _profile(tmp_path / "slow.json", _latencies(12, 0.03, seed=3), cpu="another CPU")
    passing = cli("compare", base, same)
    assert passing.exit_code == 0 and "pass" in passing.stdout
    failing = cli("compare", base, slow, "--json")
    assert failing.exit_code == 1
    result = json.loads(failing.stdout)
    assert result["decision"]["verdict"] == "regression"
    assert any("different CPUs" in w for w in result["warnings"])
    assert cli("compare", base, slow, "--max-slowdown", "30%").exit_code == 0


@pytest.mark.parametrize(("problem", "message"), [
    ("missing", "no such file"), ("not_json", "not a readable profile.json"),
    ("wrong_schema", "not an edgepipe profile"), ("energy", "no energy samples to compare (no meter)")])
def test_bad_inputs_are_one_line_errors(cli, tmp_path, problem, message):
    base = _profile(tmp_path / "base.json", _latencies(10, 0.03))
    other = tmp_path / "other.json"
    args = []
    if problem == "not_json":
        other.write_text("{truncated")
    elif problem == "wrong_schema":
        other.write_text(json.dumps({"schema": "something/1"}))
    elif problem == "energy":
        other = _profile(other, _latencies(10, 0.03))
        args = ["--metric", "energy"]
    result = cli("compare", base, other, *args)
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, message)


def _matmul_chain(path: Path, depth: int) -> Path:
    """x[1, 256] through `depth` 256x256 MatMuls: the same network, made slower by depth."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, current = [], [], "x"
    for index in range(depth):
        weights.append(numpy_helper.from_array(
            (rng.standard_normal((256, 256)) / 16).astype(np.float32), f"w{index}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{index}"], [f"h{index}"]))
        current = f"h{index}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])
    graph = helper.make_graph(nodes, "chain", [x], [y], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_compare_catches_a_real_slowdown_in_real_profiles(cli, tmp_path):
    """Profile two real bundles (the runtime in fresh processes; nothing of the bundle runs), one of a
    network eight times deeper."""
    for name, depth in (("fast", 4), ("slow", 32)):
        built = cli("build", _matmul_chain(tmp_path / f"{name}.onnx", depth), "--target", "onnxruntime-cpu",
                    "--out", tmp_path / name)
        assert built.exit_code == 0, built.stderr
        profiled = cli("profile", tmp_path / name, "--runs", "40", "--warmup", "5", "--threads", "1",
                       "--out", tmp_path / f"{name}.json")
        assert profiled.exit_code == 0, profiled.stderr
    result = cli("compare", tmp_path / "fast.json", tmp_path / "slow.json", "--json")
    assert result.exit_code == 1, result.stdout
    assert json.loads(result.stdout)["decision"]["verdict"] == "regression"
    assert cli("compare", tmp_path / "fast.json", tmp_path / "fast.json").exit_code == 0


def test_energy_regression_is_caught_from_segment_samples(cli, tmp_path):
    joules = [_latencies(0.05, 0.05, n=40, seed=seed) for seed in (1, 2)]
    base = _profile(tmp_path / "base.json", _latencies(10, 0.03), energy=joules[0])
    same = _profile(tmp_path / "same.json", _latencies(10, 0.03), energy=joules[1])
    hungry = _profile(tmp_path / "hungry.json", _latencies(10, 0.03),
                      energy=_latencies(0.065, 0.05, n=40, seed=3))
    assert cli("compare", base, same, "--metric", "energy").exit_code == 0
    result = cli("compare", base, hungry, "--metric", "energy", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["decision"]["metric"].startswith("energy")
