"""The one family of errors host and device share: a one-line message and an exit code.

Defined here, in the runtime that ships in every bundle, so the bundle's run.py and
the host raise the same classes; `edgepipe.errors` re-exports them for the rest of
edgepipe (DESIGN.md section 6: 1 gate failed, 2 bad input, 3 backend or runtime).
"""

from __future__ import annotations


class EdgepipeError(Exception):
    """Base class: `str(error)` is the one-line message shown to the user."""

    exit_code: int = 2

    def __init__(self, message: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class GateFailedError(EdgepipeError):
    """The build ran but a gate failed (accuracy budget, regression threshold)."""

    exit_code = 1


class BadInputError(EdgepipeError):
    """Bad input or usage; the message names the file, the key or the shape."""

    exit_code = 2


class BackendError(EdgepipeError):
    """A backend or runtime is missing or failed."""

    exit_code = 3


def first_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's first line, for embedding in a one-line message."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]
