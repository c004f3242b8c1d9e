"""Energy meters: one module per meter, one protocol (`base.EnergyMeter`).

These modules use only the standard library and numpy and import nothing outside the
runtime, which ships in every bundle (`edgepipe_runtime/energy/`) for the device's
run.py. Every path is relative to a `root` so tests can point a meter at a fixture tree
in the exact sysfs formats.
"""

from __future__ import annotations

from .base import EnergyMeter, MeterUnavailable, Reading, measure_window
from .registry import METERS, open_meter

__all__ = ["METERS", "EnergyMeter", "MeterUnavailable", "Reading", "measure_window", "open_meter"]
