"""`build_engine.sh`: the trtexec line a device runs to build its own engine.

Written per TensorRT line because the flags differ: 8.x takes `--int8 --calib=...`, 10.x
builds QDQ int8 as `--stronglyTyped`, 11.x has no precision flags at all (types come from
the ONNX). The script refuses a TensorRT of another line before spending minutes building.
"""

from __future__ import annotations

import shlex

from edgepipe.trt.plan import EnginePlan
from edgepipe.trt.versions import TensorRtVersion


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_args(plan: EnginePlan) -> list[str]:
    """The trtexec arguments, one flag each, in a stable order (the script is diffable)."""
    rules = TensorRtVersion.parse(plan.tensorrt_version).rules
    args = [f"--onnx={plan.onnx}", f"--saveEngine={plan.engine}", f"--timingCacheFile={plan.timing_cache}"]
    if plan.strongly_typed and rules.strongly_typed_flag:
        args.append("--stronglyTyped")
    if plan.fp16_flag:
        args.append("--fp16")
    if plan.int8_mode == "calibration-cache":
        args += ["--int8", f"--calib={plan.calibration_cache}"]
    for flag, pick in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
        if plan.shapes:
            args.append(f"{flag}=" + ",".join(f"{name}:{_dims(getattr(r, pick))}"
                                             for name, r in sorted(plan.shapes.items())))
    # 8.x reads the size in MiB without a suffix; 10.x+ accepts base-2 suffixes.
    suffix = "" if TensorRtVersion.parse(plan.tensorrt_version).major < 10 else "M"
    args.append(f"--memPoolSize=workspace:{plan.workspace_mib}{suffix}")
    if plan.builder_optimization_level is not None:
        args.append(f"--builderOptimizationLevel={plan.builder_optimization_level}")
    if plan.dla_core is not None:
        args.append(f"--useDLACore={plan.dla_core}")
        if plan.gpu_fallback:
            args.append("--allowGPUFallback")
    if plan.sparsity:
        args.append("--sparsity=enable")
    return args


def render(plan: EnginePlan, model_name: str) -> str:
    version = TensorRtVersion.parse(plan.tensorrt_version)
    args = " \\\n    ".join(shlex.quote(a) for a in trtexec_args(plan))
    gpu = f"compute capability {plan.compute_capability}" if plan.compute_capability else "this GPU"
    return f"""#!/usr/bin/env bash
# Build the TensorRT engine for {model_name} on the device itself: an engine is tied to the
# GPU ({gpu}) and the TensorRT line ({version.major}.{version.minor}) it is built with.
# Written by edgepipe; the same plan drives `python3 run.py --build-engine`.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$TRTEXEC" ]; then
    echo "error: trtexec not found (set TRTEXEC=/path/to/trtexec;" \\
         "JetPack puts it in /usr/src/tensorrt/bin)" >&2
    exit 3
fi
found="$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)"
IFS=. read -r major minor _ <<< "${{found:-.}}"
if [ -n "$found" ] && [ "$major.$minor" != "{version.major}.{version.minor}" ]; then
    echo "error: this bundle targets TensorRT {version.major}.{version.minor}, the device has $found:" \\
         "rebuild the bundle for a target with TensorRT $found" >&2
    exit 3
fi
"$TRTEXEC" \\
    {args}
if command -v python3 >/dev/null && python3 -c 'import tensorrt' 2>/dev/null; then
    python3 run.py --record-engine >/dev/null
fi
echo "built {plan.engine}; run it with: python3 run.py --benchmark"
"""
