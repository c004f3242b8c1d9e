"""int8 for TFLite targets: the converters quantize, calibrated on our samples.

TensorFlow's converter and litert-torch's PT2E flow each compute their own int8
parameters and fuse them into TFLite kernels; a QDQ ONNX from onnxruntime would be
re-quantized by onnx2tf anyway (its QDQ support converts the float graph back), so
the quantize stage gives these converters the same calibration samples every other
target gets and scores the `.tflite` they write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.artifact import TensorSpec
from edgepipe.errors import BadInputError
from edgepipe.tflite import convert

Feed = dict[str, np.ndarray]


def write_tflite_int8(onnx_path: Path, path: Path, samples: Callable[[], Iterable[Feed]], *,
                      lower: Any, source_kind: str, module: Any, stages: Sequence[str],
                      example_args: Callable[[], tuple[Any, ...]], inputs: tuple[TensorSpec, ...],
                      per_channel: bool = True, exclude: Sequence[str] = (),
                      float_head: bool = False) -> dict[str, Any]:
    """Write the int8 `.tflite`; return the converter route and int8 scheme, for the manifest.
    `lower` is the target's TfliteLowerSettings; `float_head`: a detector's head left float where
    the converter can (litert-torch's PT2E; TensorFlow's full-integer converter cannot)."""
    if exclude:
        raise BadInputError(f"TFLite int8 is written by its converter, which cannot keep single layers "
                            f"in float ({len(exclude)} excluded nodes asked); remove [quantize] "
                            "exclude_nodes / exclude_op_types / keep_first_last")
    choice = convert.choose_converter(lower.converter, source_kind, module, tuple(stages), "int8")
    names = [spec.name for spec in inputs]
    kept = 0
    if choice.converter == "litert-torch":
        if lower.int8_io == "uint8":
            raise BadInputError("[lower] int8_io \"uint8\": litert-torch writes int8 I/O only; use "
                                "converter = \"onnx2tf\"")
        kept = convert.convert_with_litert_torch(
            module, example_args(), path, channel_last=lower.channel_last_io,
            calibration=(tuple(feed[name] for name in names) for feed in samples()),
            per_channel=per_channel, float_head=float_head)
        io = "int8"  # measured (litert-torch 0.10): PT2E static always gives int8 model I/O
    else:
        stacked: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for feed in samples():
            for name in names:
                stacked[name].append(feed[name])
        if not stacked[names[0]]:
            raise BadInputError("the calibration set is empty")
        convert.convert_with_onnx2tf(
            onnx_path, path.parent / f"{path.stem}-onnx2tf", path, precision="int8", io_dtype=lower.int8_io,
            channel_last=lower.channel_last_io, input_shapes={s.name: tuple(s.shape) for s in inputs},
            calibration={name: np.concatenate(arrays) for name, arrays in stacked.items()})
        io = lower.int8_io
    scheme = {"weights": "int8 symmetric " + ("per-channel" if per_channel else "per-tensor"),
              "activations": "int8" + (" symmetric (PT2E)" if choice.converter == "litert-torch"
                                       else " asymmetric (TensorFlow full-integer)"),
              "io": io}
    return {"tflite_route": {"converter": choice.converter, "reason": choice.reason}, "tflite_scheme": scheme,
            **({"float_head_nodes": kept} if float_head else {})}
