"""Facts about the machine a profile was taken on, so numbers are never compared blind."""

from __future__ import annotations

import os
import platform
from typing import Any

# The bundle's runner reports the device the same way; one implementation for both.
from edgepipe.device.run import cpu_model


def host_facts() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
