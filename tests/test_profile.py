"""edgepipe profile: raw samples, summary, cold start, written beside the bundle."""

from __future__ import annotations

import json
import shutil

import pytest

from edgepipe.profiler.stats import latency_summary
from tests.conftest import DIGITS, assert_one_line_error


def test_profile_writes_raw_samples_and_summary(cli, digits_bundle, tmp_path):
    out = tmp_path / "p.json"
    result = cli("profile", digits_bundle, "--runs", "20", "--warmup", "3", "--threads", "1",
                 "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "p50" in result.stdout and "cold start" in result.stdout
    data = json.loads(out.read_text())
    assert data["schema"] == "edgepipe.profile/1"
    assert len(data["latency_ms"]["samples"]) == 20
    summary = data["latency_ms"]["summary"]
    assert summary["min"] <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"]
    assert summary == latency_summary(data["latency_ms"]["samples"])
    assert data["settings"] == {**data["settings"], "runs": 20, "warmup": 3, "threads": 1}
    assert data["cold_start_ms"]["total"] >= data["cold_start_ms"]["load"] > 0
    assert data["runtime"]["name"] == "onnxruntime"
    assert data["device"]["logical_cpus"] >= 1
    assert data["energy"]["available"] is False and data["energy"]["reason"]
    assert data["bundle"]["target"] == "onnxruntime-cpu"


def test_profile_json_and_default_location(cli, digits_bundle, tmp_path):
    bundle = tmp_path / "digits-cpu"
    shutil.copytree(digits_bundle, bundle)
    result = cli("profile", bundle, "--runs", "12", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["settings"]["runs"] == 12 and data["settings"]["rounds"] == 6  # split across processes
    assert [len(r) for r in data["latency_ms"]["rounds"]] == [2] * 6
    assert (tmp_path / "digits-cpu.profile.json").is_file()
    assert cli("verify", bundle).exit_code == 0  # profiling never writes into the bundle


def test_profile_refuses_a_tampered_bundle(cli, digits_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    (bundle / "model.ort.onnx").write_bytes(b"not a model")
    result = cli("profile", bundle, "--runs", "3")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "does not match its manifest", "model.ort.onnx")


def test_profile_rejects_bad_settings(cli, digits_bundle):
    result = cli("profile", digits_bundle, "--runs", "0")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "--runs")


def test_latency_summary_numbers():
    summary = latency_summary([1.0, 2.0, 3.0, 4.0], batch=2)
    assert summary["mean"] == 2.5 and summary["p50"] == 2.5
    assert summary["min"] == 1.0 and summary["max"] == 4.0
    assert summary["throughput_per_s"] == 800.0


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "openvino-cpu"])
def test_per_layer_times_from_the_runtime_profiler(cli, tmp_path, target):
    if target == "openvino-cpu":
        pytest.importorskip("openvino")
    out = tmp_path / "b"
    assert cli("build", DIGITS, "--target", target, "--out", out).exit_code == 0
    result = cli("profile", out, "--runs", "5", "--warmup", "1", "--layers", "--rounds", "1", "--json")
    assert result.exit_code == 0, result.stderr
    per_layer = json.loads(result.stdout)["per_layer"]
    assert per_layer["runs"] == 5 and per_layer["layers_total"] >= 3
    layers = per_layer["layers"]
    assert any(row["type"] in ("Conv", "Convolution") for row in layers)
    assert all(row["mean_ms"] >= 0 for row in layers)
    assert sum(row["share"] for row in layers) == pytest.approx(1.0, abs=0.01)
    plain = cli("profile", out, "--runs", "2", "--warmup", "0", "--json")
    assert json.loads(plain.stdout)["per_layer"]["available"] is False


def test_html_report_has_the_plots(cli, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "b"
    assert cli("build", DIGITS, "--target", "onnxruntime-cpu", "--out", out).exit_code == 0
    report = tmp_path / "report.html"
    result = cli("profile", out, "--runs", "20", "--warmup", "2", "--layers", "--report", report)
    assert result.exit_code == 0, result.stderr
    page = report.read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 2  # latency + per-layer
    assert "latency CDF" in page and "slowest layers" in page and "energy" in page
    # What a person sees: Chromium parses both plots as SVG and paints the blue latency
    # histogram and the orange per-layer bars.
    from tests import browser

    assert browser.dom(report).count("<svg") == 2
    pixels = browser.render(report, tmp_path / "report.png", height=2000)
    assert browser.pixels_near(pixels, "#4472c4") > 2000 and browser.pixels_near(pixels, "#ed7d31") > 2000


def test_min_duration_keeps_timing_past_the_run_count(cli, tmp_path, digits_bundle):
    result = cli("profile", digits_bundle, "--runs", "3", "--warmup", "0", "--min-duration", "0.3",
                 "--out", tmp_path / "p.json", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["settings"]["min_duration_s"] == 0.3
    assert len(data["latency_ms"]["samples"]) == data["settings"]["runs"] > 3
    assert sum(data["latency_ms"]["samples"]) / 1000 <= 0.3 + 0.1
