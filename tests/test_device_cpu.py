"""The deployment CPU, declared (`--device-cpu`, `[device] cpu_features`) or not: it decides 7-bit int8
weights and whether this host's timings stand for the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepipe.candidate_timing import host_runs_target
from edgepipe.config import DeviceFacts, load_target, with_device_cpu
from edgepipe.errors import BadInputError
from edgepipe.manifest import full_manifest
from edgepipe.quantization.scheme import Int8Scheme
from tests.conftest import DIGITS


@pytest.mark.parametrize(("features", "isa", "seven", "why"), [
    (None, "any", True, "not declared"),
    (["avx2", "fma"], "x86-64", True, "no VNNI or AMX"),
    (["avx2", "avx512f", "avx512_vnni"], "x86-64", False, "avx512_vnni"),
    (["avx2", "avx_vnni"], "any", False, "avx_vnni"),
    (["avx2", "amx_int8"], "x86-64", False, "amx_int8"),
    (["asimd", "asimddp"], "any", False, "ARM"),
])
def test_auto_spends_the_weight_bit_only_where_the_cpu_may_saturate(features, isa, seven, why):
    scheme, reason = Int8Scheme(reduce_range="auto").for_device(DeviceFacts(isa=isa, cpu_features=features))
    assert scheme.reduce_range is seven
    assert reason.startswith("7-bit weights" if seven else "8-bit weights") and why in reason


def test_a_target_that_names_its_weights_keeps_them():
    scheme, reason = Int8Scheme(reduce_range=True).for_device(DeviceFacts(cpu_features=["avx512_vnni"]))
    assert scheme.reduce_range is True and "reduce_range = true in the target" in reason


def test_device_cpu_host_reads_this_machine(monkeypatch):
    monkeypatch.setattr("edgepipe.runtime.machine.cpu_features", lambda: ["avx2", "avx512_vnni"])
    target = with_device_cpu(load_target("onnxruntime-cpu"), "host")
    assert target.device.cpu_features == ["avx2", "avx512_vnni"]
    assert target.int8.for_device(target.device)[0].reduce_range is False


@pytest.mark.parametrize(("spec", "target", "message"), [
    ("avx2,avx9000", "onnxruntime-cpu", "unknown CPU feature 'avx9000'"),
    ("host", "jetson-orin-nano", "runs on a gpu, not a CPU"),
])
def test_device_cpu_refuses_what_it_cannot_mean(spec, target, message):
    with pytest.raises(BadInputError, match=message):
        with_device_cpu(load_target(target), spec)


def test_declared_cpu_unlike_this_host_is_not_timed_here(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr("edgepipe.runtime.machine.cpu_features", lambda: ["avx2", "fma"])
    why = host_runs_target("cpu", "x86-64", "openvino", ["avx2", "avx512f", "avx512_vnni"])
    assert why is not None and "avx512_vnni" in why and "differs from this host" in why
    assert host_runs_target("cpu", "x86-64", "openvino", ["avx2", "fma", "sve"]) is None  # sve: not x86's


def _int8_weights(bundle: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(next(bundle.glob("model*.onnx"))))
    return [numpy_helper.to_array(t) for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]


def test_declared_vnni_cpu_gets_8_bit_weights_and_says_why(cli, tmp_path, trained_digits):
    """Real quantized weights, not a flag: 7-bit weights span [-64, 63], 8-bit ones [-127, 127]."""
    bundles = {}
    for label, extra in (("undeclared", ()), ("vnni", ("--device-cpu", "avx2,avx512f,avx512_vnni"))):
        out = tmp_path / label
        result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", "onnxruntime-cpu",
                     "--profile", "int8", "--calib", trained_digits["train"], "--eval",
                     trained_digits["test"], "--min-speedup", "0", "--out", out, *extra)
        assert result.exit_code == 0, result.stderr
        bundles[label] = out
    seven = max(int(np.abs(w).max()) for w in _int8_weights(bundles["undeclared"]))
    eight = max(int(np.abs(w).max()) for w in _int8_weights(bundles["vnni"]))
    assert seven <= 64 < eight <= 127
    manifest = full_manifest(bundles["vnni"])
    assert manifest["target"]["device"]["cpu_features"] == ["avx2", "avx512f", "avx512_vnni"]
    metrics = next(s for s in manifest["stages"] if s["stage"] == "quantize")["metrics"]
    assert metrics["weight_bits"].startswith("8-bit weights: the deployment CPU has avx512_vnni")
    report = (bundles["undeclared"].with_name("undeclared.build") / "report.md").read_text()
    assert "7-bit weights: the deployment CPU is not declared" in report


def test_unknown_device_cpu_feature_is_one_line_exit_2(cli, tmp_path):
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--target", "onnxruntime-cpu", "--device-cpu", "avx2,vnni", "--out", out)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: --device-cpu: unknown CPU feature 'vnni'")
    assert "Traceback" not in result.stderr and not out.exists()


def test_int8_models_keep_float_outputs(tmp_path, trained_digits, cli):
    """The quantize stage's model computes its outputs in float (an 8-bit output cost MobileNetV2
    4.5 points of top-1), and an output that is also read inside the graph keeps its pair."""
    import onnx
    from onnx import TensorProto, helper

    from edgepipe.quantization.qdq import float_outputs

    out = tmp_path / "b"
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", "onnxruntime-cpu",
                 "--profile", "int8", "--calib", trained_digits["train"], "--min-speedup", "0", "--out", out)
    assert result.exit_code == 0, result.stderr
    model = onnx.load(str(out.with_name("b.build") / "02-quantize.onnx"))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert all(producers[o.name] not in ("DequantizeLinear", "QuantizeLinear") for o in model.graph.output)
    assert "QuantizeLinear" in producers.values()

    def pair(x: str, out_name: str) -> list:
        return [helper.make_node("QuantizeLinear", [x, "s", "z"], [x + "_q"]),
                helper.make_node("DequantizeLinear", [x + "_q", "s", "z"], [out_name])]

    nodes = [helper.make_node("Relu", ["x"], ["a"]), *pair("a", "y"),
             helper.make_node("Relu", ["x"], ["b"]), *pair("b", "w"), helper.make_node("Neg", ["b"], ["v"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("y", "w", "v")],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
         helper.make_tensor("z", TensorProto.UINT8, [], [0])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert float_outputs(path) == ["y"]  # "b" is also read by Neg: its pair stays
    kept = onnx.load(str(path))
    assert [n.op_type for n in kept.graph.node].count("QuantizeLinear") == 1
    assert {i.name for i in kept.graph.initializer} == {"s", "z"}
