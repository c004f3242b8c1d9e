"""Keep converters off the network.

onnx2tf fetches sample images from the internet (`download_test_image_data`) whenever a
model's only input looks like an RGB image: for its own output check during every
conversion, and as int8 calibration data when none is given. A build must never
download anything, and must never calibrate on someone else's pictures, so the
function is replaced by one returning our own samples, and any socket connection made
during a conversion fails the build with a one-line error.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from edgepipe.errors import BackendError


class NetworkUsed(BackendError):
    """A converter tried to reach the network during a build."""


@contextmanager
def network_blocked(tool: str) -> Iterator[None]:
    """Any connect() in this process fails with NetworkUsed until the block ends."""

    def refuse(*args: Any, **kwargs: Any):
        raise NetworkUsed(f"{tool} tried to reach the network during the build (refused: edgepipe "
                          "builds never download; give calibration data with --calib)")

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection)
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection = saved  # type: ignore


@contextmanager
def replaced(module: Any, name: str, value: Callable[..., Any]) -> Iterator[None]:
    """`module.name = value` for the duration (a library hook with no parameter for it)."""
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        with suppress(AttributeError):
            setattr(module, name, saved)
