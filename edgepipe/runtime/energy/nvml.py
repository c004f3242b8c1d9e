"""NVIDIA GPUs through NVML (`nvidia-ml-py`): the board's energy counter, else sampled power.

`nvmlDeviceGetTotalEnergyConsumption` (mJ since driver load, Volta and later) is preferred;
where it is not supported, `nvmlDeviceGetPowerUsage` (mW) is sampled and integrated.
"""

from __future__ import annotations

from .base import MeterUnavailable, Reading


class NvmlMeter:
    name = "nvml"
    resolution_j = 1e-3

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self._nvml = None
        self._handle = None
        self._counter = False

    def check(self) -> None:
        try:
            import pynvml
        except ImportError:
            raise MeterUnavailable("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from None
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        except pynvml.NVMLError as exc:
            raise MeterUnavailable(f"NVML cannot open GPU {self.index}: {exc}") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self._counter = True
        except pynvml.NVMLError:
            try:
                pynvml.nvmlDeviceGetPowerUsage(self._handle)
            except pynvml.NVMLError as exc:
                raise MeterUnavailable(f"GPU {self.index} reports neither energy nor power: {exc}") from None

    def read(self) -> Reading:
        if self._counter:
            return Reading("energy", self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0)
        return Reading("power", self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0)
