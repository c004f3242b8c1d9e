"""NVIDIA Jetson power rails from the INA3221 monitors (hwmon), or tegrastats output.

hwmon files: `in{N}_label` (rail name), `in{N}_input` (bus voltage, mV), `curr{N}_input`
(current, mA) under `/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/`. The board's input rail
(`VDD_IN` on Orin Nano/NX; `VIN_SYS_5V0` on AGX Orin) is the whole module; where it is absent,
the rails found are summed. Older JetPack exposes `iio:device*/in_power{N}_input` (mW) with
`rail_name_{N}`, also read here. `tegrastats` lines (`VDD_IN 5000mW/5000mW`) are parsed by
`parse_tegrastats` for boards where only the tool works.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import MeterUnavailable, Reading

INPUT_RAILS = ("VDD_IN", "VIN_SYS_5V0", "POM_5V_IN")
_TEGRASTATS = re.compile(r"\b([A-Z0-9_]+) (\d+)mW/(\d+)mW")


def parse_tegrastats(line: str) -> dict[str, float]:
    """Rail -> current watts from one tegrastats line."""
    return {rail: int(now) / 1000.0 for rail, now, _ in _TEGRASTATS.findall(line)}


class JetsonMeter:
    name = "jetson-ina3221"
    resolution_j = 1e-3

    def __init__(self, root: str | Path = "/") -> None:
        self.root = Path(root)
        self._rails: list[tuple[str, Path, Path | None]] = []  # (name, mV or mW file, mA file)

    def _hwmon_rails(self) -> list[tuple[str, Path, Path | None]]:
        rails = []
        for label in sorted(self.root.glob("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label")):
            channel = label.name.removeprefix("in").removesuffix("_label")
            volts, amps = label.with_name(f"in{channel}_input"), label.with_name(f"curr{channel}_input")
            if volts.exists() and amps.exists():
                rails.append((label.read_text().strip(), volts, amps))
        return rails

    def _iio_rails(self) -> list[tuple[str, Path, Path | None]]:
        rails = []
        for name_file in sorted(self.root.glob("sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*")):
            channel = name_file.name.removeprefix("rail_name_")
            power = name_file.with_name(f"in_power{channel}_input")
            if power.exists():
                rails.append((name_file.read_text().strip(), power, None))
        return rails

    def check(self) -> None:
        rails = self._hwmon_rails() or self._iio_rails()
        if not rails:
            raise MeterUnavailable("no INA3221 power monitor under /sys/bus/i2c/drivers/ina3221*: not a "
                                   "Jetson, or its monitor driver is not loaded")
        inputs = [r for r in rails if r[0] in INPUT_RAILS]
        self._rails = inputs[:1] or rails
        try:
            self.read()
        except PermissionError:
            raise MeterUnavailable(f"{self._rails[0][1]} is not readable by this user") from None
        except (OSError, ValueError) as exc:
            raise MeterUnavailable(f"unreadable INA3221 rail ({exc})") from None

    @property
    def rails(self) -> list[str]:
        return [name for name, _, _ in self._rails]

    def read(self) -> Reading:
        watts = 0.0
        for _, first, current in self._rails:
            if current is None:  # iio: the file already holds milliwatts
                watts += int(first.read_text()) / 1000.0
            else:  # hwmon: millivolts x milliamps
                watts += int(first.read_text()) * int(current.read_text()) / 1e6
        return Reading("power", watts)
