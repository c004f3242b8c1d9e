"""Android (and Linux laptop) battery drain: `current_now` (µA) x `voltage_now` (µV).

Vendors disagree on the sign of `current_now` while discharging (negative on Pixel and most
Qualcomm kernels, positive on some others), so the magnitude is used, and only while
`status` says Discharging: on a charger the battery current does not measure the load.
"""

from __future__ import annotations

from pathlib import Path

from .base import MeterUnavailable, Reading


class AndroidBatteryMeter:
    name = "android-battery"
    resolution_j = 1e-3

    def __init__(self, root: str | Path = "/", supply: str = "battery") -> None:
        self.base = Path(root) / "sys/class/power_supply" / supply

    def check(self) -> None:
        for name in ("current_now", "voltage_now"):
            if not (self.base / name).exists():
                raise MeterUnavailable(f"{self.base / name} does not exist: no battery fuel gauge here")
        status = (self.base / "status").read_text().strip() if (self.base / "status").exists() else "Unknown"
        if status not in ("Discharging", "Not charging"):
            raise MeterUnavailable(f"battery status is {status!r}: unplug the charger, battery current "
                                   "measures the load only while discharging")
        try:
            self.read()
        except PermissionError:
            raise MeterUnavailable(f"{self.base / 'current_now'} is not readable by this user") from None

    def read(self) -> Reading:
        micro_amps = abs(int((self.base / "current_now").read_text()))
        micro_volts = int((self.base / "voltage_now").read_text())
        return Reading("power", micro_amps * micro_volts / 1e12)
