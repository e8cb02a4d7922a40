"""compress --train with a target: fine-tuned plans (train/targeted.py)."""

from __future__ import annotations

import json

import numpy as np

from conftest import SAMPLES, assert_one_line_error
from deepcompress_cli import planning
from deepcompress_cli.train.retrain import Grid
from deepcompress_cli.train.targeted import training_samples

TRAIN, TEST = SAMPLES / "digits_train.npz", SAMPLES / "digits_test.npz"


def test_grid_rounds_onto_its_steps_and_keeps_pruned_positions_zero():
    steps = np.array([[0.5], [0.25]], np.float32) * np.ones((2, 3), np.float32)
    keep = np.array([[True, True, False], [True, True, True]])
    grid = Grid(steps, 3, keep)
    shadow = np.array([[0.74, -0.2, 9.0], [0.3, -9.0, 0.1]], np.float32)
    np.testing.assert_array_equal(grid.codes(shadow), [[1, -0, 0], [1, -3, 0]])
    np.testing.assert_allclose(grid.weights(shadow), [[0.5, 0, 0], [0.25, -0.75, 0]])


def test_training_samples_leave_out_exactly_the_judged_ones():
    ev = planning.Evidence({}, {}, 6, "calibration")
    np.testing.assert_array_equal(training_samples(ev, np.array([1, 3, 5])), [0, 2, 4])
    np.testing.assert_array_equal(training_samples(ev, None), np.arange(6))
    big = planning.Evidence({}, {}, planning.VERIFY_SAMPLES, "calibration", total=3 * planning.VERIFY_SAMPLES)
    judged = np.arange(1, planning.VERIFY_SAMPLES, 2)
    kept = training_samples(big, judged)
    in_file = planning.spaced(big.total, planning.VERIFY_SAMPLES)
    assert len(kept) == big.total - len(judged) and not np.isin(in_file[judged], kept).any()


def test_fine_tuned_plan_meets_the_target_in_fewer_bytes_than_rounding_alone(cli, tmp_path):
    plain = json.loads(cli("--json", "compress", SAMPLES / "lenet300.onnx", "-o", tmp_path / "p.dcz",
                           "--calibrate", TRAIN, "--max-accuracy-drop", 0.5).stdout)
    result = cli("--json", "compress", SAMPLES / "lenet300.onnx", "-o", tmp_path / "t.dcz", "--train", TRAIN,
                 "--max-accuracy-drop", 0.5, "--epochs", 3)
    assert result.exit_code == 0, result.stderr
    tuned = json.loads(result.stdout)
    assert tuned["target_met"] and tuned["fidelity"]["held_out"] and tuned["fidelity"]["accuracy_drop"] <= 0.5
    assert tuned["bytes"] < 0.95 * plain["bytes"], (tuned["bytes"], plain["bytes"])
    assert any(t["met"] for t in tuned["training"]) and any(n.startswith("fine-tuned") for n in tuned["notes"])
    again = cli("--json", "compress", SAMPLES / "lenet300.onnx", "-o", tmp_path / "t2.dcz", "--train", TRAIN,
                "--max-accuracy-drop", 0.5, "--epochs", 3)
    assert (tmp_path / "t.dcz").read_bytes() == (tmp_path / "t2.dcz").read_bytes()  # deterministic
    assert json.loads(again.stdout)["bytes"] == tuned["bytes"]


def test_train_with_a_target_takes_no_calibrate_or_plan(cli, tmp_path):
    for extra in (["--calibrate", TEST], ["--plan-out", tmp_path / "plan.json"]):
        result = cli("compress", SAMPLES / "lenet300.onnx", "-o", tmp_path / "x.dcz", "--train", TRAIN,
                     "--min-agreement", 95, *extra)
        assert_one_line_error(result)
        assert "--train" in result.stderr and not (tmp_path / "x.dcz").exists()
    result = cli("prune", SAMPLES / "lenet300.onnx", "-o", tmp_path / "y.dcz", "--train", TRAIN, "--min-agreement", 95)
    assert_one_line_error(result)
    assert "--train" in result.stderr
