"""The bad-input corpus (tests/corpus/): every malformed input gives its exit code and one line, no bundle."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = tomllib.loads((CORPUS / "cases.toml").read_text())["case"]


def test_the_corpus_is_complete():
    files = {p.relative_to(CORPUS / "files").as_posix() for p in (CORPUS / "files").rglob("*")
             if p.is_file() and not p.is_symlink()}
    covered = {case["file"] for case in CASES}
    assert len(CASES) >= 30
    assert covered <= files and files - covered <= {"good.onnx"}


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_bad_input(cli, tmp_path, case):
    out = tmp_path / "out" / "bundle"
    args = [a.replace("{f}", str(CORPUS / "files")) for a in case["args"]]
    if args[0] == "build":
        args += ["--out", str(out)]
    result = cli(*args)
    assert result.exit_code == case["exit"], result.stderr
    lines = result.stderr.strip().splitlines()
    # Only stage progress lines ("✓ export ...") may come before the one-line error.
    assert all(line.startswith("✓") for line in lines[:-1]), result.stderr
    assert_one_line_error(lines[-1], case["message"])
    assert not (tmp_path / "out").exists()
