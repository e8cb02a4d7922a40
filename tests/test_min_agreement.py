"""`bench --min-agreement PCT`: top-1 agreement with the baseline's float32 outputs, in % (issue 13)."""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLES, assert_one_line_error

SOURCE, DATA = SAMPLES / "lenet300.onnx", SAMPLES / "digits_test.npz"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    import deepcompress_cli as dc

    path = tmp_path_factory.mktemp("agree") / "small.dcz"
    dc.compress(SOURCE, path, sparsity=0.9, bits=3, progress=False)
    return path


def bench(cli, *options):
    return cli("bench", SOURCE, "--runs", 1, "--warmup", 0, "--no-int8", "--data", DATA, *options)


def test_the_gate_passes_at_the_agreement_reached_and_fails_above(cli, small):
    result = cli("--json", "bench", SOURCE, small, "--runs", 1, "--warmup", 0, "--no-int8", "--data", DATA,
                 "--min-agreement", 10)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    reached = 100 * report["models"][1]["modes"]["fp32"]["fidelity"]["top1_agreement"]
    assert 10 < reached < 100
    [gate] = report["gates"]
    assert gate["gate"] == "min-agreement" and gate["passed"] and gate["value"] == pytest.approx(reached)
    assert bench(cli, small, "--min-agreement", round(reached, 4)).exit_code == 0
    failed = bench(cli, small, "--min-agreement", 100)
    assert failed.exit_code == 1
    assert "gate min-agreement failed" in failed.stderr.strip().splitlines()[-1]


def test_the_api_reports_it_without_raising(small):
    import deepcompress_cli as dc

    report = dc.bench(SOURCE, small, data=DATA, runs=1, warmup=0, int8=False, min_agreement=100, progress=False)
    assert not report["passed"] and report["gates"][0]["gate"] == "min-agreement"


def test_int8_of_a_single_model_is_gated(cli):
    result = cli("--json", "bench", SOURCE, "--runs", 1, "--warmup", 0, "--data", DATA, "--min-agreement", 50)
    assert result.exit_code == 0, result.stderr
    assert [(g["gate"], g["mode"]) for g in json.loads(result.stdout)["gates"]] == [("min-agreement", "int8")]


@pytest.mark.parametrize("value", ["150", "-1", "nan"])
def test_a_percentage_outside_0_100_is_a_usage_error(cli, small, value):
    assert_one_line_error(bench(cli, small, "--min-agreement", value))


def test_nothing_to_compare_is_a_usage_error(cli):
    assert_one_line_error(bench(cli, "--min-agreement", 90))
