"""`edgepipe matrix`: builds as Ray tasks (a local instance, and a real `ray start --head`),
the content-addressed cache, failure isolation, and a fleet of boards over a real sshd."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edgepipe.matrix.cache import BuildCache
from edgepipe.matrix.orchestrate import _job
from edgepipe.matrix.spec import load_matrix
from edgepipe.matrix.tasks import build_cell
from tests.conftest import DIGITS, _free_port, run_edgepipe

pytest.importorskip("ray")


def int8_any_speed(folder: Path) -> str:
    """int8 without the speed gate: whether int8 pays on a tiny CNN varies with the host, and the
    matrix's caching, not int8's verdict, is under test."""
    path = folder / "int8-any-speed.toml"
    path.write_text('name = "int8-any-speed"\ndescription = "int8, speed not judged"\nextends = "int8"\n'
                    '[quantize.budget]\nmin_speedup = 0\n')
    return str(path)


def write_matrix(folder: Path, digits_onnx: Path, *, targets=("onnxruntime-cpu", "openvino-cpu"),
                 profiles=("fp32", "int8"), extra: str = "") -> Path:
    profiles = tuple(int8_any_speed(folder) if name == "int8" else name for name in profiles)
    rng = np.random.default_rng(0)
    for name in ("calib-a.npz", "calib-b.npz"):
        if not (folder / name).exists():
            np.savez(folder / name, input=rng.standard_normal((24, 1, 8, 8)).astype(np.float32))
    path = folder / "matrix.toml"
    path.write_text(f"""
targets = {json.dumps(list(targets))}
profiles = {json.dumps(list(profiles))}
cache = "cache"
{extra}

[[models]]
name = "digits-torch"
model = "{DIGITS}"
calib = "calib-a.npz"

[[models]]
name = "digits-onnx"
model = "{digits_onnx}"
calib = "calib-b.npz"
""")
    return path


def run_matrix(path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = path.parent / "results"
    done = run_edgepipe("matrix", path, "--jobs", "2", "--out", out, *args)
    data = json.loads((out / "matrix.json").read_text()) if (out / "matrix.json").exists() else {}
    return done, data


def test_matrix_builds_every_cell_then_serves_all_from_the_cache(tmp_path, digits_onnx):
    path = write_matrix(tmp_path, digits_onnx)
    first, cold = run_matrix(path)
    assert first.returncode == 0, first.stderr
    assert [c["status"] for c in cold["cells"]] == ["built"] * 8
    assert cold["ray"]["address"] == "local" and cold["ray"]["cpus"] == 2
    for cell in cold["cells"]:
        assert Path(cell["bundle"], "manifest.json").is_file() and cell["size_bytes"] > 0
    second, warm = run_matrix(path)
    assert second.returncode == 0, second.stderr
    assert [c["status"] for c in warm["cells"]] == ["cached"] * 8
    assert warm["ray"] is None  # nothing to build and no boards: Ray is not even started
    assert [c["bundle"] for c in warm["cells"]] == [c["bundle"] for c in cold["cells"]]
    assert "8 cells: 0 built, 8 from the cache" in (tmp_path / "results" / "matrix.md").read_text()


def test_changed_calibration_data_rebuilds_only_the_cells_it_feeds(tmp_path, digits_onnx):
    path = write_matrix(tmp_path, digits_onnx, targets=("onnxruntime-cpu",))
    assert run_matrix(path)[0].returncode == 0
    data = np.load(tmp_path / "calib-b.npz")["input"]
    np.savez(tmp_path / "calib-b.npz", input=data[::-1].copy())  # same shape, other samples
    done, result = run_matrix(path)
    assert done.returncode == 0, done.stderr
    status = {(c["model"], c["profile"]): c["status"] for c in result["cells"]}
    int8 = int8_any_speed(tmp_path)
    assert status == {("digits-torch", "fp32"): "cached", ("digits-torch", int8): "cached",
                      ("digits-onnx", "fp32"): "built", ("digits-onnx", int8): "built"}


def test_a_bad_cell_fails_alone_with_its_exit_code(tmp_path, digits_onnx):
    path = write_matrix(tmp_path, digits_onnx, targets=("onnxruntime-cpu", "no-such-target"),
                        profiles=("fp32",))
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    path.write_text(path.read_text() + '\n[[models]]\nname = "broken"\nmodel = "broken.onnx"\n')
    done, result = run_matrix(path)
    assert done.returncode == 2
    by_cell = {(c["model"], c["target"]): c for c in result["cells"]}
    assert by_cell[("digits-torch", "onnxruntime-cpu")]["status"] == "built"
    assert by_cell[("digits-onnx", "onnxruntime-cpu")]["status"] == "built"
    assert by_cell[("broken", "onnxruntime-cpu")]["exit_code"] == 2
    assert "unknown target 'no-such-target'" in by_cell[("digits-torch", "no-such-target")]["error"]
    assert "Traceback" not in done.stderr


def test_concurrent_writers_of_one_key_leave_one_valid_bundle(tmp_path, digits_onnx):
    path = write_matrix(tmp_path, digits_onnx, targets=("onnxruntime-cpu",), profiles=("fp32",))
    matrix = load_matrix(path)
    cache = BuildCache(tmp_path / "cache")
    from edgepipe.matrix.cache import tool_fingerprint

    job = _job(matrix, matrix.cells[1], cache, tool_fingerprint())
    with ProcessPoolExecutor(3) as pool:
        results = list(pool.map(build_cell, [job] * 3))
    assert {r["bundle"] for r in results} == {str(cache.bundle(job["key"]))}
    assert sum(r["status"] == "built" for r in results) >= 1
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # the losers' copies are gone
    verified = run_edgepipe("verify", cache.bundle(job["key"]))
    assert verified.returncode == 0, verified.stderr
    assert cache.record(job["key"])["inputs"]["calib"] is not None


def test_matrix_joins_a_running_ray_cluster(tmp_path, digits_onnx):
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    port = _free_port()
    started = subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                             capture_output=True, text=True, check=False, timeout=180)
    if started.returncode != 0:
        pytest.fail(f"ray start failed: {started.stderr[-500:]}")
    # The head binds the machine's own address; `ray start` prints it for joining nodes.
    address = re.search(r"ray start --address='([^']+)'", started.stdout + started.stderr)[1]
    try:
        path = write_matrix(tmp_path, digits_onnx, targets=("onnxruntime-cpu",), profiles=("fp32",))
        out = tmp_path / "results"
        # `ray start` turns token authentication on; a client must ask for it (Ray's default is off).
        done = run_edgepipe("matrix", path, "--address", address, "--out", out,
                            env={"RAY_AUTH_MODE": "token"})
        assert done.returncode == 0, done.stderr
        result = json.loads((out / "matrix.json").read_text())
        assert result["ray"]["address"] == address and result["ray"]["nodes"] == 1
        assert [c["status"] for c in result["cells"]] == ["built", "built"]
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, check=False, timeout=120)


def test_fleet_profiles_one_job_per_board_and_marks_a_dead_board_unreachable(tmp_path, sshd, digits_onnx):
    path = write_matrix(tmp_path, digits_onnx, targets=("onnxruntime-cpu",),
                        extra='devices = "devices.toml"\n\n[profiling]\nruns = 6\nwarmup = 1\nretries = 1\n')
    options = [o for o in sshd["options"] if o.startswith(("UserKnownHostsFile", "StrictHostKeyChecking"))]
    (tmp_path / "devices.toml").write_text(f"""
[[devices]]
name = "board-a"
host = "{sshd['host']}"
port = {sshd['port']}
identity = "{sshd['folder'] / 'client_key'}"
ssh_options = {json.dumps(options)}
python = "{sys.executable}"
target = "cpu-portable"

[[devices]]
name = "board-b"
host = "{sshd['host']}"
port = {_free_port()}
identity = "{sshd['folder'] / 'client_key'}"
ssh_options = {json.dumps(options)}
target = "onnxruntime-cpu"
""".replace('"cpu-portable"', '"onnxruntime-cpu"'))
    done, result = run_matrix(path)
    assert done.returncode == 0, done.stderr  # an unreachable board is reported, not fatal
    jobs = [c["devices"]["board-a"] for c in result["cells"]]
    assert [j["status"] for j in jobs] == ["profiled"] * 4
    assert all(len(j["samples"]) >= 6 and Path(j["profile"]).is_file() for j in jobs)
    spans = sorted((j["started"], j["finished"]) for j in jobs)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    assert {c["devices"]["board-b"]["status"] for c in result["cells"]} == {"unreachable"}
    assert result["summary"]["unreachable_devices"] == ["board-b"]
    # The regression gate, cell by cell: the same matrix passes; one board clearly slower fails.
    # Every run is made slower than the baseline's slowest: a plain 1.6x of a few sub-0.1 ms
    # samples taken over ssh can overlap the baseline and is then rightly "inconclusive".
    results = tmp_path / "results" / "matrix.json"
    same = run_edgepipe("compare", results, results, "--json")
    assert same.returncode == 0, same.stderr
    slower = json.loads(results.read_text())
    entry = slower["cells"][0]["devices"]["board-a"]
    entry["samples"] = [s * 1.6 + max(entry["samples"]) for s in entry["samples"]]
    entry["rounds"] = [[s * 1.6 + max(entry["samples"]) for s in r] for r in entry["rounds"]]
    (tmp_path / "slower.json").write_text(json.dumps(slower))
    regressed = run_edgepipe("compare", results, tmp_path / "slower.json", "--json")
    assert regressed.returncode == 1, regressed.stdout
    verdicts = [r["verdict"] for r in json.loads(regressed.stdout)["rows"] if r["check"] == "latency@board-a"]
    assert verdicts.count("regression") == 1


def test_a_malformed_matrix_file_is_one_line(cli, tmp_path):
    from tests.conftest import assert_one_line_error

    path = tmp_path / "matrix.toml"
    path.write_text('targets = ["cpu"]\nprofiles = ["fp32"]\nmodles = []\n')
    result = cli("matrix", path, "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "matrix.toml")
    assert not (tmp_path / "r").exists()
