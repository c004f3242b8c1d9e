"""The shape of the code, checked: no import cycles, a device runtime that stands alone and ships
byte for byte, host and device running a bundle with the same runner and settings, and every
lossy route held to its budget by the pipeline."""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import DIGITS
from tests.test_run_py import run_on_device

PACKAGE = Path(__file__).resolve().parent.parent / "edgepipe"
RUNTIME = PACKAGE / "runtime"
# What the device runtime may import besides the standard library and numpy: each backend's own
# runtime and the optional helpers, all inside functions so a device needs only its own.
RUNTIME_OPTIONAL = {"onnxruntime", "openvino", "tensorrt", "ai_edge_litert", "tflite_runtime", "tensorflow",
                    "cryptography", "PIL", "pynvml"}


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _imports(path: Path, name: str, is_package: bool) -> list[tuple[ast.stmt, str, bool]]:
    """(statement, absolute module, at module level) for every import, in functions too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found += [(node, f"{module}.{alias.name}", id(node) in top) for alias in node.names]
            found.append((node, module, id(node) in top))
    return found


def import_graph() -> dict[str, set[str]]:
    """edgepipe module -> the edgepipe modules it imports, at module level or inside functions."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    names = {name for name, _ in modules}
    graph = {}
    for (name, is_package), path in modules.items():
        targets = {module for _, module, _ in _imports(path, name, is_package) if module in names}
        graph[name] = targets - {name}
    return graph


def test_no_import_cycle_among_edgepipe_modules():
    graph = import_graph()
    assert "edgepipe.stages.quantize" in graph["edgepipe.stages"]  # the walker sees real edges
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_config_and_data_sit_below_the_stages():
    graph = import_graph()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        return seen

    below = ("edgepipe.config", "edgepipe.data.samples", "edgepipe.data.evaluation", "edgepipe.scoring")
    for module in below:
        assert not {m for m in reaches(module) if m.startswith("edgepipe.stages")}, module


def test_device_runtime_imports_only_stdlib_numpy_and_backend_runtimes():
    for path in sorted(RUNTIME.rglob("*.py")):
        name, is_package = _module_name(path)
        for node, module, top_level in _imports(path, name, is_package):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue  # inside the runtime package: shipped with it
            root = module.split(".")[0]
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            assert root != "edgepipe", f"{where}: absolute edgepipe import in the device runtime"
            if root in sys.stdlib_module_names or root in ("numpy", "__future__"):
                continue
            assert root in RUNTIME_OPTIONAL, f"{where}: the device runtime imports {module}"
            assert not top_level, f"{where}: {module} must be imported where it is used"


def test_bundle_ships_the_runtime_byte_for_byte(digits_bundle):
    from edgepipe.bundle import RUNTIME_SOURCE, runtime_files

    shipped = digits_bundle / "edgepipe_runtime"
    files = {p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file()}
    assert files == set(runtime_files()) and files
    for relative in files:
        assert (shipped / relative).read_bytes() == (RUNTIME_SOURCE / relative).read_bytes(), relative
    launcher = (digits_bundle / "run.py").read_text()
    assert len(launcher.splitlines()) < 20 and "edgepipe_runtime.cli" in launcher


def test_profile_runs_the_installed_runtime_never_the_bundles_copy(cli, tmp_path, digits_bundle):
    import shutil

    bundle = tmp_path / "flashed"
    shutil.copytree(digits_bundle, bundle)
    marker = tmp_path / "ran"
    # A bundle whose runtime was swapped for code that leaves a marker (manifest updated to match).
    hostile = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
    for name in ("cli.py", "benchmark.py"):
        module = bundle / "edgepipe_runtime" / name
        module.write_text(hostile + module.read_text())
    from edgepipe.manifest import file_entries, write_json

    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = file_entries(bundle)
    write_json(bundle / "manifest.json", manifest)
    assert cli("verify", bundle).exit_code == 0
    result = cli("profile", bundle, "--runs", "3", "--warmup", "0", "--out", tmp_path / "p.json")
    assert result.exit_code == 0, result.stderr
    assert not marker.exists()


def _same_settings(out: Path) -> tuple[dict, dict]:
    """(what the build's parity check ran the deployed artifact with, what run.py runs it with)."""
    from edgepipe.manifest import full_manifest

    manifest = full_manifest(out)  # how the build host ran it is in <bundle>.build/build.json
    host = next(s for s in manifest["stages"] if s["stage"] == "lower")["runner"]
    device = run_on_device(out, "--benchmark", "--runs", "2", "--warmup", "0", "--json")
    assert device.returncode == 0, device.stderr
    return host, json.loads(device.stdout)["runtime"]


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "openvino-cpu"])
def test_parity_and_device_run_the_same_runner_with_the_same_settings(cli, tmp_path, target):
    out = tmp_path / "b"
    assert cli("build", DIGITS, "--target", target, "--out", out).exit_code == 0
    host, device = _same_settings(out)
    assert host["name"] == {"onnxruntime-cpu": "onnxruntime", "openvino-cpu": "openvino"}[target]
    assert host == device


def test_tflite_parity_and_device_run_the_same_settings(cli, tmp_path):
    pytest.importorskip("ai_edge_litert")
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--target", "mobile", "--out", out)
    assert result.exit_code == 0, result.stderr
    host, device = _same_settings(out)
    assert host["xnnpack"] is True and host == device


def test_runtime_settings_map_to_session_options_in_one_place():
    """Nothing outside the runtime creates ONNX Runtime sessions or OpenVINO compile configs."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if RUNTIME in path.parents:
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("SessionOptions(", "InferenceSession(", "compile_model(", "Interpreter("):
            if needle in text and f"def {needle}" not in text:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}: {needle}")
    # Both call the runtime's compile_model, which alone maps [runtime] to OpenVINO's config.
    allowed = {"edgepipe/backends/openvino.py: compile_model(", "edgepipe/layer_diff.py: compile_model("}
    assert set(offenders) <= allowed, offenders


def _over_budget_profile(tmp_path: Path, engine: str, **budget: object) -> Path:
    lines = [f"{key} = {json.dumps(value)}" for key, value in budget.items()]
    path = tmp_path / f"int8-{engine}.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "strict-{engine}"
        description = "int8 by {engine} with a budget it cannot keep"
        extends = "int8"
        [quantize]
        engine = "{engine}"
        [quantize.budget]
        """) + "\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("engine", "target", "budget"), [
    ("onnxruntime", "onnxruntime-cpu", {"min_cosine": 0.999999, "max_fallback": 1}),
    ("nncf", "onnxruntime-cpu", {"min_cosine": 0.999999, "max_fallback": 1}),
    # NNCF's accuracy control meets the top-1 budget; nothing after it may skip min_cosine.
    ("nncf-openvino", "openvino-cpu", {"min_cosine": 0.999999, "max_top1_drop": 100.0}),
])
def test_every_int8_engine_is_held_to_its_budget(cli, tmp_path, trained_digits, engine, target, budget):
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--min-speedup", "0",
                 "--weights", trained_digits["weights"], "--target", target,
                 "--profile", _over_budget_profile(tmp_path, engine, **budget),
                 "--calib", trained_digits["test"], "--eval", trained_digits["test"], "--out", out)
    assert result.exit_code == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "int8 quantization exceeds the budget" in last and "mean cosine vs float" in last, last
    assert not out.exists() and not list(tmp_path.glob(".b*"))


@pytest.mark.slow
def test_litert_int8_is_held_to_its_budget(cli, tmp_path, trained_digits):
    pytest.importorskip("ai_edge_litert")
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", "mobile",
                 "--profile", _over_budget_profile(tmp_path, "litert", min_cosine=0.999999),
                 "--calib", trained_digits["test"], "--eval", trained_digits["test"], "--out", out)
    assert result.exit_code == 1, result.stderr
    assert "int8 quantization exceeds the budget" in result.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_structured_prune_is_held_to_its_budget(cli, tmp_path, trained_digits):
    profile = tmp_path / "strict-prune.toml"
    profile.write_text(textwrap.dedent("""\
        name = "strict-prune"
        description = "pruning with a budget it cannot keep"
        extends = "pruned"
        [prune]
        ratio = 0.5
        [prune.finetune]
        epochs = 0
        [prune.budget]
        min_cosine = 0.999999
        """))
    out = tmp_path / "b"
    result = cli("build", DIGITS,
                 "--weights", trained_digits["weights"], "--profile", profile,
                 "--calib", trained_digits["train"], "--eval", trained_digits["test"], "--out", out)
    assert result.exit_code == 1, result.stderr
    assert "pruning exceeds the budget (ratio 0.50)" in result.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_the_runner_cli_is_the_same_module_on_host_and_device(digits_bundle):
    """`python -m edgepipe.runtime` (the host's copy) and the bundle's run.py agree on a bundle."""
    host = subprocess.run([sys.executable, "-P", "-m", "edgepipe.runtime", "--bundle", str(digits_bundle),
                           "--json"], capture_output=True, text=True, check=False)
    device = run_on_device(digits_bundle, "--json")
    assert host.returncode == device.returncode == 0, host.stderr + device.stderr
    assert json.loads(host.stdout) == json.loads(device.stdout)
