"""A build whose output drifts beyond the profile's budget fails with exit 1 and writes nothing."""

from __future__ import annotations

from tests.conftest import DIGITS

ZERO_TOLERANCE = '''
name = "exact"
description = "bit-exact or bust"
extends = "fp32"
[accuracy]
atol = 0.0
rtol = 0.0
'''


def test_exceeding_the_budget_fails_loudly(cli, tmp_path):
    profile = tmp_path / "exact.toml"
    profile.write_text(ZERO_TOLERANCE)
    result = cli("build", DIGITS, "--profile", profile, "--out", tmp_path / "out" / "b")
    assert result.exit_code == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "stage 'export' exceeds the accuracy budget of profile 'exact'" in error_lines[0]
    assert "✓ export" in result.stderr  # the stage's numbers are shown before failing
    assert not (tmp_path / "out").exists()


def test_warn_instead_of_fail(cli, tmp_path):
    profile = tmp_path / "lenient.toml"
    profile.write_text(ZERO_TOLERANCE + 'on_exceed = "warn"\n')
    result = cli("build", DIGITS, "--profile", profile, "--out", tmp_path / "b")
    assert result.exit_code == 0, result.stderr
    assert "accuracy budget exceeded" in result.stderr
    assert "accuracy budget exceeded" in (tmp_path / "b" / "report.md").read_text()


def _budget(**overrides):
    from edgepipe.config import AccuracyBudget

    return AccuracyBudget(**overrides)


def test_allclose_semantics_scale_with_the_output():
    import numpy as np

    from edgepipe.parity import compare_outputs

    big = {"logits": np.array([[1000.0, -2000.0]], np.float32)}
    close = {"logits": np.array([[1000.5, -2000.5]], np.float32)}  # 5e-4 relative
    report = compare_outputs([big], [close], atol=1e-3, rtol=1e-3)
    assert report.max_abs_diff == 0.5
    assert report.violations(_budget()) == []
    strict = compare_outputs([big], [close], atol=1e-3, rtol=1e-4)
    assert "differs by up to" in strict.violations(_budget())[0]


def test_cosine_and_top1_gates():
    import numpy as np

    from edgepipe.parity import compare_outputs

    ref = [{"p": np.array([[0.9, 0.1]], np.float32)}, {"p": np.array([[0.2, 0.8]], np.float32)}]
    flipped = [{"p": np.array([[0.1, 0.9]], np.float32)}, {"p": np.array([[0.2, 0.8]], np.float32)}]
    report = compare_outputs(ref, flipped, atol=1.0, rtol=0.0)
    assert report.min_top1_agreement == 0.5
    assert report.min_cosine < 0.9
    found = report.violations(_budget(atol=1.0, min_cosine=0.99, min_top1_agreement=0.9))
    assert any("cosine" in v for v in found)
    assert any("top-1 agreement 0.500" in v for v in found)
