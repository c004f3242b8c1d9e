"""The fuse stage on real models: what each pass must do, and what it must leave alone."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgepipe.passes import PASSES
from tests.conftest import EXAMPLES, MINILM_TINY, assert_one_line_error, import_example, portable_of


def _export(model: nn.Module, example: torch.Tensor, path: Path, **kwargs) -> Path:
    """Export as other tools do: BatchNorm kept (no constant folding), names simple."""
    torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"], do_constant_folding=False,
                      **kwargs)
    return path


def _ops(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _build(cli, model, out: Path, *args) -> dict:
    result = cli("build", model, "--out", out, "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads((out / "manifest.json").read_text())


def _fuse_metrics(manifest: dict) -> dict:
    return next(s for s in manifest["stages"] if s["stage"] == "fuse")["metrics"]


def _relative_error(source: Path, fused: Path, shape: tuple[int, ...]) -> float:
    import onnxruntime as ort

    feed = {"input": np.random.default_rng(5).standard_normal(shape).astype(np.float32)}
    ref = ort.InferenceSession(str(source)).run(None, feed)[0]
    got = ort.InferenceSession(str(fused)).run(None, feed)[0]
    return float(np.abs(ref - got).max() / np.abs(ref).max())


@pytest.mark.parametrize(("module", "factory"), [("resnet", "resnet18"),
                                                 ("mobilenet_v2", "mobilenet_v2")])
def test_batchnorm_is_folded_in_cnns(cli, tmp_path, module, factory):
    model, examples = getattr(import_example(module), factory)()
    source = _export(model, examples["input"], tmp_path / f"{factory}.onnx")
    assert _ops(source)["BatchNormalization"] > 0
    manifest = _build(cli, source, tmp_path / "b")
    fused = portable_of(tmp_path / "b")
    assert "BatchNormalization" not in _ops(fused)
    metrics = _fuse_metrics(manifest)
    assert metrics["nodes_after"] < metrics["nodes_before"]
    assert _relative_error(source, fused, (1, 3, 224, 224)) <= 1e-4
    batchnorm = next(row for row in metrics["passes"] if row["pass"] == "batchnorm")
    assert batchnorm["op_change"]["BatchNormalization"] == -_ops(source)["BatchNormalization"]
    assert "### Passes of `fuse`" in (tmp_path / "b" / "report.md").read_text()


class ConvThenAffine(nn.Module):
    """A Conv followed by BatchNorm written out as a per-channel multiply and add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.scale = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.randn(1, 8, 1, 1))

    def forward(self, x):
        return torch.relu(self.conv(x) * self.scale + self.shift)


def test_unfused_batchnorm_mul_add_is_folded(cli, tmp_path):
    source = _export(ConvThenAffine(), torch.randn(1, 3, 16, 16), tmp_path / "affine.onnx")
    assert {"Mul", "Add"} <= set(_ops(source))
    _build(cli, source, tmp_path / "b")
    assert _ops(portable_of(tmp_path / "b")) == Counter({"Conv": 1, "Relu": 1})


class SamePadConv(nn.Module):
    """TF/EfficientNet-style "same" padding, computed from the input's shape at run time."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x):
        height, width = x.shape[-2], x.shape[-1]
        pad_h = torch.clamp((torch.ceil(height / 2) - 1) * 2 + 3 - height, min=0).to(torch.int64)
        pad_w = torch.clamp((torch.ceil(width / 2) - 1) * 2 + 3 - width, min=0).to(torch.int64)
        x = nn.functional.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return self.conv(x)


def test_same_padding_shape_subgraph_folds_into_the_conv(cli, tmp_path):
    source = _export(SamePadConv(), torch.randn(1, 3, 33, 33), tmp_path / "same.onnx",
                     dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}})
    assert "Shape" in _ops(source) and "Pad" in _ops(source)
    _build(cli, source, tmp_path / "b", "--input", "input:1x3x33x33")
    fused = _ops(portable_of(tmp_path / "b"))
    assert fused == Counter({"Conv": 1})  # no Shape, no arithmetic, the Pad inside the Conv


def test_written_out_layer_norm_becomes_layer_normalization(cli, tmp_path):
    _build(cli, f"{EXAMPLES / 'transformer.py'}:minilm_tiny_written_out", tmp_path / "b")
    fused = onnx.load(str(portable_of(tmp_path / "b")))
    ops = Counter(node.op_type for node in fused.graph.node)
    assert ops["LayerNormalization"] == 5  # embeddings + 2 per layer
    assert not {"ReduceMean", "Pow", "Sqrt"} & set(ops)
    for node in fused.graph.node:
        if node.op_type == "LayerNormalization":
            epsilon = next(a.f for a in node.attribute if a.name == "epsilon")
            assert epsilon == pytest.approx(1e-12, rel=1e-3)  # not mistaken for zero


def test_decomposed_gelu_becomes_gelu_at_opset_20(cli, tmp_path):
    model, examples = import_example("transformer").minilm_tiny()
    opset17 = tmp_path / "enc17.onnx"
    torch.onnx.export(model, tuple(examples.values()), str(opset17), dynamo=False, opset_version=17,
                      input_names=list(examples), output_names=["output"])
    upgraded = onnx.version_converter.convert_version(onnx.load(str(opset17)), 20)
    onnx.save(upgraded, str(tmp_path / "enc20.onnx"))
    assert "Erf" in _ops(tmp_path / "enc20.onnx")
    _build(cli, tmp_path / "enc20.onnx", tmp_path / "b")
    fused = _ops(portable_of(tmp_path / "b"))
    assert fused["Gelu"] == 2 and "Erf" not in fused
    # At opset 17 there is no Gelu op: the erf form is kept, unchanged.
    _build(cli, opset17, tmp_path / "c")
    assert "Gelu" not in _ops(portable_of(tmp_path / "c"))


class SharedHead(nn.Module):
    """One Linear applied twice: shared weights."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 16)

    def forward(self, x):
        return self.head(x) + self.head(torch.relu(x))


def test_duplicate_weights_are_shared(cli, tmp_path):
    # torch writes a shared weight once; other tools write one copy per use. Make that copy.
    model = onnx.load(str(_export(SharedHead(), torch.randn(2, 16), tmp_path / "s.onnx")))
    second = [n for n in model.graph.node if n.op_type == "Gemm"][1]
    for position, name in enumerate(list(second.input[1:]), start=1):
        original = next(i for i in model.graph.initializer if i.name == name)
        copy = onnx.TensorProto()
        copy.CopyFrom(original)
        copy.name = f"{name}_copy"
        model.graph.initializer.append(copy)
        second.input[position] = copy.name
    onnx.save(model, str(tmp_path / "copies.onnx"))
    assert len(model.graph.initializer) == 4
    _build(cli, tmp_path / "copies.onnx", tmp_path / "b")
    assert len(onnx.load(str(portable_of(tmp_path / "b"))).graph.initializer) == 2


class BranchBeforeBatchNorm(nn.Module):
    """The Conv's output feeds the BatchNorm and the residual: folding would corrupt the latter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_batchnorm_with_a_shared_input_is_not_folded(cli, tmp_path):
    source = _export(BranchBeforeBatchNorm(), torch.randn(1, 4, 8, 8), tmp_path / "branch.onnx")
    manifest = _build(cli, source, tmp_path / "b")
    assert _ops(portable_of(tmp_path / "b"))["BatchNormalization"] == 1
    assert manifest["parity"]["max_tolerance_ratio"] <= 1.0


class Flatten(nn.Module):
    def forward(self, x):
        return torch.relu(x).reshape(x.shape[0], -1)


def test_dynamic_shapes_stay_dynamic(tmp_path):
    import onnx_ir
    import onnxruntime as ort

    source = _export(Flatten(), torch.randn(2, 3, 4), tmp_path / "dynamic.onnx",
                     dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    model = onnx_ir.load(str(source))
    for graph_pass in PASSES.values():
        graph_pass.apply(model)
    onnx_ir.save(model, str(tmp_path / "fused.onnx"))
    assert "Shape" in _ops(tmp_path / "fused.onnx")
    session = ort.InferenceSession(str(tmp_path / "fused.onnx"))
    for batch in (1, 5):
        assert session.run(None, {"input": np.ones((batch, 3, 4), np.float32)})[0].shape == (batch, 12)


def test_fuse_is_idempotent(cli, tmp_path):
    import onnx_ir

    model, examples = import_example("mobilenet_v2").mobilenet_v2()
    _build(cli, _export(model, examples["input"], tmp_path / "m.onnx"), tmp_path / "b")
    fused = onnx_ir.load(str(portable_of(tmp_path / "b")))
    before = onnx_ir.serde.serialize_model(fused).SerializeToString()
    rewrites = {name: graph_pass.apply(fused) for name, graph_pass in PASSES.items()}
    assert rewrites == dict.fromkeys(PASSES, 0)
    assert onnx_ir.serde.serialize_model(fused).SerializeToString() == before


def test_a_pass_that_breaks_parity_is_named_and_can_be_skipped(cli, tmp_path, digits_onnx):
    model, examples = import_example("digits_cnn").digits_cnn()
    source = _export(model, examples["input"], tmp_path / "digits_bn.onnx")
    exact = tmp_path / "exact.toml"
    exact.write_text('name = "exact"\ndescription = "d"\nextends = "fp32"\n'
                     '[accuracy]\natol = 0.0\nrtol = 0.0\n')
    failed = cli("build", source, "--profile", exact, "--out", tmp_path / "a")
    assert failed.exit_code == 1
    error = next(line for line in failed.stderr.splitlines() if line.startswith("error:"))
    assert "fuse pass 'batchnorm' breaks parity" in error
    assert "--skip-pass batchnorm" in error
    assert not (tmp_path / "a").exists()

    manifest = _build(cli, source, tmp_path / "b", "--skip-pass", "batchnorm", "--skip-pass", "gelu")
    rows = {row["pass"]: row for row in _fuse_metrics(manifest)["passes"]}
    assert rows["batchnorm"]["skipped"] and rows["gelu"]["skipped"]
    assert _ops(portable_of(tmp_path / "b"))["BatchNormalization"] == 3
    assert "| batchnorm | skipped |" in (tmp_path / "b" / "report.md").read_text()


def test_unknown_pass_names_are_refused(cli, tmp_path, digits_onnx):
    result = cli("build", digits_onnx, "--skip-pass", "warp", "--out", tmp_path / "a")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "unknown pass 'warp'")
    profile = tmp_path / "p.toml"
    profile.write_text('name = "p"\ndescription = "d"\nextends = "fp32"\n[fuse]\nskip = ["warp"]\n')
    result = cli("build", digits_onnx, "--profile", profile, "--out", tmp_path / "a")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, str(profile), "fuse.skip", "unknown pass 'warp'")


def test_fused_models_are_standard_onnx(cli, tmp_path):
    _build(cli, MINILM_TINY, tmp_path / "b")
    domains = {o.domain for o in onnx.load(str(portable_of(tmp_path / "b"))).opset_import}
    assert domains <= {"", "ai.onnx"}


class TransposedWeight(nn.Module):
    """`x @ W.T` without constant folding leaves Transpose(W), which folds to a strided array."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 16))

    def forward(self, x):
        return x @ self.weight.t()


def test_folded_transposes_of_weights_survive_deduplication(cli, tmp_path):
    _build(cli, _export(TransposedWeight(), torch.randn(2, 16), tmp_path / "t.onnx"), tmp_path / "b")
    assert "Transpose" not in _ops(portable_of(tmp_path / "b"))
