"""Assemble the flashable bundle folder (DESIGN.md section 3) in the staging area."""

from __future__ import annotations

import copy
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


def _place_portable(result: PipelineResult, bundle: Path, build_dir: Path, portable: bool) -> str | None:
    """The portable ONNX goes into the flashable folder only where the device needs it (a TensorRT
    bundle builds its engine from it; its lowering put it there) or when asked (`--portable`,
    `[bundle] portable`); otherwise it stays in the build folder. Returns its name in the bundle."""
    if (bundle / PORTABLE_NAME).is_file():
        return PORTABLE_NAME
    destination = bundle if portable else build_dir
    if result.portable.companion_files:
        import onnx

        # Re-save so the external-data location names the file's new neighbour.
        save(onnx.load(str(result.portable.path)), destination / PORTABLE_NAME)
    else:
        shutil.copyfile(result.portable.path, destination / PORTABLE_NAME)
    return PORTABLE_NAME if portable else None


def _lower_metrics(result: PipelineResult) -> dict[str, Any]:
    return next((r.metrics for r in result.stages if r.stage == "lower"), {})


def _preprocessing(result: PipelineResult, input_name: str) -> dict[str, Any] | None:
    """How the calibration images were turned into this input, for the device to repeat."""
    for report in result.stages:
        declared = report.metrics.get("preprocessing")
        if declared:
            return declared
    return None


def _postprocess(result: PipelineResult) -> dict[str, Any] | None:
    """What run.py does with the outputs (a detector's decode and NMS), where a stage recorded it."""
    return next((report.metrics["postprocess"] for report in result.stages
                 if report.metrics.get("postprocess")), None)


def write_bundle(bundle: Path, build_dir: Path, *, source: SourceModel, target: Target, target_spec: str,
                 profile: Profile, result: PipelineResult, reference: Reference,
                 backend_versions: dict[str, str], seconds: float, portable: bool = False,
                 auto_selection: dict[str, Any] | None = None,
                 encrypt_key: bytes | None = None) -> dict[str, Any]:
    """Write run.py, the runtime, report.md and manifest.json beside the backend artifact, and the
    build record (build.json, the full report with timings) into the build folder.

    Returns the full manifest (with what the build measured); the flashable folder holds it
    without those values, so that its every byte is reproducible under SOURCE_DATE_EPOCH."""
    portable_name = _place_portable(result, bundle, build_dir, portable)
    copy_runtime(bundle)
    encrypted = encryption.encrypt_bundle(bundle, encrypt_key) if encrypt_key else None
    data: dict[str, Any] = {
        "schema": manifest.SCHEMA,
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
            # A copy: the lower stage's metrics hold the same record, split separately.
            "runtime_reports": dict(_lower_metrics(result).get("runtime_reports", {})),
            "versions": backend_versions,
            # TensorRT: the engine plan (build_engine.sh, run.py --build-engine) and compatibility;
            # TFLite: the converter route, the int8 scheme and the model's own I/O.
            **{key: copy.deepcopy(_lower_metrics(result)[key]) for key in MANIFEST_DETAIL
               if key in _lower_metrics(result)},
        },
        "portable_model": portable_name,
        "inputs": [spec.to_json() | {"preprocessing": _preprocessing(result, spec.name)}
                   for spec in result.deployed.inputs],
        "outputs": [spec.to_json() for spec in result.deployed.outputs],
        **({"postprocess": _postprocess(result)} if _postprocess(result) else {}),
        "stages": [report.to_json() for report in result.stages],
        "parity": {"reference_inputs": reference.origin, **result.parity.to_json()},
        "parity_budget": result.budget.model_dump(mode="json"),
        **({"auto": auto_selection} if auto_selection else {}),
        **({"encryption": encrypted} if encrypted else {}),
        "tools": manifest.tool_versions(backend_versions),
        "build": {**manifest.build_info(), "seconds": round(seconds, 3)},
        "files": [],
    }
    return _write_records(bundle, build_dir, data, manifest.build_record(seconds))


def _write_records(bundle: Path, build_dir: Path, data: dict[str, Any],
                   record: dict[str, Any]) -> dict[str, Any]:
    """manifest.json and report.md in the bundle (what the build measured taken out), build.json
    and the full report.md in the build folder; returns the full manifest."""
    stable, measured = manifest.split_measured(data)
    # report.md lists the other files' hashes, so it is written from a manifest
    # whose file list is complete except for itself.
    stable["files"] = manifest.file_entries(bundle)
    (bundle / "report.md").write_text(build_report.render(stable, in_bundle=True), encoding="utf-8")
    stable["files"] = manifest.file_entries(bundle)
    manifest.write_json(bundle / manifest.MANIFEST_NAME, stable)
    manifest.write_json(build_dir / manifest.BUILD_RECORD, {**record, "measured": measured})
    full = manifest.with_measured(stable, measured)
    (build_dir / "report.md").write_text(build_report.render(full), encoding="utf-8")
    return full


def record_selection(bundle: Path, build_dir: Path, selection: dict[str, Any]) -> dict[str, Any]:
    """`--profile auto`: write the selection (the table, the timings) into the very bundle that was
    timed and chosen, before it is signed and shipped; returns its full manifest."""
    record = manifest.read_build_record(bundle)
    if record is None:
        raise FileNotFoundError(build_dir / manifest.BUILD_RECORD)
    data = manifest.with_measured(manifest.load_manifest(bundle), record["measured"])
    return _write_records(bundle, build_dir, {**data, "auto": selection}, record)
