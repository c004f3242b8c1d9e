"""How a target's runtime wants int8: the part of quantization a target decides.

Measured on ResNet-18 with ONNX Runtime on x86 (2 threads): QDQ with unsigned
asymmetric activations ran 2.63 ms, with signed symmetric ones 11.0 ms (slower than
fp32's 7.9 ms). TensorRT on the other hand accepts only signed symmetric int8.
So the activation type is the target's call, not the profile's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgepipe.settings import StrictModel


class Int8Scheme(StrictModel):
    activations: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8: asymmetric (x86 ORT, OpenVINO); int8: symmetric, zero point 0 "
                             "(TensorRT)")
    reduce_range: bool = Field(False, description="7-bit weights, for x86 CPUs without VNNI")
    dynamic_matmul: bool = Field(
        False, description="the runtime runs dynamically quantized MatMul well (ORT CPU); "
                           "used for transformers")
    engine: Literal["onnxruntime", "nncf", "litert"] = Field(
        "onnxruntime", description="who writes the int8 model: onnxruntime.quantization or NNCF (QDQ "
                                   "ONNX), or the TFLite converter itself (litert)")
    quantize_bias: bool = Field(True, description="int32 biases (ORT, OpenVINO); TensorRT dequantizes "
                                                  "int8 only and keeps biases in float")
    calibration_cache: bool = Field(False, description="ship calib.cache (TensorRT format) in the bundle")
    tensorrt_version: str = Field("8.6.1", pattern=r"^\d+\.\d+(\.\d+)?$",
                                  description="the version written into calib.cache's header")

    @property
    def symmetric_activations(self) -> bool:
        return self.activations == "int8"
