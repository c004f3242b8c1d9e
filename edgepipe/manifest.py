"""The bundle manifest (schema "edgepipe.bundle/1"): writing, reading and verifying it.

Two builds of the same inputs with the same tool versions, with SOURCE_DATE_EPOCH set,
write byte-identical manifests: what a build measures (times, in-build latencies) and
where it ran go to `<bundle>.build/build.json` instead (see MEASURED).
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from edgepipe import __version__
from edgepipe.errors import BadInputError
from edgepipe.runtime import strict_json

# The device runtime defines the bundle format's names and checks (it must stand alone on a
# device); the host uses the same installed modules so the two never disagree.
from edgepipe.runtime.bundle import MANIFEST_NAME, SCHEMA, SIGNATURE_NAME, load_manifest, sha256_file
from edgepipe.runtime.cli import verify

__all__ = ["MANIFEST_NAME", "SCHEMA", "SIGNATURE_NAME", "load_manifest", "sha256_file", "verify",
           "verify_bundle"]

# What a build measures or observes of its host rather than derives from its inputs: wall-clock
# times, in-build latency estimates, how the build host's runtime ran the model (threads, the
# precision its CPU allowed). They differ between builds and build hosts, so they never enter the
# flashable folder (whose every byte is then reproducible under SOURCE_DATE_EPOCH);
# `split_measured` moves them to <bundle>.build/build.json. A pattern is a JSON path; `[]` means
# every element of a list.
MEASURED = (
    "stages[].runner",
    "backend.runtime_reports.INFERENCE_PRECISION_HINT",
    "backend.runtime_reports.EXECUTION_DEVICES",
    "backend.runtime_reports.INFERENCE_NUM_THREADS",
    "backend.runtime_reports.NUM_STREAMS",
    "backend.runtime_reports.host",
    "stages[].metrics.runtime_reports.INFERENCE_PRECISION_HINT",
    "stages[].metrics.runtime_reports.EXECUTION_DEVICES",
    "stages[].metrics.runtime_reports.INFERENCE_NUM_THREADS",
    "stages[].metrics.runtime_reports.NUM_STREAMS",
    "stages[].metrics.runtime_reports.host",
    # A TensorRT engine built on a build host that has TensorRT and the GPU: when and how long.
    "backend.engine.built",
    "backend.engine.record",
    "stages[].metrics.engine.built",
    "stages[].metrics.engine.record",
    "build.seconds",
    "stages[].seconds",
    "stages[].metrics.passes[].seconds",
    "stages[].metrics.calibration.seconds",
    "stages[].metrics.seconds_total",
    "stages[].metrics.latency_ms",
    "stages[].metrics.fallback[].latency_cost_ms",
    "stages[].metrics.fallback[].speedup",
    "stages[].metrics.int8_speed",
    "stages[].metrics.steps[].latency_ms",
    "stages[].metrics.latency_ratio",
    "stages[].metrics.finetune.seconds",
    "auto.candidates[].median_ms",
    "auto.candidates[].round_medians_ms",
    "auto.reason",
)
Measured = list[dict[str, Any]]  # [{"path": "stages[2].seconds", "value": 1.25}, ...]


def _take(node: Any, parts: list[str], prefix: str, taken: Measured) -> None:
    head, rest = parts[0], parts[1:]
    if head == "[]":
        if isinstance(node, list):
            for index, item in enumerate(node):
                _take(item, rest, f"{prefix}[{index}]", taken)
        return
    if not isinstance(node, dict) or head not in node:
        return
    path = f"{prefix}.{head}" if prefix else head
    if rest:
        _take(node[head], rest, path, taken)
    else:
        taken.append({"path": path, "value": node.pop(head)})


def split_measured(data: dict[str, Any]) -> tuple[dict[str, Any], Measured]:
    """(a copy without the measured values, those values with their concrete paths)."""
    import copy

    stable = copy.deepcopy(data)
    taken: Measured = []
    for pattern in MEASURED:
        _take(stable, re.findall(r"\[\]|[^.\[\]]+", pattern), "", taken)
    return stable, taken


def with_measured(stable: dict[str, Any], measured: Measured) -> dict[str, Any]:
    """The full record again: `stable` with the measured values put back."""
    import copy

    full = copy.deepcopy(stable)
    for entry in measured:
        parts = [int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[\]]+",
                                                                            entry["path"])]
        node = full
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = entry["value"]
    return full


BUILD_RECORD = "build.json"  # in <bundle>.build/: what differs per build


def read_build_record(bundle: Path) -> dict[str, Any] | None:
    """<bundle>.build/build.json, where the build folder is still beside the bundle."""
    from edgepipe.staging import build_dir_for

    try:
        record = json.loads((build_dir_for(bundle) / BUILD_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("measured"), list) else None


def full_manifest(bundle: Path) -> dict[str, Any]:
    """The bundle's manifest with what its build measured put back, where the build folder beside
    it still holds build.json (on the build host); the plain manifest elsewhere."""
    data = load_manifest(bundle)
    record = read_build_record(bundle)
    if record is None:
        return data
    try:
        return with_measured(data, record["measured"])
    except (KeyError, TypeError, IndexError, ValueError):
        return data


def file_entries(bundle: Path) -> list[dict[str, Any]]:
    """Every file in the bundle except the manifest itself, sorted by path."""
    entries = []
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        relative = path.relative_to(bundle).as_posix()
        if relative in (MANIFEST_NAME, SIGNATURE_NAME):
            continue
        entries.append({"path": relative, "sha256": sha256_file(path),
                        "size": path.stat().st_size})
    return entries


def build_time() -> str:
    """Now, or SOURCE_DATE_EPOCH when set (reproducible-builds.org convention)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None:
        try:
            moment = datetime.fromtimestamp(int(epoch), UTC)
        except ValueError:
            raise BadInputError(f"SOURCE_DATE_EPOCH='{epoch}' is not a number of seconds") from None
    else:
        moment = datetime.now(UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def tool_versions(extra: dict[str, str]) -> dict[str, str]:
    versions = {"edgepipe": __version__, "python": platform.python_version()}
    for dist in ("numpy", "onnx", "onnx-ir", "onnxscript"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    torch = sys.modules.get("torch")  # only when this build used it; None when blocked
    if torch is not None:
        versions["torch"] = torch.__version__
    versions.update(extra)
    return dict(sorted(versions.items()))


def build_info() -> dict[str, Any]:
    """What the manifest says of the build: when (SOURCE_DATE_EPOCH when set) and for what platform."""
    return {"time": build_time(), "platform": f"{platform.system()}-{platform.machine()}"}


def build_record(seconds: float) -> dict[str, Any]:
    """<bundle>.build/build.json without its `measured` values (the host, the wall-clock time, the
    CPU): what differs per build, beside the values the bundle leaves out."""
    from edgepipe.runtime.machine import machine_facts

    machine = machine_facts()
    host = machine.pop("hostname")
    return {"schema": "edgepipe.build/1", "finished": datetime.now(UTC).replace(microsecond=0).isoformat()
            .replace("+00:00", "Z"), "host": host, "machine": machine, "seconds": round(seconds, 3)}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(strict_json.dumps(data, indent=2) + "\n", encoding="utf-8")


def verify_bundle(bundle: Path) -> list[str]:
    """What differs between the bundle on disk and its manifest; empty when it is intact.
    The runtime's one implementation, reading the bundle as data only."""
    return verify(bundle, load_manifest(bundle))


def summary(manifest: dict[str, Any], bundle: Path) -> dict[str, Any]:
    """The part of a manifest a release pipeline reads: what, where, how well."""
    return {
        "bundle": str(bundle),
        "model": manifest["model"]["name"],
        "target": manifest["target"]["name"],
        "profile": manifest["profile"]["name"],
        "backend": manifest["backend"]["name"],
        "artifact": manifest["backend"]["artifact"],
        "inputs": manifest["inputs"],
        "outputs": manifest["outputs"],
        "parity": manifest["parity"],
        "stages": [{"stage": s["stage"], "seconds": s.get("seconds"),  # absent in a bundle's own manifest
                    "max_abs_diff": (s["parity"] or {}).get("max_abs_diff"),
                    "min_cosine": (s["parity"] or {}).get("min_cosine")}
                   for s in manifest["stages"]],
        "size_bytes": sum(f["size"] for f in manifest["files"]),
    }
