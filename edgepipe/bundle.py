"""Assemble the flashable bundle folder (DESIGN.md section 3) in the staging area."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgepipe import build_report, encryption, manifest
from edgepipe.config import Profile, Target
from edgepipe.onnx_model import save
from edgepipe.pipeline import PipelineResult
from edgepipe.reference import Reference
from edgepipe.runtime.bundle import RUNTIME_PACKAGE
from edgepipe.sources import SourceModel
from edgepipe.stages.lower import MANIFEST_DETAIL

RUNNER_SCRIPT = Path(__file__).parent / "device" / "run.py"
RUNTIME_SOURCE = Path(__file__).parent / "runtime"  # shipped as edgepipe_runtime/, byte for byte
PORTABLE_NAME = "model.onnx"


def runtime_files() -> list[Path]:
    """The device runtime's modules, relative to its package folder, in a stable order."""
    return sorted(p.relative_to(RUNTIME_SOURCE) for p in RUNTIME_SOURCE.rglob("*.py")
                  if "__pycache__" not in p.parts)


def copy_runtime(bundle: Path) -> None:
    """run.py and the runtime it imports: the very files the host itself runs."""
    shutil.copyfile(RUNNER_SCRIPT, bundle / "run.py")
    for relative in runtime_files():
        target = bundle / RUNTIME_PACKAGE / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RUNTIME_SOURCE / relative, target)


def _copy_portable(result: PipelineResult, bundle: Path) -> None:
    if result.portable.companion_files:
        import onnx

        # Re-save so the external-data location names the bundle's own data file.
        save(onnx.load(str(result.portable.path)), bundle / PORTABLE_NAME)
    else:
        shutil.copyfile(result.portable.path, bundle / PORTABLE_NAME)


def _lower_metrics(result: PipelineResult) -> dict[str, Any]:
    return next((r.metrics for r in result.stages if r.stage == "lower"), {})


def _preprocessing(result: PipelineResult, input_name: str) -> dict[str, Any] | None:
    """How the calibration images were turned into this input, for the device to repeat."""
    for report in result.stages:
        declared = report.metrics.get("preprocessing")
        if declared:
            return declared
    return None


def write_bundle(bundle: Path, *, source: SourceModel, target: Target, target_spec: str,
                 profile: Profile, result: PipelineResult, reference: Reference,
                 backend_versions: dict[str, str], seconds: float,
                 auto_selection: dict[str, Any] | None = None,
                 encrypt_key: bytes | None = None) -> dict[str, Any]:
    """Write model.onnx, run.py, report.md and manifest.json beside the backend artifact."""
    _copy_portable(result, bundle)
    copy_runtime(bundle)
    encrypted = encryption.encrypt_bundle(bundle, encrypt_key) if encrypt_key else None
    data: dict[str, Any] = {
        "schema": manifest.SCHEMA,
        "volatile": list(manifest.VOLATILE),
        "model": {
            "name": source.name,
            "source": {"spec": source.spec, "kind": source.kind, "sha256": source.sha256,
                       "notes": source.notes},
        },
        "target": {"requested": target_spec, **target.to_json()},
        "profile": profile.to_json(),
        "backend": {
            "name": target.backend,
            "artifact": result.deployed.path.name,
            "runtime": target.runtime.model_dump(mode="json"),
            "precision": _lower_metrics(result).get("precision", "f32"),
            "runtime_reports": _lower_metrics(result).get("runtime_reports", {}),
            "versions": backend_versions,
            # TensorRT: the engine plan (build_engine.sh, run.py --build-engine) and compatibility;
            # TFLite: the converter route, the int8 scheme and the model's own I/O.
            **{key: _lower_metrics(result)[key] for key in MANIFEST_DETAIL if key in _lower_metrics(result)},
        },
        "portable_model": PORTABLE_NAME,
        "inputs": [spec.to_json() | {"preprocessing": _preprocessing(result, spec.name)}
                   for spec in result.deployed.inputs],
        "outputs": [spec.to_json() for spec in result.deployed.outputs],
        "stages": [report.to_json() for report in result.stages],
        "parity": {"reference_inputs": reference.origin, **result.parity.to_json()},
        "parity_budget": result.budget.model_dump(mode="json"),
        **({"auto": auto_selection} if auto_selection else {}),
        **({"encryption": encrypted} if encrypted else {}),
        "tools": manifest.tool_versions(backend_versions),
        "build": manifest.build_info(seconds),
        "files": [],
    }
    # report.md lists the other files' hashes, so it is written from a manifest
    # whose file list is complete except for itself.
    data["files"] = manifest.file_entries(bundle)
    (bundle / "report.md").write_text(build_report.render(data), encoding="utf-8")
    data["files"] = manifest.file_entries(bundle)
    manifest.write_json(bundle / manifest.MANIFEST_NAME, data)
    return data
