"""Write outputs beside their final place and move them there only on success.

After any failure (bad model, gate failure, Ctrl-C, full disk) the output path
holds the previous bundle or nothing; never a half-written one.
"""

from __future__ import annotations

import contextlib
import errno
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


def _is_bundle(path: Path) -> bool:
    import json

    from edgepipe.runtime.bundle import SCHEMA

    try:
        return json.loads((path / "manifest.json").read_text(encoding="utf-8")).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def _is_ours(path: Path) -> bool:
    return (path / "manifest.json").is_file() or (path / BUILD_MARKER).is_file()


def check_output(out: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse early what publishing would refuse late (an existing output, an unwritable place)
    and what it must never do: write into another bundle or its build folder, replace the folder
    a user works in, or replace a folder holding the build's own inputs (the model, its data)."""
    where = out.absolute()
    if not out.name or out.name in (".", "..") or where == Path.cwd() or where in Path.cwd().parents:
        raise BadInputError(f"--out {str(out) or repr('')}: give a new folder for the bundle, not the "
                            "current folder or one above it")
    for parent in where.parents:
        if (parent / BUILD_MARKER).is_file() or _is_bundle(parent):
            raise BadInputError(f"--out {out}: inside {parent}, which is an edgepipe bundle or build "
                                "folder; writing there would corrupt it")
    for source in inputs:
        held = source.absolute()
        for folder in (where, build_dir_for(where)):
            if held == folder or folder in held.parents:
                raise BadInputError(f"--out {out}: {folder} holds {source}, an input of this build; "
                                    "replacing it would destroy it")
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
def staging_area(out: Path, force: bool, inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """A temporary folder beside `out` (same file system, so the final move is a rename)."""
    check_output(out, force, inputs)
    parent = out.parent
    created = _missing_folders(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(out)
        # The pid in the name lets a later build tell a dead build's leftovers from a running one's.
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=parent))
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


def _remove_stale_staging(out: Path) -> None:
    """Staging folders of builds that were killed (SIGKILL, power loss) and so never cleaned up."""
    for folder in out.parent.glob(f".{out.name}.*.tmp"):
        pid_text = folder.name[len(out.name) + 2:].split(".", 1)[0]
        ours = any(folder.glob(f"*/{BUILD_MARKER}"))  # build/ or previous-NAME.build/
        if not pid_text.isdigit() or not ours:
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # that build is still running
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            continue  # alive, someone else's


def _exchange(source: Path, destination: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported.

    Written by hand because os.rename cannot swap and no maintained package wraps
    renameat2: with it there is no instant at which the bundle path is missing.
    """
    import ctypes
    import ctypes.util

    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(destination), rename_exchange) == 0


def publish(staging: Path, out: Path, force: bool) -> None:
    """Move the staged bundle and intermediates into place, replacing earlier ones with `force`.

    An existing bundle is swapped with the new one atomically where the OS can (the old
    one lands in the staging folder, which is then removed), else moved aside first.
    Without `force`, a bundle that appeared while this one was building (another build to
    the same new --out) wins: the rename refuses a non-empty folder, and this build says so.
    """
    if not force:
        try:
            os.rename(staging / "bundle", out)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
            raise BadInputError(f"{out} appeared while this build ran (another build to the same --out?): "
                                "pass --force to replace it") from None
        os.rename(staging / "build", build_dir_for(out))
        return
    check_output(out, force=True)
    for source, destination in ((staging / "bundle", out), (staging / "build", build_dir_for(out))):
        if destination.exists():
            if _exchange(source, destination):
                os.rename(source, staging / f"previous-{destination.name}")
                continue
            os.rename(destination, staging / f"previous-{destination.name}")
        os.rename(source, destination)
