"""Facts about the machine a number was measured on, so numbers are never compared blind.

The same implementation describes the build host (`edgepipe profile` locally, bench/)
and the device (run.py over SSH).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

# ISA extensions that change which kernels run (int8 dot products, bf16, matrix units).
FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
            "amx_bf16", "asimd", "asimddp", "i8mm", "bf16", "sve")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    for line in _cpuinfo():
        if line.startswith(("model name", "Hardware", "Model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """Which of FEATURES this CPU reports (x86 `flags`, ARM `Features`), in FEATURES order."""
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            found = set(line.split(":", 1)[1].split())
            return [name for name in FEATURES if name in found]
    return []


def peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def machine_facts() -> dict[str, Any]:
    return {"cpu": cpu_model(), "cpu_features": cpu_features(), "logical_cpus": os.cpu_count(),
            "machine": platform.machine(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "hostname": platform.node()}
