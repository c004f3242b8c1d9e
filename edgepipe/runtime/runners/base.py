"""The runner template every backend shares (shaped after Polygraphy's `BaseRunner`).

The public `infer` checks the feed against the model's inputs, then calls the
backend's `_infer`; `activate`/`deactivate` wrap `_activate`/`_deactivate`, and a
runner is a context manager. A backend writes only what differs. After activation
`runtime` records what the runtime really does (version, threads, precision,
providers): the host's parity checks and the device's run.py report the same record
because they run the same class with the same settings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import BackendError, BadInputError
from ..feeds import expected_shape, fits

Feed = Mapping[str, np.ndarray]
Spec = Mapping[str, Any]  # {"name", "shape", "dtype", ...}: a manifest's input entry


def is_static(shape: Sequence[Any]) -> bool:
    return all(isinstance(dim, int) and dim >= 0 for dim in shape)


class Runner(ABC):
    """Runs one model with one backend's runtime and settings; use as a context manager."""

    backend: str = ""

    def __init__(self, inputs: Sequence[Spec], name: str = "model") -> None:
        self.inputs = [dict(spec) for spec in inputs]
        self.name = name
        self.runtime: dict[str, Any] = {}
        self.warnings: list[str] = []
        self._active = False

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self._active:
            self._activate()
            self._active = True

    def deactivate(self) -> None:
        if self._active:
            self._active = False
            self._deactivate()

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        if not self._active:
            raise RuntimeError("Runner.infer called before activate() (use it in a `with` block)")
        self._check_feed(feed)
        return self._infer(feed)

    def layer_times(self, feed: Feed, runs: int) -> dict[str, Any]:
        """{"source", "runs", "totals": {layer: {"type", "exec_type", "us"}}}, where the runtime can."""
        raise BackendError(f"{self.backend} cannot time single layers here")

    def accepted_shapes(self, spec: Spec) -> list[list[Any]]:
        """Shapes a feed for `spec` may have (TFLite also takes the model's own channel-last one)."""
        return [list(spec["shape"])]

    def _check_feed(self, feed: Feed) -> None:
        expected = {spec["name"]: spec for spec in self.inputs}
        if set(feed) != set(expected):
            raise BadInputError(f"inputs {sorted(feed)} given, model expects {sorted(expected)}")
        for name, array in feed.items():
            spec = expected[name]
            if array.dtype.name != spec["dtype"]:
                raise BadInputError(f"input '{name}': dtype {array.dtype.name}, expected {spec['dtype']}")
            if is_static(spec["shape"]) and not fits(array.shape, spec, self.accepted_shapes(spec)):
                raise BadInputError(f"input '{name}': shape {list(array.shape)}, "
                                    f"expected {expected_shape(spec)}")

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def _infer(self, feed: Feed) -> dict[str, np.ndarray]: ...


def summarize_layers(raw: dict[str, Any], runs: int, top: int = 25) -> dict[str, Any]:
    """The slowest layers, mean milliseconds per inference, and their share of the total."""
    total_us = sum(entry["us"] for entry in raw["totals"].values()) or 1.0
    ranked = sorted(raw["totals"].items(), key=lambda item: -item[1]["us"])
    return {"source": raw["source"], "runs": runs, "layers_total": len(ranked),
            "total_ms": round(total_us / runs / 1000, 4),
            "layers": [{"name": name, "type": entry["type"], "exec_type": entry["exec_type"],
                        "mean_ms": round(entry["us"] / runs / 1000, 4),
                        "share": round(entry["us"] / total_us, 4)} for name, entry in ranked[:top]]}
