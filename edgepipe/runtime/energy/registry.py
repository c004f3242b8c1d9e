"""Meter names as targets spell them in `[energy] meter = "..."`."""

from __future__ import annotations

from pathlib import Path

from .android import AndroidBatteryMeter
from .base import EnergyMeter, MeterUnavailable
from .csv_meter import CsvMeter
from .jetson import JetsonMeter
from .nvml import NvmlMeter
from .rapl import RaplMeter

METERS = {"rapl": RaplMeter, "jetson": JetsonMeter, "android": AndroidBatteryMeter, "nvml": NvmlMeter,
          "csv": CsvMeter}


def open_meter(spec: str, root: str | Path = "/") -> EnergyMeter:
    """`rapl`, `jetson`, `android`, `nvml`, `csv:/path/log.csv`; `none` is unavailable by choice."""
    name, _, argument = spec.partition(":")
    if name == "none":
        raise MeterUnavailable("the target names no energy meter ([energy] meter = \"none\")")
    if name == "csv":
        if not argument:
            raise MeterUnavailable("meter 'csv' needs a path: csv:/path/to/log.csv")
        return CsvMeter(argument)
    if name == "nvml":
        return NvmlMeter(int(argument or 0))
    if name not in METERS:
        raise MeterUnavailable(f"unknown energy meter {spec!r} (known: none, {', '.join(METERS)})")
    return METERS[name](root)
