"""The CLI's contract: help, version, listings, and the core working with no extras installed."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

from edgepipe import __version__
from tests.conftest import RESNET18, ROOT, run_edgepipe


def test_version_and_help(cli):
    assert cli("--version").stdout.strip() == f"edgepipe {__version__}"
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("build", "inspect", "verify", "profile", "targets", "profiles"):
        assert command in result.stdout


def test_targets_lists_names_aliases_and_descriptions(cli):
    rows = json.loads(cli("targets", "--json").stdout)
    cpu = next(row for row in rows if row["name"] == "onnxruntime-cpu")
    assert "cpu" in cpu["aliases"]
    assert cpu["backend"] == "onnxruntime"
    assert cpu["description"]
    openvino = next(row for row in rows if row["name"] == "openvino-cpu")
    assert "x86" in openvino["aliases"] and "cpu (on x86_64/AMD64)" in openvino["aliases"]
    assert "onnxruntime-cpu" in cli("targets").stdout


def test_profiles_lists_default_and_fp32(cli):
    rows = {row["name"]: row for row in json.loads(cli("profiles", "--json").stdout)}
    assert {"default", "fp32"} <= set(rows)
    assert rows["default"]["stages"] == ["export", "fuse", "lower"]


def test_unknown_command_is_a_usage_error():
    result = run_edgepipe("frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# Blocks the optional heavy libraries the way a core-only install lacks them.
_WITHOUT_EXTRAS = textwrap.dedent("""
    import sys
    for name in ("torch", "openvino", "nncf", "tensorrt", "tensorflow", "ray"):
        sys.modules[name] = None
    sys.argv = ["edgepipe", *sys.argv[1:]]
    from edgepipe.cli import main
    main()
""")


def _edgepipe_without_extras(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _WITHOUT_EXTRAS, *args], capture_output=True,
                          text=True, cwd=ROOT, check=False, timeout=120)


def test_core_runs_without_extras():
    assert _edgepipe_without_extras("--help").returncode == 0
    listing = _edgepipe_without_extras("targets")
    assert listing.returncode == 0, listing.stderr


def test_matrix_without_ray_names_the_extra(tmp_path, digits_onnx):
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(f'targets = ["onnxruntime-cpu"]\nprofiles = ["fp32"]\ncache = "c"\n'
                      f'[[models]]\nname = "d"\nmodel = "{digits_onnx}"\n')
    result = _edgepipe_without_extras("matrix", str(matrix), "--out", str(tmp_path / "r"))
    assert result.returncode == 3
    assert "pip install 'edgepipe[matrix]'" in result.stderr and "Traceback" not in result.stderr


def test_torch_model_without_torch_names_the_extra():
    result = _edgepipe_without_extras("build", RESNET18, "--target", "onnxruntime-cpu",
                                      "--out", "/tmp/never-written")
    assert result.returncode == 3
    assert "pip install 'edgepipe[torch]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_default_cpu_target_without_openvino_names_the_extra_and_the_way_around():
    result = _edgepipe_without_extras("build", RESNET18, "--out", "/tmp/never-written")
    assert result.returncode == 3
    if platform.machine() in ("x86_64", "AMD64"):
        assert "pip install 'edgepipe[openvino]'" in result.stderr
        assert "--target onnxruntime-cpu needs no extra" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_importing_the_api_loads_no_heavy_library():
    code = ("import sys, edgepipe.api, edgepipe.cli; "
            "print(sorted(m for m in ('torch', 'openvino', 'tensorrt', 'tensorflow', 'ray') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_an_onnx_model_builds_with_the_core_alone(tmp_path, digits_onnx):
    """No extra installed: ONNX in, fused and lowered for ONNX Runtime."""
    result = _edgepipe_without_extras("build", digits_onnx, "--target", "onnxruntime-cpu",
                                      "--out", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    stages = [s["stage"] for s in json.loads((tmp_path / "b" / "manifest.json").read_text())["stages"]]
    assert stages == ["export", "fuse", "lower"]
