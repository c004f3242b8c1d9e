#!/usr/bin/env python3
"""Run, time or verify this edgepipe bundle on the device: `python3 run.py --help`.

Needs numpy and the backend's runtime only; the code is the bundle's edgepipe_runtime/ folder.
"""
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # a __pycache__ would be a file the manifest does not list
sys.path.insert(0, str(Path(__file__).resolve().parent))
from edgepipe_runtime.cli import main  # noqa: E402

sys.exit(main(default_bundle=Path(__file__).resolve().parent))
