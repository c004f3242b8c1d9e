"""Property tests: mangled models and configuration files never crash edgepipe.

Bounded (a fixed number of examples, no deadline per example) so CI time stays flat.
The property: an exit code of 0, 2 or 3 (never 1 from a crash, never a traceback),
a one-line error, and no bundle left behind on failure.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgepipe.config import load_target_file  # noqa: E402
from edgepipe.errors import BadInputError  # noqa: E402
from edgepipe.profiles import load_profile_file  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus" / "files"
GOOD = (CORPUS / "good.onnx").read_bytes()
ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def mangled_models(draw) -> bytes:
    data = bytearray(GOOD)
    how = draw(st.sampled_from(["truncate", "flip", "splice", "random"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "random":
        return draw(st.binary(min_size=0, max_size=600))
    for _ in range(draw(st.integers(1, 8))):
        index = draw(st.integers(0, len(data) - 1))
        if how == "flip":
            data[index] ^= draw(st.integers(1, 255))
        else:
            data[index:index] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@FUZZ
@given(model=mangled_models())
def test_mangled_onnx_never_crashes(cli, tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "m.onnx").write_bytes(model)
    out = folder / "out" / "bundle"
    result = cli("build", folder / "m.onnx", "--target", "onnxruntime-cpu", "--out", out)
    assert result.exit_code in (0, 2, 3), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    if result.exit_code:
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ")
        assert not (folder / "out").exists()


def _mutations(text: str):
    lines = text.splitlines()
    return st.one_of(
        st.builds(lambda i, junk: "\n".join([*lines[:i], junk, *lines[i:]]),
                  st.integers(0, len(lines)), st.text(max_size=40)),
        st.builds(lambda i: "\n".join(lines[:i] + lines[i + 1:]), st.integers(0, len(lines) - 1)),
        st.builds(lambda i, j: text[:i] + text[j:], st.integers(0, len(text)), st.integers(0, len(text))),
        st.builds(lambda key, value: text + f"\n{key} = {value}\n",
                  st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                  st.sampled_from(["1", "-1", "\"x\"", "[]", "{}", "true", "1e999", "[[1]]", "\"\""])),
    )


PROFILE = (ROOT / "profiles" / "pruned.toml").read_text()  # nested tables, lists, inline tables
TARGET = (ROOT / "targets" / "openvino-cpu.toml").read_text()


def _loads_or_refuses(load, path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    try:
        load(path)
    except BadInputError as exc:
        assert "\n" not in str(exc).strip()


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_mutations(PROFILE))
def test_mangled_profiles_load_or_are_refused_in_one_line(tmp_path, text):
    _loads_or_refuses(load_profile_file, tmp_path / "p.toml", text)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_mutations(TARGET))
def test_mangled_targets_load_or_are_refused_in_one_line(tmp_path, text):
    pytest.importorskip("openvino")
    _loads_or_refuses(load_target_file, tmp_path / "t.toml", text)


def test_the_fuzzed_profile_text_is_valid_to_begin_with():
    assert tomllib.loads(PROFILE)["name"] == "pruned"
