"""`--profile auto`: candidates built, timed on this host, the fastest within budget shipped."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import DIGITS


def _quick_auto(tmp_path: Path, candidates: str = '["fp32", "bf16", "fp16", "int8"]') -> Path:
    path = tmp_path / "auto-quick.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "auto-quick"
        description = "auto with short timing, for tests"
        candidates = {candidates}
        [auto]
        rounds = 1
        runs = 5
        warmup = 1
        """))
    return path


def test_auto_ships_the_fastest_candidate_within_budget(cli, tmp_path, trained_digits):
    pytest.importorskip("openvino")
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--min-speedup", "0",
                 "--weights", trained_digits["weights"], "--target", "openvino-cpu",
                 "--profile", _quick_auto(tmp_path), "--calib", trained_digits["test"], "--out", out)
    assert result.exit_code == 0, result.stderr
    from edgepipe.manifest import full_manifest

    manifest = full_manifest(out)  # the latencies are in <bundle>.build/build.json
    auto = manifest["auto"]
    rows = {row["profile"]: row for row in auto["candidates"]}
    assert set(rows) == {"fp32", "bf16", "fp16", "int8"}
    timed = {name: row["median_ms"] for name, row in rows.items() if row["status"] == "built"}
    assert {"fp32", "int8"} <= set(timed)
    assert auto["chosen"] == min(timed, key=timed.__getitem__)
    assert manifest["profile"]["name"] == auto["chosen"]  # the shipped bundle is that candidate's
    for name in ("bf16", "fp16"):
        assert rows[name]["status"] in ("built", "skipped")
        if rows[name]["status"] == "skipped":
            assert "cannot run" in rows[name]["reason"]
    assert "## Chosen by measurement" in (out / "report.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # candidates cleaned up


def test_auto_without_calibration_skips_int8_and_says_why(cli, tmp_path):
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--min-speedup", "0",
                 "--target", "onnxruntime-cpu", "--profile", _quick_auto(tmp_path),
                 "--out", out)
    assert result.exit_code == 0, result.stderr
    rows = {r["profile"]: r for r in json.loads((out / "manifest.json").read_text())["auto"]["candidates"]}
    assert rows["int8"]["status"] == "skipped" and "--calib" in rows["int8"]["reason"]
    assert rows["bf16"]["reason"] == "backend onnxruntime has no bf16"
    assert rows["fp32"]["status"] == "built"


def test_auto_with_nothing_shippable_fails_naming_each_reason(cli, tmp_path):
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--min-speedup", "0", "--target", "onnxruntime-cpu",
                 "--profile", _quick_auto(tmp_path, '["fp16", "int8"]'), "--out", out)
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "no candidate could be shipped" in last and "fp16:" in last and "int8:" in last
    assert not out.exists()
