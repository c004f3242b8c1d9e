"""A content-addressed build cache: a bundle is stored under the sha256 of everything that
decides its bytes, so a changed input rebuilds exactly the cells it touches.

The key covers the model's bytes (file, weights, external data), the resolved target and
profile, the calibration / evaluation / fine-tuning data, the `--input` specs, and the tools:
installed versions plus a hash of edgepipe's own source, so an edited checkout never serves
a bundle an older edgepipe built. Writes are atomic: a worker builds in a private folder and
renames it into place; when two workers build one key, the first rename wins and the other
discards its copy, so a reader never sees a half-written bundle. The cache may sit on a shared
mount, so a hit is verified against its manifest before it is reused; an entry that fails is
evicted and rebuilt, never shipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import edgepipe
from edgepipe.runtime import strict_json

_TOOL_DISTRIBUTIONS = ("numpy", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "torch", "openvino", "nncf",
                       "torch-pruning", "tensorrt")
_CHUNK = 1 << 20


def _hash_file(digest, path: Path) -> None:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)


def data_fingerprint(spec: str | None) -> str | None:
    """sha256 of a data argument: a file's bytes, a folder's names and bytes, or the spec itself
    ('random', or `file.py:fn` whose source is hashed with the spec)."""
    if spec is None or spec == "random":
        return spec
    file_part = spec.split(":", 1)[0]
    path = Path(file_part)
    digest = hashlib.sha256(spec.encode())
    if path.is_file():
        _hash_file(digest, path)
    elif path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(child.relative_to(path).as_posix().encode() + b"\0")
            _hash_file(digest, child)
    else:
        return f"missing:{spec}"  # the build reports it; the key just has to differ
    return digest.hexdigest()


def model_fingerprint(model: str, weights: str | None) -> str:
    """The model file (plus ONNX external data beside it, plus weights); a `file.py:factory`'s
    file is hashed, not the modules it imports: keep factories self-contained or bump the file."""
    file_part = model.split(":", 1)[0] if not Path(model).is_file() else model
    digest = hashlib.sha256(model.encode())
    path = Path(file_part)
    if path.is_file():
        _hash_file(digest, path)
        for companion in sorted(path.parent.glob(f"{path.name}.data")):
            _hash_file(digest, companion)
    if weights:
        digest.update(data_fingerprint(weights).encode())
    return digest.hexdigest()


def tool_fingerprint() -> dict[str, str]:
    versions = {}
    for name in _TOOL_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    digest = hashlib.sha256()
    package = Path(edgepipe.__file__).parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        _hash_file(digest, source)
    versions["edgepipe"] = f"{edgepipe.__version__}+{digest.hexdigest()[:16]}"
    return versions


def cache_key(*, model: str, weights: str | None, inputs: list[str], target: dict[str, Any],
              profile: dict[str, Any], calib: str | None, eval_data: str | None, train: str | None,
              tools: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """(key, what it was computed from) — the second goes into the cell for `why did this rebuild`."""
    parts = {"model": model_fingerprint(model, weights), "inputs": sorted(inputs), "target": target,
             "profile": profile, "calib": data_fingerprint(calib), "eval": data_fingerprint(eval_data),
             "train": data_fingerprint(train), "tools": tools}
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest(), parts


@dataclass(frozen=True)
class BuildCache:
    root: Path

    def entry(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key

    def bundle(self, key: str) -> Path:
        return self.entry(key) / "bundle"

    def lookup(self, key: str) -> Path | None:
        """The cached bundle, if a complete one is there (its record is written before publishing)."""
        entry = self.entry(key)
        return entry / "bundle" if (entry / "record.json").is_file() else None

    def check(self, key: str) -> tuple[Path | None, str | None]:
        """(the cached bundle if it is complete and every file matches its manifest, why an entry
        that was there did not). A failing entry is moved aside and deleted, so it is rebuilt."""
        from edgepipe.errors import EdgepipeError
        from edgepipe.manifest import verify_bundle

        found = self.lookup(key)
        if found is None:
            return None, None
        try:
            problems = verify_bundle(found)
        except EdgepipeError as exc:
            problems = [str(exc)]
        if not problems:
            return found, None
        entry = self.entry(key)
        doomed = self.root / "tmp" / f"evicted-{key[:16]}-{uuid.uuid4().hex[:8]}"
        doomed.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(entry, doomed)  # atomic: no reader sees a half-deleted entry
        except FileNotFoundError:  # another worker evicted it first
            return None, f"cached bundle failed verification ({problems[0]}); rebuilt"
        shutil.rmtree(doomed, ignore_errors=True)
        return None, f"cached bundle failed verification ({problems[0]}); rebuilt"

    def workspace(self, key: str) -> Path:
        """A private folder to build in, on the cache's file system so publishing is a rename."""
        folder = self.root / "tmp" / f"{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return folder

    def publish(self, key: str, workspace: Path, record: dict[str, Any]) -> tuple[Path, bool]:
        """Move a finished build into place; (bundle, True) if this call placed it, (bundle, False)
        if another worker had already published the same key (ours is discarded)."""
        (workspace / "record.json").write_text(strict_json.dumps(record, indent=2) + "\n", encoding="utf-8")
        entry = self.entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(workspace, entry)  # atomic; fails if the entry exists (non-empty directory)
            return entry / "bundle", True
        except OSError:
            if self.lookup(key) is None:
                raise
            shutil.rmtree(workspace, ignore_errors=True)
            return entry / "bundle", False

    def record(self, key: str) -> dict[str, Any]:
        return json.loads((self.entry(key) / "record.json").read_text(encoding="utf-8"))
