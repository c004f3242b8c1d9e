"""A non-editable install carries the targets, profiles and device runner."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_wheel_ships_targets_profiles_and_run_py(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("edgepipe-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for toml in list((ROOT / "targets").glob("*.toml")) + list((ROOT / "profiles").glob("*.toml")):
        assert f"edgepipe/_data/{toml.parent.name}/{toml.name}" in names
    assert "edgepipe/device/run.py" in names

    # Installed on its own (not the checkout), it finds its data inside the package.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    code = ("import edgepipe.config as c; print(c.builtin_dir('targets')); "
            "print(sorted(t.name for t in c.list_targets()))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, check=True)
    folder, names_line = shown.stdout.strip().splitlines()
    assert folder.startswith(str(site))
    assert "onnxruntime-cpu" in names_line
