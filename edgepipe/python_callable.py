"""Import `file.py:function` specs: model factories, calibration generators, metrics.

The user names their own file on the command line, so running it is expected;
a file that fails to import gets a one-line error naming the spec.
"""

from __future__ import annotations

import functools
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
    except (Exception, SystemExit) as exc:  # sys.exit() in user code must not end the build "successfully"
        sys.modules.pop(module_name, None)
        raise BadInputError(f"{file} raised {_describe(exc)} on import") from None
    found = getattr(module, function, None)
    if not callable(found):
        raise BadInputError(f"{file}: has no function '{function}'")
    return guarded(spec, found)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit (sys.exit({exc.code!r}))"
    return f"{type(exc).__name__}: {first_line(exc)}"


def user_error(spec: str, exc: BaseException, doing: str = "") -> BadInputError:
    """A user's callable failed: one line naming it and what it raised (SystemExit included: a
    CI job must not pass because a factory called sys.exit(0))."""
    return BadInputError(f"{spec} raised {_describe(exc)}{doing}")


def guarded(spec: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, with whatever it raises (SystemExit too) turned into a one-line error naming
    `spec`; errors of ours it raises pass through."""
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except EdgepipeError:
            raise
        except (Exception, SystemExit) as exc:
            raise user_error(spec, exc) from None

    return call
