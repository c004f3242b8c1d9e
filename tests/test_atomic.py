"""The output path holds a complete bundle or nothing: existing outputs, --force, failures, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from edgepipe.manifest import verify_bundle
from tests.conftest import DIGITS, RESNET18, ROOT, assert_one_line_error


def test_existing_output_needs_force(cli, tmp_path, digits_onnx):
    out = tmp_path / "b"
    assert cli("build", digits_onnx, "--out", out).exit_code == 0
    again = cli("build", digits_onnx, "--out", out)
    assert again.exit_code == 2
    assert_one_line_error(again.stderr, "already exists", "--force")
    forced = cli("build", digits_onnx, "--out", out, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert verify_bundle(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.build"]  # no staging left


def test_failed_rebuild_keeps_the_previous_bundle(cli, tmp_path, digits_onnx):
    out = tmp_path / "b"
    assert cli("build", digits_onnx, "--out", out).exit_code == 0
    before = json.loads((out / "manifest.json").read_text())
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(digits_onnx.read_bytes()[:500])
    result = cli("build", broken, "--out", out, "--force")
    assert result.exit_code == 2
    assert json.loads((out / "manifest.json").read_text()) == before
    assert verify_bundle(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.build", "broken.onnx"]


def test_force_never_replaces_a_folder_that_is_not_a_bundle(cli, tmp_path, digits_onnx):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = cli("build", digits_onnx, "--out", precious, "--force")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "refusing to replace", "not an edgepipe bundle")
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_interrupt_in_the_middle_leaves_nothing(tmp_path):
    out = tmp_path / "resnet18-cpu"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgepipe", "build", RESNET18, "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".resnet18-cpu.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # well inside loading or exporting
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert list(tmp_path.iterdir()) == []


def test_killed_during_lower_the_previous_bundle_is_intact(tmp_path):
    """SIGKILL (no cleanup runs at all) while a --force rebuild is lowering."""
    out = tmp_path / "resnet18-cpu"
    first = subprocess.run([sys.executable, "-m", "edgepipe", "build", RESNET18, "--target",
                            "onnxruntime-cpu", "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    before = (out / "manifest.json").read_bytes()
    process = subprocess.Popen(
        [sys.executable, "-m", "edgepipe", "build", RESNET18, "--target", "onnxruntime-cpu", "--force",
         "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:  # a stage line is printed when the stage is done
        if "fuse" in line:
            break  # lowering has started
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL
    assert (out / "manifest.json").read_bytes() == before
    assert verify_bundle(out) == []
    stale = list(tmp_path.glob(".resnet18-cpu.*.tmp"))
    assert len(stale) == 1  # SIGKILL: nothing could clean up
    again = subprocess.run([sys.executable, "-m", "edgepipe", "build", DIGITS, "--target",
                            "onnxruntime-cpu", "--force", "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert not list(tmp_path.glob(".resnet18-cpu.*.tmp"))  # the dead build's leftovers are gone
    assert verify_bundle(out) == [] and (out / "manifest.json").read_bytes() != before


def test_publish_swaps_an_existing_bundle_in_one_step(tmp_path):
    from edgepipe.staging import _exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "new").write_text("new")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old").write_text("old")
    if not _exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert (tmp_path / "b" / "new").is_file() and (tmp_path / "a" / "old").is_file()
