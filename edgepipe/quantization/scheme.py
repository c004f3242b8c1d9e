"""How a target's runtime wants int8: the part of quantization a target decides.

Measured on ResNet-18 with ONNX Runtime on x86 (2 threads): QDQ with unsigned
asymmetric activations ran 2.63 ms, with signed symmetric ones 11.0 ms (slower than
fp32's 7.9 ms). TensorRT on the other hand accepts only signed symmetric int8.
So the activation type is the target's call, not the profile's.
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import Field

from edgepipe.settings import StrictModel


class DeviceFacts(Protocol):
    """What `for_device` reads of config.DeviceFacts (config imports this module, not back)."""

    cpu_features: list[str] | None

# x86 extensions whose uint8 x int8 dot products accumulate in int32 without saturating.
INT8_DOT_PRODUCTS = ("avx512_vnni", "avx_vnni", "amx_int8")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "sve")


class Int8Scheme(StrictModel):
    activations: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8: asymmetric (x86 ORT, OpenVINO); int8: symmetric, zero point 0 "
                             "(TensorRT)")
    reduce_range: bool | Literal["auto"] = Field(
        False, description="7-bit weights, for x86 CPUs without VNNI; auto: decided by the deployment "
                           "CPU's declared features (7-bit where they are not declared)")
    dynamic_matmul: bool = Field(
        False, description="the runtime runs dynamically quantized MatMul well (ORT CPU); "
                           "used for transformers")
    engine: Literal["onnxruntime", "nncf", "litert"] = Field(
        "onnxruntime", description="who writes the int8 model: onnxruntime.quantization or NNCF (QDQ "
                                   "ONNX), or the TFLite converter itself (litert)")
    placement: Literal["tensors", "inputs"] = Field(
        "tensors", description="tensors: Q/DQ on every input and output of a quantized op "
                               "(onnxruntime's default, what ORT and OpenVINO fuse); inputs: only where "
                               "a weighted op, pooling or residual Add reads a tensor, the residual "
                               "input a Conv computes left float (TensorRT's placement rules)")
    quantize_bias: bool = Field(True, description="int32 biases (ORT, OpenVINO); TensorRT dequantizes "
                                                  "int8 only and keeps biases in float")
    calibration_cache: bool = Field(False, description="ship calib.cache (TensorRT format) in the bundle")
    tensorrt_version: str = Field("8.6.1", pattern=r"^\d+\.\d+(\.\d+)?$",
                                  description="the version written into calib.cache's header")

    @property
    def symmetric_activations(self) -> bool:
        return self.activations == "int8"

    def for_device(self, device: DeviceFacts) -> tuple[Int8Scheme, str]:
        """The scheme with `reduce_range` decided for the deployment CPU, and why (for the report).

        7-bit weights cost accuracy everywhere (one bit of weight resolution) and buy it back only
        on x86 without VNNI/AMX, where uint8 x int8 pairs are summed in saturating int16 (AVX2's
        vpmaddubsw). So "auto" spends the bit only where the device may be such a CPU."""
        if self.reduce_range != "auto":
            return self, f"[int8] reduce_range = {str(self.reduce_range).lower()} in the target"
        features = device.cpu_features
        if features is None:
            seven, why = True, ("the deployment CPU is not declared and may be x86 without VNNI, whose "
                                "uint8 x int8 products saturate (--device-cpu host or a feature list "
                                "declares it)")
        elif dot := [name for name in INT8_DOT_PRODUCTS if name in features]:
            seven, why = False, f"the deployment CPU has {', '.join(dot)}: int8 products do not saturate"
        elif any(name in features for name in ARM_FEATURES):
            seven, why = False, "the deployment CPU is ARM: its int8 dot products do not saturate"
        else:
            seven, why = True, "the deployment CPU has no VNNI or AMX: uint8 x int8 products saturate"
        bits = "7-bit weights" if seven else "8-bit weights"
        return self.model_copy(update={"reduce_range": seven}), f"{bits}: {why}"
