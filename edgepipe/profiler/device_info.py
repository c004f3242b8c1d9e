"""Facts about the machine a profile was taken on, so numbers are never compared blind."""

from __future__ import annotations

from typing import Any

# The bundle's runner reports the device the same way; one implementation for both.
from edgepipe.runtime.machine import machine_facts


def host_facts() -> dict[str, Any]:
    facts = machine_facts()
    facts.pop("hostname")  # profile.json is shared; the CPU and its features are what matter
    return facts
