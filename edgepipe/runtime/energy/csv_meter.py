"""An external power meter (USB meter, lab supply) logging `timestamp,watts` rows to a CSV.

Timestamps are Unix seconds from the same clock as this machine (sync it, e.g. NTP); the
logger keeps appending while the run goes, and each reading is the latest row at or before
now, so the sampler aligns the meter's trace to the run's time window.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from .base import MeterUnavailable, Reading

STALE_S = 5.0


class CsvMeter:
    name = "csv"
    resolution_j = 0.0  # unknown: the meter's own

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _rows(self) -> list[tuple[float, float]]:
        with self.path.open(newline="") as handle:
            rows = []
            for record in csv.reader(handle):
                try:
                    rows.append((float(record[0]), float(record[1])))
                except (ValueError, IndexError):
                    continue  # a header line or a partly written last line
            return rows

    def check(self) -> None:
        try:
            rows = self._rows()
        except OSError as exc:
            raise MeterUnavailable(f"power log {self.path}: {exc.strerror or exc}") from None
        if not rows:
            raise MeterUnavailable(f"power log {self.path} has no timestamp,watts rows")
        age = time.time() - rows[-1][0]
        if age > STALE_S:
            raise MeterUnavailable(f"power log {self.path} is stale: its last row is {age:.0f} s old "
                                   "(is the meter logging, and are the clocks in sync?)")

    def read(self) -> Reading:
        now = time.time()
        watts = [w for t, w in self._rows() if t <= now]
        return Reading("power", watts[-1] if watts else 0.0)
