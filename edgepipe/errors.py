"""Errors that reach the user as one line and an exit code (DESIGN.md section 6).

Every failure a user can cause or fix is raised as one of these; anything else
is a bug and is reported as an internal error. The classes live in the device
runtime (`edgepipe.runtime.errors`), so host and bundle raise the same ones.
"""

from __future__ import annotations

from edgepipe.runtime.errors import BackendError, BadInputError, EdgepipeError, GateFailedError, first_line

__all__ = ["BackendError", "BadInputError", "EdgepipeError", "GateFailedError", "MissingExtraError",
           "first_line"]


class MissingExtraError(BackendError):
    """An optional dependency group is not installed."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs '{module}', which is not installed: "
            f"pip install 'edgepipe[{extra}]'"
        )
        self.module = module
        self.extra = extra
