"""The bundle manifest (schema "edgepipe.bundle/1"): writing, reading and verifying it.

Two builds of the same inputs with the same tool versions produce manifests
that are equal outside the fields listed in `volatile` (JSON paths; `[]` means
"every element", `[name]` the file entry with that path).
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from edgepipe import __version__
from edgepipe.errors import BadInputError

# The device runtime defines the bundle format's names and checks (it must stand alone on a
# device); the host uses the same installed modules so the two never disagree.
from edgepipe.runtime.bundle import MANIFEST_NAME, SCHEMA, SIGNATURE_NAME, load_manifest, sha256_file
from edgepipe.runtime.cli import verify

__all__ = ["MANIFEST_NAME", "SCHEMA", "SIGNATURE_NAME", "load_manifest", "sha256_file", "verify",
           "verify_bundle"]

VOLATILE = (
    "build.time",
    "build.host",
    "build.seconds",
    "stages[].seconds",
    "stages[].metrics.passes[].seconds",
    "files[report.md].sha256",
    "files[report.md].size",
)


def without_volatile(manifest: dict[str, Any]) -> dict[str, Any]:
    """A copy without the fields the manifest itself lists as volatile, for comparing builds."""
    import copy

    stable = copy.deepcopy(manifest)
    for field in stable.get("volatile", []):
        # split on dots outside brackets: "files[report.md].sha256" has three parts
        _drop(stable, re.findall(r"[^.\[]+(?:\[[^\]]*\])?", field))
    return stable


def _drop(node: Any, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    key, _, selector = head.partition("[")
    selector = selector.rstrip("]")
    if not isinstance(node, dict) or key not in node:
        return
    if not head.endswith("]"):
        if rest:
            _drop(node[key], rest)
        else:
            del node[key]
        return
    for item in node[key]:
        if selector == "" or item.get("path") == selector:
            _drop(item, rest)


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


def build_info(seconds: float) -> dict[str, Any]:
    return {"time": build_time(), "host": socket.gethostname(),
            "platform": f"{platform.system()}-{platform.machine()}",
            "seconds": round(seconds, 3)}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


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
        "stages": [{"stage": s["stage"], "seconds": s["seconds"],
                    "max_abs_diff": (s["parity"] or {}).get("max_abs_diff"),
                    "min_cosine": (s["parity"] or {}).get("min_cosine")}
                   for s in manifest["stages"]],
        "size_bytes": sum(f["size"] for f in manifest["files"]),
    }
