"""Load profiles (`profiles/*.toml` or a user's file): `extends` resolved, each stage's table
checked by that stage's own settings model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepipe.config import Profile, ProfileFile, builtin_dir, looks_like_path
from edgepipe.errors import BadInputError
from edgepipe.settings import read_toml, validate_as
from edgepipe.stages import STAGES, validate_stage_order


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _profile_path(name: str) -> Path:
    if looks_like_path(name):
        return Path(name)
    path = builtin_dir("profiles") / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in builtin_dir("profiles").glob("*.toml"))
        raise BadInputError(f"unknown profile '{name}' (known: {', '.join(known)})")
    return path


MAX_EXTENDS_DEPTH = 32  # deeper than any real profile family; far below the recursion limit


def _resolved_profile_data(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        raise BadInputError(f"{path}: 'extends' forms a cycle")
    if len(seen) >= MAX_EXTENDS_DEPTH:
        raise BadInputError(f"{path}: 'extends' chain deeper than {MAX_EXTENDS_DEPTH} profiles")
    data = read_toml(path)
    extends = data.get("extends")
    if extends is None:
        return data
    names = [extends] if isinstance(extends, str) else extends
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise BadInputError(f"{path}: key 'extends': must be a profile name or path, or a list of them")
    merged: dict[str, Any] = {}
    for parent_name in names:  # later parents win, the file itself wins over all
        try:
            parent_path = _profile_path(parent_name)
        except BadInputError as exc:
            raise BadInputError(f"{path}: key 'extends': {exc}") from None
        if not parent_path.is_absolute() and looks_like_path(parent_name):
            parent_path = path.parent / parent_name
        if not parent_path.is_file():
            raise BadInputError(f"{path}: key 'extends': {parent_path}: no such file")
        parent = _resolved_profile_data(parent_path, (*seen, path.resolve()))
        for key in ("name", "description", "extends"):
            parent.pop(key, None)
        merged = _merge(merged, parent)
    return _merge(merged, data)


def load_profile_file(path: Path) -> Profile:
    data = _resolved_profile_data(path)
    stage_tables = {key: data.pop(key) for key in list(data) if key in STAGES}
    raw = validate_as(ProfileFile, data, str(path))
    unknown = [s for s in raw.stages if s not in STAGES]
    if unknown:
        raise BadInputError(
            f"{path}: key 'stages': unknown stage '{unknown[0]}' (known: {', '.join(STAGES)})"
        )
    problem = validate_stage_order(raw.stages)
    if problem:
        raise BadInputError(f"{path}: key 'stages': {problem}")
    for name, table in stage_tables.items():
        if not isinstance(table, dict):
            raise BadInputError(f"{path}: key '{name}': must be a table")
    stage_settings = {
        name: validate_as(STAGES[name].Settings, stage_tables.get(name, {}), str(path), name)
        for name in (*raw.stages, *(n for n in stage_tables if n not in raw.stages))
    }
    return Profile(
        name=raw.name,
        description=raw.description,
        stages=tuple(raw.stages),
        accuracy=raw.accuracy,
        stage_settings=stage_settings,
        source=path,
        candidates=tuple(raw.candidates),
        auto=raw.auto,
        detect=raw.detect,
    )


def load_profile(name: str) -> Profile:
    """Resolve a profile by name or path to a TOML file."""
    return load_profile_file(_profile_path(name))


def list_profiles() -> list[Profile]:
    return [load_profile_file(p) for p in sorted(builtin_dir("profiles").glob("*.toml"))]
