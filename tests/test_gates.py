"""Gates a release pipeline can trust: the process as the statistical unit of `compare`, A/B runs
on one device, an honest `--profile auto`, exit codes that say what happened, strict JSON, and
fidelity checks beside a user's metric."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgepipe.compare import decide
from tests.conftest import DIGITS, assert_one_line_error
from tests.test_compare import _matmul_chain


def _rounds(medians: list[float], runs: int = 30, noise: float = 0.01, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [list(m * np.exp(rng.normal(0.0, noise, runs))) for m in medians]


def test_within_process_precision_does_not_fake_confidence():
    """Two profiles of the same bundle whose processes landed 12 % apart (thread placement, a
    neighbour): run against run the old test calls it a regression; rounds see the spread."""
    baseline = _rounds([1.00, 1.13, 0.98, 1.10, 1.02, 1.12], seed=1)
    new = _rounds([1.12, 1.14, 1.11, 1.13, 1.12, 1.15], seed=2)
    pooled = decide([x for r in baseline[:1] for x in r], [x for r in new for x in r])
    assert pooled.verdict == "regression" and pooled.unit == "run"  # the false alarm of one process
    by_process = decide(baseline, new)
    assert by_process.unit == "process" and by_process.rounds == (6, 6)
    assert by_process.verdict != "regression"


def test_a_real_slowdown_across_every_round_is_a_regression():
    baseline = _rounds([1.00, 1.03, 0.98, 1.02, 1.01, 0.99], seed=3)
    new = _rounds([1.21, 1.24, 1.20, 1.25, 1.22, 1.19], seed=4)
    decision = decide(baseline, new)
    assert decision.verdict == "regression" and decision.ci_low > 1.05 and decision.p_value < 0.01


def test_profiles_record_rounds_and_one_round_profiles_warn(cli, tmp_path, digits_bundle):
    for name, rounds in (("a", "1"), ("b", "1")):
        assert cli("profile", digits_bundle, "--runs", "20", "--rounds", rounds,
                   "--out", tmp_path / f"{name}.json").exit_code == 0
    result = cli("compare", tmp_path / "a.json", tmp_path / "b.json", "--json")
    data = json.loads(result.stdout)
    assert data["decision"]["unit"] == "run"
    assert any("one round per profile" in w for w in data["warnings"])


def _chain_bundles(cli, tmp_path: Path) -> tuple[Path, Path]:
    bundles = []
    for name, depth in (("fast", 4), ("slow", 32)):
        out = tmp_path / name
        assert cli("build", _matmul_chain(tmp_path / f"{name}.onnx", depth), "--target", "onnxruntime-cpu",
                   "--out", out).exit_code == 0
        bundles.append(out)
    return bundles[0], bundles[1]


def test_compare_run_times_both_bundles_interleaved(cli, tmp_path):
    fast, slow = _chain_bundles(cli, tmp_path)
    result = cli("compare", "--run", fast, slow, "--rounds", "6", "--runs", "60", "--threads", "1", "--json",
                 "--save", tmp_path / "ab")
    assert result.exit_code == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["decision"]["verdict"] == "regression" and data["decision"]["unit"] == "process pair"
    assert data["rounds"] == {"baseline": 6, "new": 6} and data["mode"] == "interleaved A/B"
    saved = json.loads((tmp_path / "ab" / "new.profile.json").read_text())
    assert len(saved["latency_ms"]["rounds"]) == 6
    same = cli("compare", "--run", fast, fast, "--rounds", "6", "--runs", "60", "--threads", "1", "--json")
    assert same.exit_code == 0 and json.loads(same.stdout)["decision"]["verdict"] != "regression"


def test_compare_run_over_ssh(cli, tmp_path, sshd):
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("edgepipe-profile-*"))
    fast, slow = _chain_bundles(cli, tmp_path)
    result = cli("compare", "--run", fast, slow, "--host", sshd["host"], *sshd["options"],
                 "--remote-python", sys.executable, "--rounds", "5", "--runs", "40", "--threads", "1",
                 "--json")
    assert result.exit_code == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["decision"]["verdict"] == "regression" and data["device"]["remote"] == sshd["host"]
    assert set(Path(tempfile.gettempdir()).glob("edgepipe-profile-*")) == before  # both copies removed


def test_compare_run_refuses_an_unsigned_bundle_before_timing(cli, tmp_path, digits_bundle):
    pytest.importorskip("cryptography")
    from edgepipe.signing import generate_keypair

    _, public = generate_keypair(tmp_path / "k")
    result = cli("compare", "--run", digits_bundle, digits_bundle, "--pubkey", public)
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "not signed")


def _auto(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "auto-test.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_auto_checks_the_output_before_building_anything(cli, tmp_path, monkeypatch):
    from edgepipe import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_stages", lambda *a, **k: calls.append(1))
    out = tmp_path / "b"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    profile = _auto(tmp_path, 'name = "a"\ndescription = "a"\ncandidates = ["fp32"]\n')
    result = cli("build", DIGITS, "--target", "onnxruntime-cpu", "--profile", profile, "--out", out)
    assert result.exit_code == 2 and not calls
    assert_one_line_error(result.stderr, "already exists", "--force")


def test_auto_ships_the_bundle_it_timed_and_never_one_over_budget(cli, tmp_path, trained_digits, monkeypatch):
    from edgepipe import api

    builds = []
    real = api.run_stages
    def counted(ctx, *args, **kwargs):
        builds.append(ctx.profile.name)
        return real(ctx, *args, **kwargs)

    monkeypatch.setattr(api, "run_stages", counted)
    strict_int8 = tmp_path / "int8-strict.toml"
    strict_int8.write_text('name = "int8-strict"\ndescription = "x"\nextends = "int8"\n'
                           '[quantize.budget]\nmin_cosine = 0.9999999\non_exceed = "fail"\n')
    profile = _auto(tmp_path, f"""\
        name = "auto-strict"
        description = "fp32 against an int8 whose budget cannot hold"
        candidates = ["fp32", "{strict_int8}"]
        [auto]
        rounds = 2
        runs = 10
        warmup = 1
        """)
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", "onnxruntime-cpu",
                 "--profile", profile, "--calib", trained_digits["test"], "--out", out)
    assert result.exit_code == 0, result.stderr
    assert sorted(builds) == ["fp32", "int8-strict"]  # each candidate built once: no rebuild to ship
    from edgepipe.manifest import full_manifest, verify_bundle

    manifest = full_manifest(out)
    rows = {row["profile"]: row for row in manifest["auto"]["candidates"]}
    assert rows[str(strict_int8)]["status"] == "over budget"
    assert manifest["auto"]["chosen"] == "fp32" and manifest["profile"]["name"] == "fp32"
    assert len(rows["fp32"]["round_medians_ms"]) == 2
    assert verify_bundle(out) == []


def test_an_unreadable_input_is_exit_2_naming_it(cli, tmp_path):
    folder = tmp_path / "weights-are-a-folder.pt"
    folder.mkdir()
    result = cli("build", DIGITS, "--weights", folder, "--target", "onnxruntime-cpu", "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert str(folder) in result.stderr.strip().splitlines()[-1]
    assert "cannot write the bundle" not in result.stderr


def test_a_stage_that_changes_an_output_shape_is_exit_1_naming_it():
    from edgepipe.config import AccuracyBudget
    from edgepipe.errors import GateFailedError
    from edgepipe.pipeline import _compare

    budget = AccuracyBudget()
    reference = [{"y": np.zeros((1, 10), np.float32)}]
    with pytest.raises(GateFailedError, match="stage 'fuse' changed the model's outputs") as error:
        _compare(reference, [{"y": np.zeros((1, 12), np.float32)}], budget, "fuse")
    assert error.value.exit_code == 1


def test_a_user_metric_keeps_the_fidelity_checks(cli, tmp_path, trained_digits):
    metric = tmp_path / "metric.py"
    metric.write_text(textwrap.dedent(f"""\
        import numpy as np

        def accuracy(run):
            data = np.load({str(trained_digits["test"])!r})
            hits = [int(np.argmax(list(run({{"input": x[None]}}).values())[0]) == y)
                    for x, y in zip(data["input"][:60], data["labels"][:60])]
            return float(np.mean(hits))
        """))
    common = ["--weights", trained_digits["weights"], "--target", "onnxruntime-cpu",
              "--calib", trained_digits["test"], "--eval", f"{metric}:accuracy"]
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--min-speedup", "0", *common, "--profile", "int8", "--out", out)
    assert result.exit_code == 0, result.stderr
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    stage = next(s for s in stages if s["stage"] == "quantize")
    scores = stage["metrics"]["evaluation"]["int8"]
    assert None not in (scores["metric"], scores["mean_cosine"], scores["sqnr_db"])
    assert "fidelity on" in stage["metrics"]["evaluation"]["origin"]
    strict = tmp_path / "strict.toml"
    strict.write_text('name = "s"\ndescription = "s"\nextends = "int8"\n'
                      '[quantize.budget]\nmin_cosine = 0.9999999\nmax_metric_drop = 1.0\n'
                      'on_exceed = "fail"\n')
    failing = cli("build", DIGITS, "--min-speedup", "0",
                  *common, "--profile", strict, "--out", tmp_path / "c")
    assert failing.exit_code == 1
    assert "mean cosine vs float" in failing.stderr.strip().splitlines()[-1]


def test_compare_run_on_two_matrices_times_each_cell_a_b(cli, tmp_path, digits_onnx):
    pytest.importorskip("ray")
    from tests.test_matrix import run_matrix, write_matrix

    path = write_matrix(tmp_path, digits_onnx, targets=("onnxruntime-cpu",), profiles=("fp32",))
    done, _ = run_matrix(path)
    assert done.returncode == 0, done.stderr
    result = tmp_path / "results" / "matrix.json"
    again = cli("compare", "--run", result, result, "--rounds", "4", "--runs", "30", "--json")
    assert again.exit_code == 0, again.stdout + again.stderr
    data = json.loads(again.stdout)
    assert data["mode"] == "interleaved A/B per board"
    assert {row["check"] for row in data["rows"]} == {"A/B@this machine"} and len(data["rows"]) == 2
    assert all(row["verdict"] != "regression" for row in data["rows"])
