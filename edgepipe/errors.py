"""Errors that reach the user as one line and an exit code (DESIGN.md section 5).

Every failure a user can cause or fix is raised as one of these; anything else
is a bug and is reported as an internal error.
"""

from __future__ import annotations


class EdgepipeError(Exception):
    """Base class: `str(error)` is the one-line message shown to the user."""

    exit_code: int = 2


class GateFailedError(EdgepipeError):
    """The build ran but a gate failed (accuracy budget, regression threshold)."""

    exit_code = 1


class BadInputError(EdgepipeError):
    """Bad input or usage; the message names the file, the key or the shape."""

    exit_code = 2


class BackendError(EdgepipeError):
    """A backend or runtime is missing or failed."""

    exit_code = 3


class MissingExtraError(BackendError):
    """An optional dependency group is not installed."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs '{module}', which is not installed: "
            f"pip install 'edgepipe[{extra}]'"
        )
        self.module = module
        self.extra = extra


def first_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's first line, for embedding in a one-line message."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]
