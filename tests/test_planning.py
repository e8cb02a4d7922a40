"""Quality-targeted compression (planning.py): targets met on the data, plans, fallbacks, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SAMPLES, assert_one_line_error, shared_path

LENET, LENET5 = SAMPLES / "lenet300.onnx", SAMPLES / "lenet5.onnx"
TRAIN, TEST = SAMPLES / "digits_train.npz", SAMPLES / "digits_test.npz"


def run_json(cli, *args):
    result = cli("--json", *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_target_is_met_on_the_calibration_data_and_reported(cli, tmp_path):
    out = tmp_path / "m.dcz"
    report = run_json(cli, "compress", LENET5, "-o", out, "--calibrate", TRAIN, "--min-agreement", "97")
    fid = report["fidelity"]
    # judged on the samples the rounding was not fitted to: all but every other of 1024 spaced ones
    from deepcompress_cli.planning import fit_split

    fitted, _ = fit_split(1347)
    assert fid["measured"] and fid["data"] == "calibration" and fid["held_out"]
    assert fid["samples"] == 1347 - len(fitted) == 835 and "835 held out" in fid["described"]
    assert fid["top1_agreement"] >= 0.97 and report["target_met"] and not report["lossless"]
    assert report["ratio_file"] > 2 and out.exists()
    # what bench measures on those samples agrees with the report
    import deepcompress_cli as dc

    data = dict(np.load(TRAIN))
    judged = np.setdiff1d(np.arange(1347), fitted)
    np.savez(tmp_path / "held.npz", **{k: v[judged] for k, v in data.items()})
    bench = dc.bench(LENET5, out, data=tmp_path / "held.npz", int8=False, runs=1, warmup=0, progress=False)
    assert bench["models"][1]["modes"]["fp32"]["fidelity"]["top1_agreement"] == pytest.approx(
        fid["top1_agreement"], abs=1e-6)
    # every layer's chosen setting is in the report
    names = {r["name"] for r in report["layers"]}
    assert names == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    assert all(r["data_aware"] and r["bytes"] > 0 for r in report["layers"])


def test_text_report_shows_plan_target_and_data(cli, tmp_path):
    result = cli("compress", LENET5, "-o", tmp_path / "m.dcz", "--calibrate", TRAIN, "--min-cosine", "0.99")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "fc1.weight" in text and "target: min-cosine 0.99: met" in text
    assert "calibration samples" in text and "digits_train.npz" in text


def test_unmeetable_target_exits_1_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "m.dcz"
    result = cli("compress", LENET5, "-o", out, "--calibrate", TRAIN, "--max-accuracy-drop", "-50")
    assert_one_line_error(result, code=1)
    assert "not met" in result.stderr and "losslessly" in result.stderr and "nothing written" in result.stderr
    assert not out.exists()


def test_target_met_only_losslessly_writes_the_pack_form(cli, tmp_path):
    out = tmp_path / "m.dcz"
    report = run_json(cli, "compress", LENET5, "-o", out, "--calibrate", TRAIN, "--min-cosine", "1")
    assert report["lossless"] and report["target_met"]
    assert any("only losslessly" in n for n in report["notes"])
    import deepcompress_cli as dc

    original = {t.name: t.decode() for t in dc.load(LENET5).tensors}
    assert all(np.array_equal(t.decode(), original[t.name]) for t in dc.load(out).tensors)


def test_plan_reproduces_the_bytes_and_refuses_another_model(cli, tmp_path):
    plan = tmp_path / "plan.json"
    first, second = tmp_path / "a.dcz", tmp_path / "b.dcz"
    run_json(cli, "compress", LENET5, "-o", first, "--calibrate", TRAIN, "--min-agreement", "98",
             "--plan-out", plan)
    saved = json.loads(plan.read_text())
    assert list(saved) == sorted(saved) and saved["model_sha256"] and saved["data"]["kind"] == "calibration"
    assert saved["bytes"] == first.stat().st_size and set(saved["layers"]) >= {"fc1.weight"}
    report = run_json(cli, "compress", LENET5, "-o", second, "--calibrate", TRAIN, "--plan", plan)
    assert second.read_bytes() == first.read_bytes()
    assert "applied --plan" in report["notes"]
    result = cli("compress", LENET, "-o", tmp_path / "c.dcz", "--calibrate", TRAIN, "--plan", plan)
    assert_one_line_error(result)
    assert "another model" in result.stderr
    result = cli("compress", LENET5, "-o", tmp_path / "d.dcz", "--plan", plan)  # made with data: needs it
    assert_one_line_error(result)
    assert "--calibrate" in result.stderr


def test_plan_json_round_trip(tmp_path):
    from deepcompress_cli.planning import Setting, read_plan, write_plan

    plan = {"deepcompress_plan": 1, "mode": "compress", "model_sha256": "ab" * 32, "target": [],
            "data": None, "lossless": False, "reached": None, "bytes": 10,
            "layers": {"w": {**Setting(0.25, 6).to_json(), "index_bits": 4}}}
    path = tmp_path / "p.json"
    write_plan(str(path), plan)
    text = path.read_text()
    write_plan(str(path), read_plan(str(path)))
    assert path.read_text() == text  # stable: sorted keys, same text
    back = read_plan(str(path))
    assert Setting.from_json(back["layers"]["w"], "p") == Setting(0.25, 6)
    path.write_text("{}")
    from deepcompress_cli.errors import DczError

    with pytest.raises(DczError, match="not a deepcompress plan"):
        read_plan(str(path))


@pytest.mark.parametrize("make, message", [
    (lambda: {"x": np.zeros((4, 1, 8, 8), np.float32)}, "no array named 'input'"),
    (lambda: {"input": np.zeros((4, 1, 9, 8), np.float32)}, "[N, 1, 8, 8]"),
    (lambda: {"input": np.zeros((4, 1, 8, 8), np.uint8)}, "uint8"),
])
def test_bad_calibration_data_is_one_line_exit_2(cli, tmp_path, make, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **make())
    out = tmp_path / "m.dcz"
    result = cli("compress", LENET5, "-o", out, "--calibrate", path, "--min-cosine", "0.99")
    assert_one_line_error(result)
    assert message in result.stderr and not out.exists()


def test_accuracy_target_needs_labels(cli, tmp_path):
    path = tmp_path / "unlabeled.npz"
    np.savez(path, input=np.load(TRAIN)["input"][:64])
    result = cli("compress", LENET5, "-o", tmp_path / "m.dcz", "--calibrate", path, "--max-accuracy-drop", "1")
    assert_one_line_error(result)
    assert "labels" in result.stderr


def test_default_compress_states_fidelity_and_synthesized_data(cli, tmp_path):
    report = run_json(cli, "compress", LENET5, "-o", tmp_path / "m.dcz")
    fid = report["fidelity"]
    assert fid["measured"] and fid["data"] == "synthesized" and fid["cosine"] >= 0.999
    assert report["default_target"] and report["target"] == [{"kind": "min_cosine", "value": 0.999}]
    text = cli("compress", LENET5, "-o", tmp_path / "n.dcz").stdout
    assert "synthesized inputs, not real data" in text and "--calibrate" in text
    report = run_json(cli, "compress", LENET5, "-o", tmp_path / "c.dcz", "--calibrate", TRAIN)
    assert report["target"] == [{"kind": "min_cosine", "value": 0.995}] and report["fidelity"]["cosine"] >= 0.995


def test_default_compress_without_a_runnable_model_is_data_free(cli, tmp_path, monkeypatch):
    from deepcompress_cli import planning
    from deepcompress_cli.errors import DczError

    def refuse(package, *args, **kwargs):
        raise DczError("unsupported op: Frobnicate")

    monkeypatch.setattr(planning, "synthesized_evidence", refuse)
    report = run_json(cli, "compress", LENET5, "-o", tmp_path / "m.dcz")
    assert report["fidelity"] == {"measured": False, "reason": "unsupported op: Frobnicate"}
    assert all(not r["data_aware"] and r["kept_fraction"] == 1 for r in report["layers"])
    text = cli("compress", LENET5, "-o", tmp_path / "n.dcz").stdout
    assert "fidelity not measured: unsupported op: Frobnicate" in text


def test_fixed_recipe_reports_fidelity_and_warns(cli, tmp_path):
    result = cli("compress", LENET5, "-o", tmp_path / "m.dcz", "--sparsity", "0.95", "--bits", "2")
    assert result.exit_code == 0, result.stderr
    assert "fidelity: cosine" in result.stdout and "synthesized inputs" in result.stdout
    assert "warning" in result.stderr and "fixed recipe" in result.stderr
    result = cli("compress", LENET5, "-o", tmp_path / "m.dcz", "--sparsity", "0.5", "--min-cosine", "0.9")
    assert_one_line_error(result)


@pytest.mark.parametrize("command, extra", [("prune", []), ("quantize", []), ("share", [])])
def test_stage_commands_take_targets(cli, tmp_path, command, extra):
    out = tmp_path / "m.dcz"
    report = run_json(cli, command, LENET5, "-o", out, "--calibrate", TRAIN, "--min-cosine", "0.99", *extra)
    assert report["mode"] == command and report["target_met"] and report["fidelity"]["cosine"] >= 0.99
    assert report["ratio_file"] > 1


def test_stage_commands_apply_given_settings_data_aware(cli, tmp_path):
    report = run_json(cli, "quantize", LENET5, "-o", tmp_path / "q.dcz", "--calibrate", TRAIN, "--bits", "4")
    assert report["fidelity"]["measured"] and all(r["bits"] == 4 for r in report["layers"])
    report = run_json(cli, "prune", LENET5, "-o", tmp_path / "p.dcz", "--calibrate", TRAIN, "--sparsity", "0.5")
    assert all(abs(r["kept_fraction"] - 0.5) < 0.02 for r in report["layers"])


@pytest.mark.slow
def test_mnist_cnn_accuracy_target(cli, tmp_path):
    model = shared_path("models", "mnist_cnn.onnx")
    source = np.load(shared_path("data", "mnist_train10k.npz"))
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=((source["images"][:2000].astype(np.float32) / 255 - 0.5) / 0.5)[:, None],
             labels=source["labels"][:2000])
    report = run_json(cli, "compress", model, "-o", tmp_path / "m.dcz", "--calibrate", calib,
                      "--max-accuracy-drop", "0.3")
    assert report["target_met"] and report["fidelity"]["accuracy_drop"] <= 0.3
    assert report["ratio_file"] > 20


def test_planned_output_does_not_depend_on_jobs(cli, tmp_path):
    outs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"j{jobs}.dcz"
        result = cli("-j", jobs, "compress", LENET5, "-o", out, "--calibrate", TRAIN, "--min-agreement", "98")
        assert result.exit_code == 0, result.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


@pytest.mark.parametrize("count", [1, 2, 7, 1347, 5000])
def test_fit_split_holds_out_every_other_statistics_sample(count):
    from deepcompress_cli.planning import STATS_SAMPLES, fit_split

    fitted, held = fit_split(count)
    if count == 1:
        assert list(fitted) == [0] and held is None
        return
    assert len(np.intersect1d(fitted, held)) == 0 and abs(len(fitted) - len(held)) <= 1
    assert len(fitted) + len(held) == min(count, STATS_SAMPLES) and fitted.max() < count


def test_search_mode_is_chosen_by_multiply_adds_not_by_the_clock():
    """The same inputs must give the same file on a loaded machine: a count, not a timing."""
    from deepcompress_cli.files import read_model
    from deepcompress_cli.planning import Runner, calibration_evidence

    package = read_model(str(LENET))  # 64-300-100-10 Gemms
    runner = Runner(package, calibration_evidence(package, str(TRAIN)))
    assert runner.macs_per_sample() == 64 * 300 + 300 * 100 + 100 * 10


def test_batched_outputs_keep_their_samples_first():
    """A time-major [T, N, C] output (CTC recognizers) is joined on its sample axis, then moved first."""
    from deepcompress_cli.benchmarking import samples_first

    outs = [np.arange(5 * 2 * 3).reshape(5, 2, 3), np.arange(5 * 1 * 3).reshape(5, 1, 3)]
    joined = samples_first(outs, [2, 1])
    assert joined.shape == (3, 5, 3) and np.array_equal(joined[2], outs[1][:, 0])
    assert samples_first([np.ones((2, 4)), np.ones((1, 4))], [2, 1]).shape == (3, 4)  # already first
