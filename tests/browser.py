"""Look at a page the way a person would: Debian's headless Chromium renders it to pixels.

An HTML report can be well-formed text and still show nothing (an SVG the browser refuses, a
plot drawn off-page, white on white); only a real browser's rendering says what a person sees.
`make browser` installs Debian's chromium where it can; without it these checks skip, saying why.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless Chromium (Debian's chromium package; `make browser` installs it as root)")


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-extensions", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def render(page: Path, screenshot: Path, width: int = 1200, height: int = 1600) -> np.ndarray:
    """The page as Chromium paints it: RGB pixels of a `width` x `height` window."""
    from PIL import Image

    done = _run([f"--window-size={width},{height}", f"--screenshot={screenshot}", page.resolve().as_uri()])
    assert screenshot.is_file(), f"chromium wrote no screenshot: {done.stderr[-2000:]}"
    with Image.open(screenshot) as image:
        return np.asarray(image.convert("RGB"))


def dom(page: Path) -> str:
    """The document Chromium built from the page (after parsing, as its DOM serialises it)."""
    done = _run(["--dump-dom", page.resolve().as_uri()])
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def pixels_near(image: np.ndarray, colour: str, tolerance: int = 40) -> int:
    """How many pixels are close to `colour` ('#4472c4'): a plotted line or bar of that colour."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int(np.sum(np.all(np.abs(image.astype(int) - rgb) <= tolerance, axis=-1)))
