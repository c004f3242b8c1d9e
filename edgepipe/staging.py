"""Write outputs beside their final place and move them there only on success.

After any failure (bad model, gate failure, Ctrl-C, full disk) the output path
holds the previous bundle or nothing; never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgepipe.errors import BadInputError

BUILD_MARKER = ".edgepipe-build"


def build_dir_for(bundle: Path) -> Path:
    """Intermediates live beside the bundle, so the flashable folder holds only what runs."""
    return bundle.with_name(bundle.name + ".build")


def _is_ours(path: Path) -> bool:
    return (path / "manifest.json").is_file() or (path / BUILD_MARKER).is_file()


def check_output(out: Path, force: bool) -> None:
    """Refuse early what publishing would refuse late: an existing output, an unwritable place."""
    for path in (out, build_dir_for(out)):
        if not path.exists() and not path.is_symlink():
            continue
        if not force:
            raise BadInputError(f"{path} already exists: pass --force to replace it")
        if path.is_dir() and not _is_ours(path):
            raise BadInputError(f"refusing to replace {path}: it is not an edgepipe bundle")
        if not path.is_dir():
            raise BadInputError(f"refusing to replace {path}: it is not a folder")


@contextmanager
def staging_area(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder beside `out` (same file system, so the final move is a rename)."""
    check_output(out, force)
    parent = out.parent
    created = _missing_folders(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is not a folder" if blocker else (exc.strerror or str(exc))
        raise BadInputError(f"cannot write to {parent}: {reason}") from None
    (staging / "bundle").mkdir()
    (staging / "build").mkdir()
    (staging / "build" / BUILD_MARKER).write_text("intermediates of an edgepipe build\n")
    published = False
    try:
        yield staging
        published = not staging.joinpath("bundle").exists()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not published:
            for folder in created:  # deepest first; only the ones this build made
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _missing_folders(path: Path) -> list[Path]:
    """The folders `path.mkdir(parents=True)` would create, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def publish(staging: Path, out: Path) -> None:
    """Move the staged bundle and intermediates into place, replacing earlier ones."""
    check_output(out, force=True)
    for source, destination in ((staging / "bundle", out), (staging / "build", build_dir_for(out))):
        if destination.exists():
            os.rename(destination, staging / f"previous-{destination.name}")
        os.rename(source, destination)
