"""OpenVINO: the one place that turns a target's `[runtime]` table into a compile_model config.

On CPUs with bf16/AMX OpenVINO runs an "f32" model in bf16 unless
`INFERENCE_PRECISION_HINT` says otherwise, so the precision hint is always explicit
and what actually ran is recorded (`ran_with`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, first_line
from .base import Feed, Runner, Spec

# An IR given as bytes: (model.xml text, model.bin weights), e.g. decrypted into memory.
IrBytes = tuple[bytes, bytes]


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendError("this model needs OpenVINO: pip install openvino") from None
    return openvino


def compile_config(settings: Mapping[str, Any], precision: str, threads: int | None = None) -> dict[str, Any]:
    """The compile_model config; the device's own defaults only where the target says so."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": settings["performance_hint"],
                              "INFERENCE_PRECISION_HINT": precision}
    count = settings["threads"] if threads is None else threads
    if count:
        config["INFERENCE_NUM_THREADS"] = count
    if settings["streams"]:
        config["NUM_STREAMS"] = settings["streams"]
    if settings.get("cpu_pinning") is not None and settings["device"] == "CPU":
        config["ENABLE_CPU_PINNING"] = settings["cpu_pinning"]
    if settings.get("cache_dir"):
        config["CACHE_DIR"] = settings["cache_dir"]
    return config


def ran_with(compiled) -> dict[str, str]:
    """What OpenVINO actually did, as opposed to what was asked."""
    facts = {}
    for key in ("INFERENCE_PRECISION_HINT", "EXECUTION_DEVICES", "INFERENCE_NUM_THREADS", "NUM_STREAMS"):
        try:
            value = compiled.get_property(key)
        except Exception:  # not every device reports every property
            continue
        if hasattr(value, "get_type_name"):  # an ov.Type: "f32", "bf16"
            value = value.get_type_name()
        facts[key] = ",".join(value) if isinstance(value, list) else str(value)
    return facts


def compile_model(model: Path | IrBytes, settings: Mapping[str, Any], precision: str,
                  threads: int | None = None, name: str = "model", extra: Mapping[str, Any] | None = None):
    ov = import_openvino()
    core = ov.Core()
    device = settings["device"]
    if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
        raise BackendError(f"OpenVINO device {device} is not present on this machine "
                           f"(found: {', '.join(core.available_devices)})")
    config = {**compile_config(settings, precision, threads), **(extra or {})}
    try:
        if isinstance(model, tuple):
            xml, weights = model
            source = core.read_model(xml.decode("utf-8"), ov.Tensor(np.frombuffer(weights, np.uint8)))
            config.pop("CACHE_DIR", None)  # a compiled-model cache would put the weights on disk in clear
        else:
            source = str(model)
        return core.compile_model(source, device, config)
    except Exception as exc:
        raise BackendError(f"OpenVINO could not compile {name} for {device}: {first_line(exc)}") from None


class OpenVinoRunner(Runner):
    """An IR (or an ONNX file, which OpenVINO compiles with the kernels its IR would get)."""

    backend = "openvino"

    def __init__(self, model: Path | IrBytes, inputs: Sequence[Spec], settings: Mapping[str, Any],
                 precision: str = "f32", *, threads: int | None = None, name: str | None = None,
                 outputs: Sequence[Spec] = ()) -> None:
        super().__init__(inputs, name or (model.name if isinstance(model, Path) else "model.xml"))
        self.model, self.settings, self.precision, self.threads = model, dict(settings), precision, threads
        self._expected = {spec["name"] for spec in outputs}
        self._request = None

    def _output_name(self, names: set[str], index: int) -> str:
        """A compiled output can carry several tensor names (a fused node keeps its inner ones);
        the set's order changes with every process (string hashing), so the name is chosen: the
        one the manifest expects, else the first in sorted order."""
        return min(names & self._expected or names, default=f"output_{index}")

    def _activate(self) -> None:
        compiled = compile_model(self.model, self.settings, self.precision, self.threads, self.name)
        self._names = [self._output_name(set(o.get_names()), i) for i, o in enumerate(compiled.outputs)]
        self._request = compiled.create_infer_request()
        facts = ran_with(compiled)
        count = self.settings["threads"] if self.threads is None else self.threads
        self.runtime = {"name": "openvino", "version": import_openvino().__version__.split("-")[0],
                        "device": self.settings["device"],
                        "precision": facts.get("INFERENCE_PRECISION_HINT", self.precision),
                        "threads": count, "compiled": facts}

    def _deactivate(self) -> None:
        self._request = None

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        try:
            results = self._request.infer(dict(feed))
        except Exception as exc:
            raise BackendError(f"OpenVINO failed running {self.name}: {first_line(exc)}") from None
        return {name: np.asarray(results[index]) for index, name in enumerate(self._names)}

    def layer_times(self, feed: Feed, runs: int) -> dict[str, Any]:
        """OpenVINO's PERF_COUNT per executed node, from a separately compiled model so the timed
        runs carry no counting overhead."""
        compiled = compile_model(self.model, self.settings, self.precision, self.threads, self.name,
                                 extra={"PERF_COUNT": True})
        request = compiled.create_infer_request()
        totals: dict[str, Any] = {}
        for _ in range(runs):
            request.infer(dict(feed))
            for info in request.get_profiling_info():
                if str(info.status).endswith("NOT_RUN"):
                    continue
                entry = totals.setdefault(info.node_name, {"type": info.node_type,
                                                           "exec_type": info.exec_type, "us": 0.0})
                entry["us"] += info.real_time.total_seconds() * 1e6
        return {"source": "OpenVINO PERF_COUNT (real time)", "runs": runs, "totals": totals}
