"""Write the QDQ ONNX model from a calibration cache with onnxruntime.quantization.

QDQ (QuantizeLinear/DequantizeLinear pairs around float ops) is the int8 form
ONNX Runtime, OpenVINO and TensorRT all consume. Re-running this with a different
exclusion list reuses the cache, so per-layer fallback never recalibrates.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgepipe.errors import BackendError, first_line
from edgepipe.extras import require
from edgepipe.quantization.ranges import Method, ort_method
from edgepipe.quantization.scheme import Int8Scheme

# Where TensorRT wants Q/DQ ("Q/DQ layer-placement recommendations" in its developer guide, and
# NVIDIA ModelOpt's ONNX int8 rules): on the inputs of weighted ops, pooling and residual adds; never
# on a weighted op's output, which TensorRT fuses with the activation and the residual Add after it.
INPUT_PLACEMENT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "GlobalAveragePool", "AveragePool")
FUSES_RESIDUAL = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def write_qdq(model: Path, cache: Path, output: Path, *, scheme: Int8Scheme, method: Method,
              per_channel: bool, exclude: Sequence[str] = (), only: Sequence[str] | None = None,
              op_types: Sequence[str] | None = None) -> None:
    """Quantize `model` (already pre-processed) into `output` with the cached ranges."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    activation = QuantType.QInt8 if scheme.activations == "int8" else QuantType.QUInt8
    options = {"ActivationSymmetric": scheme.symmetric_activations, "WeightSymmetric": True,
               "QuantizeBias": scheme.quantize_bias}
    if scheme.placement == "inputs":
        op_types = op_types or INPUT_PLACEMENT_OPS
        options["OpTypesToExcludeOutputQuantization"] = list(op_types)
        exclude = [*exclude, *_non_residual_adds(model)]
    # onnxruntime warns about pre-processing on every call; the stage has done it.
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        quantize_static(
            str(model), str(output), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            per_channel=per_channel, reduce_range=scheme.reduce_range, activation_type=activation,
            weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
            nodes_to_quantize=list(only) if only is not None else None,
            op_types_to_quantize=list(op_types) if op_types else None,
            calibrate_method=ort_method(method), calibration_cache_path=str(cache), extra_options=options)
    except Exception as exc:
        raise BackendError(f"onnxruntime.quantization failed on {model.name}: {first_line(exc)}") from None
    finally:
        logging.getLogger().setLevel(quiet)
    float_outputs(output)
    if scheme.placement == "inputs":
        fusable_residuals(output)


# Element-wise activations TensorRT fuses into the weighted layer before them (SiLU is Sigmoid*Mul).
FUSED_ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "Mul", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Elu")


def _non_residual_adds(path: Path) -> list[str]:
    """Add nodes that are not residual Adds: one with a constant input (a bias, an anchor grid), or
    none of whose inputs a Conv/Gemm/MatMul computes (through fused activations), such as a
    detector's box decode. TensorRT has nothing to fuse there, and int8 would only round them
    (box coordinates of a 320-pixel YOLOv8n to 1.3-pixel steps)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {tensor.name for tensor in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    producers = {out: node for node in graph.node for out in node.output}

    def computed_by_weighted_op(name: str, depth: int = 0) -> bool:
        node = producers.get(name)
        if node is None or depth > 4:
            return False
        if node.op_type in FUSES_RESIDUAL:
            return True
        return node.op_type in FUSED_ACTIVATIONS and any(
            computed_by_weighted_op(source, depth + 1) for source in node.input if source not in constants)

    return [node.name for node in graph.node if node.op_type == "Add" and (
        any(name in constants for name in node.input)
        or not any(computed_by_weighted_op(name) for name in node.input))]


def _uses(graph) -> tuple[dict, dict]:
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for output in graph.output:
        readers[output.name] = readers.get(output.name, 0) + 1
    return producers, readers


def _drop_pairs(model, pairs: list[tuple]) -> None:
    """Remove Quantize/Dequantize pairs (already bypassed) and the scales only they used."""
    params = {name for pair in pairs for node in pair for name in node.input[1:]}
    for pair in pairs:
        for node in pair:
            model.graph.node.remove(node)
    used = {name for node in model.graph.node for name in node.input}
    for initializer in [i for i in model.graph.initializer if i.name in params - used]:
        model.graph.initializer.remove(initializer)


def fusable_residuals(path: Path) -> list[str]:
    """Leave float the residual Add input that a Conv/Gemm computes (and nothing else reads); the
    Add's other input stays quantized. Return the Add nodes changed.

    TensorRT fuses such an Add into the Conv as its epilogue, where the Conv's output never
    exists in int8; a Q/DQ pair there would force the Conv to write int8 and the Add to run
    apart (TensorRT's placement recommendations; ModelOpt removes the same pairs). Written here
    because onnxruntime's quantizer places Q/DQ per op type, not per input."""
    import onnx

    from edgepipe.onnx_model import save

    model = onnx.load(str(path))
    producers, readers = _uses(model.graph)

    def pair_from(name: str):
        dequantize = producers.get(name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or readers.get(name) != 1:
            return None
        quantize = producers.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or readers[quantize.output[0]] != 1:
            return None
        source = producers.get(quantize.input[0])
        if source is None or source.op_type not in FUSES_RESIDUAL or readers[quantize.input[0]] != 1:
            return None
        return quantize, dequantize

    changed, pairs = [], []
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        found = [(index, pair_from(name)) for index, name in enumerate(node.input)]
        quantized = [producers.get(name) is not None and producers[name].op_type == "DequantizeLinear"
                     for name in node.input]
        fusable = [(index, pair) for index, pair in found if pair is not None]
        if not fusable or not all(quantized):
            continue  # an input already float: nothing to fuse into
        index, pair = fusable[0]
        node.input[index] = pair[0].input[0]
        pairs.append(pair)
        changed.append(node.name)
    if changed:
        _drop_pairs(model, pairs)
        save(model, path)
    return changed


def float_outputs(path: Path) -> list[str]:
    """Give the model's outputs back their float values: drop the Quantize/Dequantize pair that
    onnxruntime's quantizer puts on every graph output; return the outputs freed.

    An 8-bit output is the one rounding nothing downstream averages away: MobileNetV2's uint8
    logits (real ImageNet weights, 200 real photos) cost 4.5 points of top-1 and top-1 agreement
    0.975 -> 0.940; the layer that computes them still runs in int8 from int8 inputs. NNCF and
    TensorRT leave outputs in float too. quantize_static has no per-tensor switch for this (only
    per op type), hence the edit."""
    import onnx

    from edgepipe.onnx_model import save

    model = onnx.load(str(path))
    graph = model.graph
    producers, readers = _uses(graph)
    freed: list[str] = []
    pairs = []
    for output in graph.output:
        dequantize = producers.get(output.name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or readers.get(output.name) != 1:
            continue
        quantize = producers.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or readers[quantize.output[0]] != 1:
            continue
        source = producers.get(quantize.input[0])
        if source is None or readers[quantize.input[0]] != 1:
            continue  # the float tensor is read elsewhere too (or is an input): leave the pair
        source.output[list(source.output).index(quantize.input[0])] = output.name
        pairs.append((quantize, dequantize))
        freed.append(output.name)
    if freed:
        _drop_pairs(model, pairs)
        save(model, path)
    return freed


def write_dynamic(model: Path, output: Path, *, per_channel: bool, exclude: Sequence[str] = (),
                  only: Sequence[str] | None = None) -> None:
    """Dynamic int8 MatMul (weights int8 offline, activations per call): standard
    DynamicQuantizeLinear + MatMulInteger, which ONNX Runtime's CPU provider runs well."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(model), str(output), op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=per_channel, weight_type=QuantType.QInt8,
                         nodes_to_exclude=list(exclude),
                         nodes_to_quantize=list(only) if only is not None else None,
                         extra_options={"MatMulConstBOnly": True})
    except Exception as exc:
        raise BackendError(f"onnxruntime.quantization failed on {model.name}: {first_line(exc)}") from None


def write_nncf(model: Path, output: Path, samples: Callable[[], Iterable[dict]], *, scheme: Int8Scheme,
               count: int, transformer: bool, exclude: Sequence[str] = (),
               exclude_types: Sequence[str] = ()) -> None:
    """QDQ ONNX written by NNCF's ONNX backend: its presets, bias correction, overflow fix
    and, for transformers, SmoothQuant. Measured on MobileNetV2 (OpenVINO and ORT alike):
    mean cosine 0.9948 against 0.9901 from onnxruntime.quantization with one layer in float.
    """
    import onnx

    nncf = require("nncf", "[quantize] engine = \"nncf\"")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    class _Reiterable:  # NNCF walks the data more than once (statistics, bias correction)
        def __iter__(self):
            return iter(samples())

    preset = nncf.QuantizationPreset.PERFORMANCE if scheme.symmetric_activations \
        else nncf.QuantizationPreset.MIXED
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE if scheme.reduce_range else OverflowFix.DISABLE)
    ignored = nncf.IgnoredScope(names=list(exclude), types=list(exclude_types), validate=False)
    nncf.set_log_level(logging.ERROR)  # its INFO/WARNING lines and progress bars are not ours to print
    try:
        # NNCF draws rich progress bars on stdout, which `--json` keeps for one JSON object.
        with contextlib.redirect_stdout(io.StringIO()):
            quantized = nncf.quantize(
                onnx.load(str(model)), nncf.Dataset(_Reiterable()), preset=preset, subset_size=count,
                model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                ignored_scope=ignored, advanced_parameters=advanced)
    except Exception as exc:
        raise BackendError(f"nncf.quantize failed on {model.name}: {first_line(exc)}") from None
    onnx.save(quantized, str(output))


@dataclass(frozen=True)
class AccuracyControl:
    """What nncf.quantize_with_accuracy_control needs: data, a metric, and how far it may drop."""

    items: list[int]  # indices of the evaluation samples
    validate: Callable[[Callable[[dict], dict], list[int]], float]  # (run, indices) -> metric
    max_drop: float


def _ov_ignored_names(names: Sequence[str]) -> list[str]:
    """OpenVINO splits an ONNX Conv/Gemm with bias into `<name>/WithoutBiases` + an Add `<name>`."""
    return [variant for name in names for variant in (name, f"{name}/WithoutBiases")]


def write_nncf_openvino(model: Path, output: Path, samples: Callable[[], Iterable[dict]], *,
                        scheme: Int8Scheme, count: int, transformer: bool, exclude: Sequence[str] = (),
                        accuracy: AccuracyControl | None = None) -> None:
    """int8 IR written by NNCF on the OpenVINO model itself (its own backend, as NNCF's docs show):
    the route a user writes by hand, ~2 % faster than OpenVINO reading QDQ ONNX on MobileNetV2.
    With `accuracy`, NNCF's own accuracy control reverts the layers that cost most."""
    nncf = require("nncf", "[quantize] engine = \"nncf-openvino\"")
    ov = require("openvino", "[quantize] engine = \"nncf-openvino\"")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    class _Reiterable:
        def __iter__(self):
            return iter(samples())

    preset = nncf.QuantizationPreset.PERFORMANCE if scheme.symmetric_activations \
        else nncf.QuantizationPreset.MIXED
    common = {
        "preset": preset, "subset_size": count,
        "model_type": nncf.ModelType.TRANSFORMER if transformer else None,
        "ignored_scope": nncf.IgnoredScope(names=_ov_ignored_names(exclude), validate=False),
        "advanced_quantization_parameters": AdvancedQuantizationParameters(
            overflow_fix=OverflowFix.ENABLE if scheme.reduce_range else OverflowFix.DISABLE),
    }
    nncf.set_log_level(logging.ERROR)
    float_model = ov.convert_model(str(model))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            if accuracy is None:
                common["advanced_parameters"] = common.pop("advanced_quantization_parameters")
                quantized = nncf.quantize(float_model, nncf.Dataset(_Reiterable()), **common)
            else:
                def validation_fn(compiled, indices) -> float:
                    def run(feed: dict) -> dict:
                        results = compiled(feed)
                        return {str(i): results[i] for i in range(len(compiled.outputs))}
                    return accuracy.validate(run, list(indices))

                quantized = nncf.quantize_with_accuracy_control(
                    float_model, nncf.Dataset(_Reiterable()), nncf.Dataset(accuracy.items),
                    validation_fn=validation_fn, max_drop=accuracy.max_drop,
                    drop_type=nncf.DropType.ABSOLUTE, **common)
    except Exception as exc:
        raise BackendError(f"nncf failed on the OpenVINO model of {model.name}: {first_line(exc)}") from None
    ov.save_model(quantized, str(output), compress_to_fp16=False)
