"""Intel/AMD RAPL through the Linux powercap interface.

`/sys/class/powercap/intel-rapl:N/energy_uj` is a cumulative counter in microjoules
per package (AMD exposes the same names), wrapping at `max_energy_range_uj`. Only
top-level package zones are summed (sub-zones are parts of them). Since Linux 5.10
(CVE-2020-8694, PLATYPUS) energy_uj is readable by root only.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import MeterUnavailable, Reading

_PACKAGE = re.compile(r"^intel-rapl:\d+$")


class RaplMeter:
    name = "rapl"
    resolution_j = 1e-6

    def __init__(self, root: str | Path = "/") -> None:
        self.base = Path(root) / "sys/class/powercap"
        self._zones: list[tuple[Path, int]] = []
        self._raw: list[int] = []
        self._total_uj = 0

    def check(self) -> None:
        if not self.base.is_dir():
            raise MeterUnavailable(f"{self.base} does not exist: no RAPL powercap interface (a VM or "
                                   "container without /sys/class/powercap, or a non-x86 CPU)")
        zones = sorted(p for p in self.base.iterdir() if _PACKAGE.match(p.name))
        if not zones:
            raise MeterUnavailable(f"{self.base} has no intel-rapl:N package zones")
        self._zones = []
        for zone in zones:
            try:
                int((zone / "energy_uj").read_text())
                wrap = int((zone / "max_energy_range_uj").read_text())
            except PermissionError:
                raise MeterUnavailable(f"{zone / 'energy_uj'} is readable by root only (Linux >= 5.10, "
                                       "CVE-2020-8694): run as root or grant read access") from None
            except (OSError, ValueError) as exc:
                raise MeterUnavailable(f"{zone}: unreadable RAPL counter ({exc})") from None
            self._zones.append((zone / "energy_uj", wrap))
        self._raw = [int(path.read_text()) for path, _ in self._zones]
        self._total_uj = 0

    def read(self) -> Reading:
        """Cumulative joules since `check`, every zone's wrap-around undone (a counter that
        went down wrapped once: at 20 Hz a wrap takes minutes of full load)."""
        for index, (path, wrap) in enumerate(self._zones):
            raw = int(path.read_text())
            previous = self._raw[index]
            self._total_uj += raw - previous if raw >= previous else raw + wrap - previous
            self._raw[index] = raw
        return Reading("energy", self._total_uj * 1e-6)
