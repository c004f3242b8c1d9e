"""Import `file.py:function` specs: model factories, calibration generators, metrics.

The user names their own file on the command line, so running it is expected;
a file that fails to import gets a one-line error naming the spec.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepipe.errors import BadInputError, EdgepipeError, first_line


def split_spec(spec: str) -> tuple[Path, str] | None:
    """(file, function) for `file.py:function`, else None."""
    file_part, _, function = spec.rpartition(":")
    if file_part.endswith(".py") and function:
        return Path(file_part), function
    return None


def load_python_callable(spec: str) -> Callable[..., Any]:
    """The named function; its module stays importable by name while it runs."""
    parts = split_spec(spec)
    if parts is None:
        raise BadInputError(f"{spec}: expected file.py:function")
    file, function = parts
    if not file.is_file():
        raise BadInputError(f"{file}: no such file")
    module_name = f"_edgepipe_user_{hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]}"
    import_spec = importlib.util.spec_from_file_location(module_name, file)
    if import_spec is None or import_spec.loader is None:
        raise BadInputError(f"{file}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(import_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        import_spec.loader.exec_module(module)
    except EdgepipeError:
        raise
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise BadInputError(f"{file} raised {type(exc).__name__} on import: {first_line(exc)}") from None
    found = getattr(module, function, None)
    if not callable(found):
        raise BadInputError(f"{file}: has no function '{function}'")
    return found
