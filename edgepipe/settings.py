"""Shared base for every typed settings block (targets, profiles, stages, backends).

Each block declares its schema as a pydantic model, so defaults, validation and
the listing of options come from one place; unknown keys are errors.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgepipe.errors import BadInputError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A settings block: unknown keys are rejected, values are immutable once loaded."""

    # allow_inf_nan: a budget of `atol = inf` or `nan` would quietly switch its check off.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def describe_validation_error(error: ValidationError, source: str, prefix: str = "") -> str:
    """Turn pydantic's multi-line report into one line naming the file and the key."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "")
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    if first["type"] == "missing":
        return f"{source}: missing key '{key}'"
    return f"{source}: key '{key}': {first['msg']}"


def validate_as(model: type[M], data: object, source: str, prefix: str = "") -> M:
    """Validate `data` as `model`, or raise a one-line BadInputError naming `source` and the key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadInputError(describe_validation_error(exc, source, prefix)) from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not UTF-8 text, so not a TOML file") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read: {exc.strerror}") from None
