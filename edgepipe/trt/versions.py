"""What each TensorRT release line accepts, so a CPU build host can refuse early.

Every fact carries its source. The op tables are the parser's "N" rows (operators the
ONNX parser rejects) from onnx-tensorrt's `docs/operators.md` at the matching release
branch; an op missing from the ONNX standard domain, or newer than the opset range, is
caught by the opset check instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgepipe.errors import BadInputError

# onnx/onnx-tensorrt release/8.5-GA docs/operators.md ("TensorRT 8.5 supports operators up
# to Opset 17"); the parser accepts opset 7 and later.
_UNSUPPORTED_8_5 = frozenset({
    "Bernoulli", "BitShift", "BlackmanWindow", "Compress", "ConcatFromSequence", "ConvInteger", "DFT",
    "Det", "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "Hardmax", "IsInf",
    "LayerNormalization", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "STFT", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
    "StringNormalizer", "TfIdfVectorizer", "Unique",
})
# onnx/onnx-tensorrt docs/operators.md of the 10.x line (read at 10.15: "opset 9 to opset 24";
# release/10.0 says 9 to 20, which is the range used for 10.0-10.7, JetPack 6's 10.3 included).
# LayerNormalization, IsInf, Hardmax and the window functions became supported in the 10.x parser.
_UNSUPPORTED_10 = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
    "CenterCropPad", "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
    "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch", "SequenceAt",
    "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
    "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer",
    "StringSplit", "TfIdfVectorizer", "Unique",
})


@dataclass(frozen=True)
class TensorRtRules:
    """How one TensorRT line builds: what its parser reads and which precision switches exist."""

    line: str
    min_opset: int
    max_opset: int
    unsupported_ops: frozenset[str]
    # TensorRT 8.x: weakly typed builder flags (--fp16, --int8) and an INT8 calibrator or
    # calib.cache. 10.x: both flag styles; QDQ int8 as a strongly typed network.
    # 11.x removed every precision flag and the calibrator (docs.nvidia.com, "Migrating
    # trtexec Usage from TensorRT 10.x to 11.x"): types come from the ONNX, always.
    precision_flags: bool
    calibrator: bool
    strongly_typed_flag: bool  # --stronglyTyped exists and is needed (10.x); always on in 11.x
    dla: bool  # 11.x: "DLA is not supported" (TensorRT 11.3/11.4 migration guide), no JetPack
    memory_pool_flag: bool  # --memPoolSize (8.4+); --workspace before it


def _rules(major: int, minor: int) -> TensorRtRules:
    if major == 8 and minor >= 5:
        return TensorRtRules("8.5-8.6", 7, 17, _UNSUPPORTED_8_5, True, True, False, True, True)
    if major == 10:
        top = 20 if minor <= 7 else 24  # release/10.0 says 20; the 10.15 table says 24
        return TensorRtRules("10.x", 9, top, _UNSUPPORTED_10, True, True, True, True, True)
    if major == 11:
        # docs.nvidia.com ONNX Opset Guide for 11.x: "Maximum opset 25", backward to opset 9.
        return TensorRtRules("11.x", 9, 25, _UNSUPPORTED_10, False, False, False, False, True)
    raise BadInputError(f"TensorRT {major}.{minor} is not supported by edgepipe (8.5, 8.6, 10.x, 11.x are)")


_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)*$")


@dataclass(frozen=True)
class TensorRtVersion:
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> TensorRtVersion:
        match = _VERSION.match(text.strip())
        if not match:
            raise BadInputError(f"TensorRT version '{text}' is not MAJOR.MINOR[.PATCH]")
        return cls(int(match[1]), int(match[2]), int(match[3] or 0))

    @property
    def rules(self) -> TensorRtRules:
        return _rules(self.major, self.minor)

    @property
    def int8_from_calibration_cache(self) -> bool:
        """TensorRT 8 builds int8 implicitly (float model + calib.cache, --int8 --fp16: float layers
        in fp16); 10 and 11 build the QDQ model strongly typed (float layers in their own type)."""
        return self.rules.calibrator and self.major < 10

    def same_engine_line(self, other: TensorRtVersion) -> bool:
        """Engines load only in the TensorRT that built them (major.minor; patch releases keep
        compatibility within 8.6+/10.x unless version-compatible engines were asked for)."""
        return (self.major, self.minor) == (other.major, other.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"
