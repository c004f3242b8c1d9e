"""The bundle as data: its file names, its manifest, and whether the files on disk match it.

Host and device check a bundle with this one implementation. Nothing here imports or
runs a file from the bundle: paths in the manifest are names to hash, never code, and
any path that could reach outside the bundle folder is refused before it is opened.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import BadInputError

SCHEMA = "edgepipe.bundle/1"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"  # detached Ed25519 signature of manifest.json's exact bytes
NOT_LISTED = (MANIFEST_NAME, SIGNATURE_NAME)
RUNTIME_PACKAGE = "edgepipe_runtime"  # the folder this package is copied to inside a bundle


def load_manifest(bundle: Path) -> dict[str, Any]:
    """manifest.json, checked for what every reader relies on (schema, files, backend)."""
    path = bundle / MANIFEST_NAME
    if not bundle.is_dir():
        raise BadInputError(f"{bundle}: not a bundle folder")
    if not path.is_file():
        raise BadInputError(f"{bundle}: no {MANIFEST_NAME}; not an edgepipe bundle")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BadInputError(f"{path}: schema is not {SCHEMA}")
    files = manifest.get("files")
    if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)
            and isinstance(f.get("size"), int) for f in files):
        raise BadInputError(f"{path}: key 'files' must be a list of {{path, sha256, size}} entries")
    backend = manifest.get("backend")
    if not isinstance(backend, dict) or not isinstance(backend.get("name"), str) \
            or not isinstance(backend.get("artifact"), str):
        raise BadInputError(f"{path}: key 'backend' must name the backend and its artifact")
    engine = backend.get("engine", {})
    if not isinstance(engine, dict) or not _strings(engine.get("device_files", [])):
        raise BadInputError(f"{path}: key 'backend.engine' must be a table with a list of device_files")
    encryption = manifest.get("encryption", {})
    if not isinstance(encryption, dict) or not _strings(encryption.get("files", [])) \
            or (encryption and not isinstance(encryption.get("key_id"), str)):
        raise BadInputError(f"{path}: key 'encryption' must list the encrypted files and the key id")
    for key in ("inputs", "outputs"):
        specs = manifest.get(key)
        if not isinstance(specs, list) or not all(
                isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("dtype"), str)
                and isinstance(s.get("shape"), list) and isinstance(s.get("values", ""), str) for s in specs):
            raise BadInputError(f"{path}: key '{key}' must be a list of {{name, shape, dtype}} entries")
    for spec in manifest["inputs"]:
        ends = spec.get("shape_range")
        if ends is not None and not (isinstance(ends, dict) and all(
                isinstance(ends.get(end), list) and len(ends[end]) == len(spec["shape"])
                and all(isinstance(d, int) and not isinstance(d, bool) for d in ends[end])
                for end in ("min", "max"))):
            raise BadInputError(f"{path}: input '{spec['name']}': 'shape_range' must be {{min, max}} "
                                "shapes of the input's rank")
    return manifest


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def inside(bundle: Path, name: str) -> Path:
    """`bundle/name` for a relative POSIX path that stays inside the bundle; refused otherwise.

    edgepipe never writes other paths, so anything else is a tampered or hostile manifest.
    """
    parts = name.split("/") if isinstance(name, str) else [""]
    if (any(part in ("", ".", "..") for part in parts) or "\\" in name or name.startswith("~")
            or ":" in parts[0]):
        raise BadInputError(f"{MANIFEST_NAME}: path '{name}' is not a plain relative path inside the "
                            "bundle")
    path = bundle / PurePosixPath(name)
    root = bundle.resolve()
    try:
        path.resolve().relative_to(root)
    except ValueError:
        raise BadInputError(f"{MANIFEST_NAME}: '{name}' resolves outside the bundle") from None
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda h=handle: h.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry_problem(bundle: Path, entry: dict[str, Any]) -> str | None:
    try:
        path = inside(bundle, entry["path"])
    except BadInputError as exc:
        return str(exc).removeprefix(f"{MANIFEST_NAME}: ")
    try:
        mode = path.lstat().st_mode
    except OSError:
        return f"{entry['path']}: missing"
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        return f"{entry['path']}: {kind}"
    size = path.stat().st_size
    if size != entry["size"]:
        return f"{entry['path']}: size {size} bytes, manifest says {entry['size']}"
    if sha256_file(path) != entry["sha256"]:
        return f"{entry['path']}: sha256 differs from the manifest"
    return None


def verify_files(bundle: Path, manifest: dict[str, Any]) -> list[str]:
    """Every listed file present, regular and identical; nothing unlisted beside them (except what
    the manifest says the device itself writes: a TensorRT engine built there, its record)."""
    problems = []
    device_files = manifest["backend"].get("engine", {}).get("device_files", [])
    listed = set(device_files)
    for entry in manifest["files"]:
        listed.add(entry["path"])
        problem = _entry_problem(bundle, entry)
        if problem:
            problems.append(problem)
    for path in sorted(bundle.rglob("*")):
        name = path.relative_to(bundle).as_posix()
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            continue
        if name in NOT_LISTED or name in listed:
            if name in listed and name in device_files and not stat.S_ISREG(mode):
                problems.append(f"{name}: not a regular file")
            continue
        problems.append(f"{name}: not listed in the manifest")
    try:
        inside(bundle, manifest["backend"]["artifact"])
    except BadInputError as exc:
        problems.append(str(exc).removeprefix(f"{MANIFEST_NAME}: "))
    return problems
