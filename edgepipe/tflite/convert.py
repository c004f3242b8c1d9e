"""The two official routes to a `.tflite`: litert-torch for PyTorch modules, onnx2tf for ONNX.

litert-torch (Google's PyTorch → LiteRT converter) lowers the module itself, so a
torch source needs no ONNX round trip; its int8 is PT2E static quantization with its
own quantizer, calibrated here with the same samples as every other target. onnx2tf
turns ONNX into a TensorFlow graph and lets TensorFlow's converter write float32,
float16 and full-integer models; it is the route for ONNX-only sources and for
models a stage changed after export (pruning), which the torch module no longer is.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgepipe.errors import BackendError, BadInputError, first_line
from edgepipe.extras import require
from edgepipe.quantization.detection_head import fx_head_tail
from edgepipe.tflite.offline import network_blocked, replaced

# TensorFlow's C++ logging writes straight to the terminal, around our one-line errors;
# a user who wants it back sets the variable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

Converter = Literal["litert-torch", "onnx2tf"]
IoDtype = Literal["float32", "int8", "uint8"]


@dataclass(frozen=True)
class ConverterChoice:
    converter: Converter
    reason: str


def choose_converter(requested: str, source_kind: str, module: Any, stages: Sequence[str],
                     precision: str) -> ConverterChoice:
    """`auto`: litert-torch for an nn.Module source nothing but fusion changed, else onnx2tf."""
    torch_module = module is not None and source_kind in ("factory", "pickle")
    if requested == "litert-torch":
        if not torch_module:
            raise BadInputError("[lower] converter \"litert-torch\" needs a PyTorch nn.Module source "
                                f"(this one is {source_kind}); use converter = \"onnx2tf\"")
        if "prune" in stages:
            raise BadInputError("[lower] converter \"litert-torch\" would convert the unpruned module; the "
                                "prune stage's result is ONNX: use converter = \"onnx2tf\"")
        return ConverterChoice("litert-torch", "requested")
    if requested == "onnx2tf":
        return ConverterChoice("onnx2tf", "requested")
    if not torch_module:
        return ConverterChoice("onnx2tf", f"the source is {source_kind}, not an nn.Module")
    if "prune" in stages:
        return ConverterChoice("onnx2tf", "the prune stage changed the model after export")
    if precision == "f16":
        return ConverterChoice("onnx2tf", "float16 weights come from TensorFlow's converter")
    return ConverterChoice("litert-torch", "PyTorch nn.Module source")


def channel_last_perm(rank: int) -> tuple[int, ...]:
    """N, C, *spatial → N, *spatial, C."""
    return (0, *range(2, rank), 1)


def _run_quietly(tool: str, call):
    """Run a converter; its chatter is kept and only its last line surfaces on failure."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            return call()
    except BackendError:
        raise
    except SystemExit:  # onnx2tf reports errors with sys.exit(1) after printing them
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        raise BackendError(f"{tool} failed: {lines[-1].strip() if lines else 'exit without a message'}"
                           ) from None
    except Exception as exc:
        raise BackendError(f"{tool} failed: {first_line(exc)}") from None


# ------------------------------------------------------------------ litert-torch


def convert_with_litert_torch(module: Any, example_args: tuple, out: Path, *, channel_last: bool,
                              calibration: Iterable[tuple] | None = None, per_channel: bool = True,
                              float_head: bool = False) -> int:
    """float32 as lowered, or int8 by PT2E static quantization calibrated on `calibration`;
    `float_head`: a detector's prediction layers and decode left float (detection_head.py).
    Returns how many graph nodes were left float that way."""
    torch = require("torch", "converting PyTorch models to TFLite")
    litert_torch = require("litert_torch", "converting PyTorch models to TFLite")
    model = module.eval()
    args = tuple(example_args)
    if channel_last:
        image_args = [i for i, arg in enumerate(args) if arg.dim() >= 3]
        model = litert_torch.to_channel_last_io(model, args=image_args).eval()
        args = tuple(arg.permute(*channel_last_perm(arg.dim())).contiguous() if i in image_args else arg
                     for i, arg in enumerate(args))

    def convert():
        if calibration is None:
            return litert_torch.convert(model, args)
        from litert_torch.quantize import pt2e_quantizer, quant_config
        from torchao.quantization.pt2e import quantize_pt2e

        exported = torch.export.export(model, args).module()
        keep = fx_head_tail(exported) if float_head else set()
        kept.append(len(keep))

        class Quantizer(pt2e_quantizer.PT2EQuantizer):
            """PT2E's quantizer with a set of nodes it may not annotate. Its own per-module
            settings cannot name the decode, which runs in the model's top-level forward."""

            def _annotate_all_static_patterns(self, model, config, filter_fn=None):
                def allowed(node):
                    return node not in keep and (filter_fn is None or filter_fn(node))

                return super()._annotate_all_static_patterns(model, config, allowed)

        quantizer = Quantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel))
        prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
        seen = 0
        with torch.no_grad():
            for sample in calibration:
                sample = tuple(torch.from_numpy(np.asarray(array, order="C")) for array in sample)
                if channel_last:
                    sample = tuple(s.permute(*channel_last_perm(s.dim())).contiguous()
                                   if i in image_args else s for i, s in enumerate(sample))
                prepared(*sample)
                seen += 1
        if not seen:
            raise BadInputError("the calibration set is empty")
        quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        return litert_torch.convert(quantized, args,
                                    quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))

    kept: list[int] = []
    edge_model = _run_quietly("litert-torch", convert)
    with network_blocked("litert-torch"):
        _run_quietly("litert-torch", lambda: edge_model.export(str(out)))
    return sum(kept)


# ------------------------------------------------------------------ onnx2tf

# onnx2tf writes every flavour it was asked for; these are the files we take.
_ONNX2TF_OUTPUT = {"f32": "float32", "f16": "float16", "int8-float-io": "integer_quant",
                   "int8-integer-io": "full_integer_quant"}


def _onnx2tf_file(precision: str, io_dtype: str) -> str:
    if precision == "int8":
        return _ONNX2TF_OUTPUT["int8-float-io" if io_dtype == "float32" else "int8-integer-io"]
    return _ONNX2TF_OUTPUT[precision]


def convert_with_onnx2tf(onnx_path: Path, work: Path, out: Path, *, precision: str, io_dtype: IoDtype,
                         channel_last: bool, input_shapes: dict[str, tuple[int, ...]],
                         calibration: dict[str, np.ndarray] | None = None) -> None:
    """Convert a copy of `onnx_path` (onnx2tf rewrites its input file in place).

    `calibration` maps each input name to stacked samples in the ONNX layout (N, C, H, W);
    they are handed to onnx2tf in the NHWC layout it calibrates in, with mean 0 and std 1
    (the samples are already preprocessed).
    """
    onnx2tf_module = require("onnx2tf.onnx2tf", "converting ONNX models to TFLite")
    if precision == "int8" and not calibration:
        raise BadInputError("TFLite int8 needs calibration data: --calib PATH")
    work.mkdir(parents=True, exist_ok=True)
    copy = work / "model.onnx"
    shutil.copyfile(onnx_path, copy)
    saved = work / "saved_model"
    arguments: dict[str, Any] = {
        "input_onnx_file_path": str(copy), "output_folder_path": str(saved), "non_verbose": True,
        "copy_onnx_input_output_names_to_tflite": True,
    }
    four_d = [name for name, shape in input_shapes.items() if len(shape) >= 3]
    if not channel_last and four_d:
        arguments["keep_ncw_or_nchw_or_ncdhw_input_names"] = four_d
    nhwc: dict[str, np.ndarray] = {}
    if calibration:
        for name, stacked in calibration.items():
            layout_changes = name in four_d and channel_last
            nhwc[name] = (stacked.transpose(0, *channel_last_perm(stacked.ndim)[1:]) if layout_changes
                          else stacked).astype(np.float32)
    if precision == "int8":
        files = []
        for name, array in nhwc.items():
            path = work / f"calib-{len(files)}.npy"
            np.save(path, array)
            shape = (1,) * (array.ndim - 1) + (array.shape[-1],)  # per channel (last axis)
            files.append([name, str(path), np.zeros(shape, np.float32), np.ones(shape, np.float32)])
        arguments.update(output_integer_quantized_tflite=True, quant_type="per-channel",
                         custom_input_op_name_np_data_path=files,
                         input_quant_dtype="uint8" if io_dtype == "uint8" else "int8",
                         output_quant_dtype="uint8" if io_dtype == "uint8" else "int8")

    def samples_not_downloads() -> np.ndarray:
        """What onnx2tf would download (RGB test images) is replaced by our own samples."""
        if nhwc:
            return next(iter(nhwc.values()))[:20]
        shape = next(iter(input_shapes.values()))
        layout = (shape[0], *shape[2:], shape[1]) if len(shape) >= 3 else shape
        return np.random.default_rng(0).random((20, *layout[1:]), dtype=np.float32)

    with network_blocked("onnx2tf"), replaced(onnx2tf_module, "download_test_image_data",
                                              samples_not_downloads):
        _run_quietly("onnx2tf", lambda: onnx2tf_module.convert(**arguments))
    produced = saved / f"{copy.stem}_{_onnx2tf_file(precision, io_dtype)}.tflite"
    if not produced.is_file():
        raise BackendError(f"onnx2tf wrote no {produced.name} (found: "
                           f"{', '.join(sorted(p.name for p in saved.glob('*.tflite'))) or 'nothing'})")
    shutil.copyfile(produced, out)
