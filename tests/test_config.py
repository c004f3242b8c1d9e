"""Targets and profiles: name and alias resolution, user files, strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepipe.config import load_target
from edgepipe.errors import BadInputError
from edgepipe.profiles import load_profile


def test_alias_cpu_is_openvino_on_x86_64_and_onnxruntime_elsewhere(monkeypatch):
    import platform

    for machine, expected in (("x86_64", "openvino-cpu"), ("AMD64", "openvino-cpu"),
                              ("aarch64", "onnxruntime-cpu"), ("arm64", "onnxruntime-cpu")):
        monkeypatch.setattr(platform, "machine", lambda machine=machine: machine)
        assert load_target("cpu").name == expected, machine
    assert load_target("x86").backend == "openvino"
    ort = load_target("onnxruntime-cpu")
    assert ort.backend == "onnxruntime" and ort.runtime.providers == ["CPUExecutionProvider"]


def test_default_profile_extends_fp32():
    profile = load_profile("default")
    assert profile.stages == ("export", "fuse", "lower")
    assert profile.stage_settings["export"].opset == 17
    assert profile.accuracy == load_profile("fp32").accuracy


def test_unknown_names_list_the_known_ones():
    with pytest.raises(BadInputError, match=r"unknown target 'tpu' \(known: .*cpu"):
        load_target("tpu")
    with pytest.raises(BadInputError, match=r"unknown profile 'int3' \(known: .*fp32"):
        load_profile("int3")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TARGET = '''
name = "mine"
description = "a user target"
backend = "onnxruntime"
[runtime]
threads = 2
'''


def test_user_target_file(tmp_path):
    target = load_target(str(_write(tmp_path / "mine.toml", TARGET)))
    assert target.name == "mine"
    assert target.runtime.threads == 2


@pytest.mark.parametrize(("text", "key"), [
    ("colour = 'blue'\n" + TARGET, "colour"),
    (TARGET + "threadz = 4\n", "runtime.threadz"),
    (TARGET.replace("[runtime]", "[lower]\nlevel = 'max'\n[runtime]"), "lower.level"),
    (TARGET + "[device]\nram = 4\n", "device.ram"),
])
def test_unknown_target_key_names_file_and_key(tmp_path, text, key):
    path = _write(tmp_path / "bad.toml", text)
    with pytest.raises(BadInputError) as error:
        load_target(str(path))
    assert str(path) in str(error.value)
    assert f"unknown key '{key}'" in str(error.value)


def test_wrong_value_type_and_unknown_backend(tmp_path):
    with pytest.raises(BadInputError, match=r"key 'runtime.threads'"):
        load_target(str(_write(tmp_path / "a.toml", TARGET.replace("2", "'two'"))))
    with pytest.raises(BadInputError, match=r"unknown backend 'coreml'"):
        load_target(str(_write(tmp_path / "b.toml", TARGET.replace("onnxruntime", "coreml"))))
    with pytest.raises(BadInputError, match=r"invalid TOML"):
        load_target(str(_write(tmp_path / "c.toml", "name = ")))


PROFILE = '''
name = "strict"
description = "fp32 with a tighter budget"
extends = "fp32"
[accuracy]
atol = 1e-5
'''


def test_user_profile_extends_a_builtin(tmp_path):
    profile = load_profile(str(_write(tmp_path / "strict.toml", PROFILE)))
    assert profile.name == "strict"
    assert profile.accuracy.atol == 1e-5
    assert profile.accuracy.min_cosine == load_profile("fp32").accuracy.min_cosine


@pytest.mark.parametrize(("text", "message"), [
    (PROFILE + "[export]\nopsett = 18\n", "unknown key 'export.opsett'"),
    (PROFILE + "[accuracy2]\n", "unknown key 'accuracy2'"),
    (PROFILE.replace("1e-5", "-1"), "key 'accuracy.atol'"),
    ("stages = ['export', 'shrink', 'lower']\n" + PROFILE, "unknown stage 'shrink'"),
    ("stages = ['lower']\n" + PROFILE, "first stage must be 'export'"),
])
def test_bad_profile_keys_are_named(tmp_path, text, message):
    path = _write(tmp_path / "bad.toml", text)
    with pytest.raises(BadInputError) as error:
        load_profile(str(path))
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_profile_extends_cycle_is_refused(tmp_path):
    _write(tmp_path / "a.toml", 'name="a"\ndescription="a"\nextends="b.toml"\n')
    _write(tmp_path / "b.toml", 'name="b"\ndescription="b"\nextends="a.toml"\n')
    with pytest.raises(BadInputError, match="cycle"):
        load_profile(str(tmp_path / "a.toml"))
