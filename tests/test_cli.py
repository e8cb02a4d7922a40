"""The command line as users and scripts meet it: exit codes, --json, pipes, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import SAMPLES, assert_one_line_error
from deepcompress_cli import container

LENET = SAMPLES / "lenet300.onnx"


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_version_and_help(cli):
    assert cli("--version").stdout.strip() == "deepcompress, version 0.1.0"
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("pack", "export", "info"):
        assert command in result.stdout


def test_usage_errors_exit_2_with_one_line(cli, tmp_path):
    assert_one_line_error(cli("pack", LENET))  # -o is required
    assert_one_line_error(cli("no-such-command"))
    assert_one_line_error(cli("info"))
    assert_one_line_error(cli("prune", LENET, "-o", tmp_path / "x.dcz", "--bogus"))


@pytest.mark.parametrize("options", [("--sparsity", "1.5"), ("--sparsity", "-0.1"), ("--sparsity", "1"),
                                     ("--sparsity", "nan"), ("--layer-sparsity", "fc1*=2"),
                                     ("--sparsity", "0.5", "--threshold-std", "1"), ("--threshold-std", "-1"),
                                     ("--index-bits", "0"), ("--bits", "17")])
@pytest.mark.parametrize("command", ["prune", "compress"])
def test_bad_stage_options_are_usage_errors(cli, tmp_path, command, options):
    if command == "prune" and options[0] == "--bits":
        options = ("--index-bits", "17")
    assert_one_line_error(cli(command, LENET, "-o", tmp_path / "x.dcz", *options))
    assert not (tmp_path / "x.dcz").exists()


def test_non_finite_weights_are_refused(cli, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(LENET))
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w.flat[3] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, model.graph.initializer[0].name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    assert cli("pack", tmp_path / "nan.onnx", "-o", tmp_path / "p.dcz").exit_code == 0  # lossless: kept as is
    for command in ("prune", "share", "quantize", "compress"):
        assert_one_line_error(cli(command, tmp_path / "nan.onnx", "-o", tmp_path / "x.dcz"))


def test_json_is_strict(cli, tmp_path):
    """No NaN/Infinity tokens (not JSON): non-finite figures are null."""
    from deepcompress_cli.cli import finite_or_null

    assert finite_or_null({"a": [1.0, float("nan")], "b": float("inf"), "c": "x"}) == {"a": [1.0, None], "b": None, "c": "x"}
    result = cli("--json", "compress", LENET, "-o", tmp_path / "m.dcz", "--sparsity", "0")
    assert result.exit_code == 0
    json.loads(result.stdout, parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))


def test_missing_input_is_one_line(cli, tmp_path):
    assert_one_line_error(cli("info", tmp_path / "nope.dcz"))
    assert_one_line_error(cli("pack", tmp_path, "-o", tmp_path / "x.dcz"))  # a folder
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert_one_line_error(cli("pack", tmp_path / "empty.onnx", "-o", tmp_path / "x.dcz"))


def test_pack_is_deterministic(cli, tmp_path):
    for name in ("a.dcz", "b.dcz"):
        assert cli("pack", LENET, "-o", tmp_path / name).exit_code == 0
    assert sha(tmp_path / "a.dcz") == sha(tmp_path / "b.dcz")
    # and packing the exported model again gives the same container
    assert cli("export", tmp_path / "a.dcz", "-o", tmp_path / "a.onnx").exit_code == 0
    assert cli("pack", tmp_path / "a.onnx", "-o", tmp_path / "c.dcz").exit_code == 0
    assert sha(tmp_path / "a.dcz") == sha(tmp_path / "c.dcz")


def test_json_output_is_one_object(cli, tmp_path):
    dcz = tmp_path / "m.dcz"
    result = cli("--json", "pack", LENET, "-o", dcz)
    data = json.loads(result.stdout)
    assert data["tensors"] == 6 and data["weights"] == 3 and data["bytes"] == os.path.getsize(dcz)
    for args in (("--json", "info", dcz), ("info", dcz, "--json")):
        info = json.loads(cli(*args).stdout)
        assert info["totals"]["weight_elements"] == 64 * 300 + 300 * 100 + 100 * 10
        assert info["totals"]["ratio_tensors"] == info["totals"]["ratio_weights"] == 1.0
        first = info["tensors"][0]
        assert (first["name"], first["op"], first["kind"], first["shape"], first["chain"]) == \
            ("fc1.weight", "Gemm", "fc", [300, 64], "raw")


def test_info_reads_onnx_too(cli):
    result = cli("info", LENET)
    assert result.exit_code == 0 and "fc2.weight" in result.stdout and "300x64" in result.stdout


def test_quiet_prints_nothing(cli, tmp_path):
    result = cli("-q", "pack", LENET, "-o", tmp_path / "m.dcz")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""


def test_stdin_and_stdout(cli, tmp_path):
    assert cli("pack", LENET, "-o", tmp_path / "file.dcz").exit_code == 0
    piped = cli("pack", "-", "-o", "-", input=LENET.read_bytes())
    assert piped.exit_code == 0
    assert piped.stdout_bytes == (tmp_path / "file.dcz").read_bytes()
    assert "tensors" in piped.stderr  # the report moves to stderr when stdout carries the file
    exported = cli("export", "-", "-o", "-", input=piped.stdout_bytes)
    assert exported.exit_code == 0 and exported.stdout_bytes == LENET.read_bytes()


def test_refuses_to_overwrite_its_input(cli, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(LENET, model)
    before = sha(model)
    assert_one_line_error(cli("export", model, "-o", model))
    os.link(model, tmp_path / "hardlink.onnx")
    assert_one_line_error(cli("export", model, "-o", tmp_path / "hardlink.onnx"))
    assert sha(model) == before


def test_unwritable_output(cli, tmp_path):
    assert_one_line_error(cli("pack", LENET, "-o", tmp_path / "no" / "such" / "dir.dcz"))
    assert_one_line_error(cli("pack", LENET, "-o", tmp_path))  # a folder
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert_one_line_error(cli("pack", LENET, "-o", ro / "m.dcz"))


def test_failed_write_leaves_nothing(cli, tmp_path, monkeypatch):
    target = tmp_path / "m.dcz"
    target.write_bytes(b"previous content")

    def explode(package, out):
        out.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(container, "write", explode)
    assert_one_line_error(cli("pack", LENET, "-o", target))
    assert target.read_bytes() == b"previous content"
    assert os.listdir(tmp_path) == ["m.dcz"]  # no temp file left behind


def test_output_has_ordinary_permissions(cli, tmp_path):
    assert cli("pack", LENET, "-o", tmp_path / "m.dcz").exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "m.dcz").st_mode & 0o777 == 0o666 & ~umask


def test_internal_errors_are_one_line_too(cli, tmp_path, monkeypatch):
    from deepcompress_cli import report

    monkeypatch.setattr(report, "summary", lambda *a: 1 / 0)
    result = cli("info", LENET)
    assert_one_line_error(result)
    assert "ZeroDivisionError" in result.stderr and "--debug" in result.stderr


def test_installed_console_script(tmp_path):
    script = shutil.which("deepcompress", path=os.path.dirname(sys.executable)) or shutil.which("deepcompress")
    if script is None:
        pytest.skip("console script not installed (pip install -e .)")
    out = tmp_path / "m.dcz"
    done = subprocess.run([script, "pack", str(LENET), "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([script, "--json", "info", str(out)], capture_output=True, text=True)
    assert json.loads(done.stdout)["totals"]["tensors"] == 6
    done = subprocess.run([script, "info", str(tmp_path / "missing.dcz")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "deepcompress_cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and "0.1.0" in done.stdout


def test_help_does_not_import_numpy_or_onnx():
    code = ("import sys; from deepcompress_cli.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('numpy', 'onnx', 'tqdm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip().endswith("[]"), done.stdout


@pytest.mark.parametrize("stage", [("prune",), ("share",), ("quantize", "--per-channel"),
                                   ("compress", "--sparsity", "conv=0.6,fc=0.9"),
                                   ("compress", "--init", "forgy", "--seed", "5", "--bits", "conv=8,fc=5")])
def test_output_does_not_depend_on_jobs(cli, tmp_path, stage):
    """Tensors are encoded on -j threads; the bytes must be those of -j 1 (sha256)."""
    import onnx

    from deepcompress_cli import zoo

    model = tmp_path / "squeezenet.onnx"
    onnx.save(zoo.materialize("squeezenet"), str(model))
    digests = set()
    for jobs in ("1", "2", "4"):
        out = tmp_path / f"j{jobs}.dcz"
        assert cli("-j", jobs, stage[0], model, "-o", out, *stage[1:]).exit_code == 0
        if stage[0] != "compress":
            assert cli("huffman", out, "-o", tmp_path / f"h{jobs}.dcz", "-j", jobs).exit_code == 0
            out = tmp_path / f"h{jobs}.dcz"
        digests.add(sha(out))
    assert len(digests) == 1


def test_kill_9_during_a_write_leaves_the_old_output(tmp_path):
    """SIGKILL while the output is being written: OUT keeps its old bytes (the rename never
    happened), and where the OS has unnamed temp files (Linux O_TMPFILE) nothing else remains;
    elsewhere only a hidden .tmp file may."""
    import signal
    import time

    import onnx

    from deepcompress_cli import files, zoo

    model = tmp_path / "alexnet.onnx"
    onnx.save(zoo.materialize("bvlc_alexnet"), str(model))
    out = tmp_path / "out.dcz"
    out.write_bytes(b"previous output")
    unnamed = files._open_unnamed(str(tmp_path))
    if unnamed is not None:
        os.close(unnamed)
    process = subprocess.Popen([sys.executable, "-m", "deepcompress_cli", "-q", "pack", str(model), "-o", str(out)])

    def writing() -> bool:  # the process holds a non-empty file in tmp_path open, not the model
        fds = f"/proc/{process.pid}/fd"
        for fd in os.listdir(fds) if os.path.isdir(fds) else []:
            try:
                target, size = os.readlink(f"{fds}/{fd}"), os.stat(f"{fds}/{fd}").st_size
            except OSError:
                continue
            if target.startswith(str(tmp_path)) and target != str(model) and size > 0:
                return True
        return any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in tmp_path.iterdir())

    deadline = time.monotonic() + 60
    while not writing():
        assert process.poll() is None and time.monotonic() < deadline, "the write finished before the kill"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert out.read_bytes() == b"previous output"
    left = {p.name for p in tmp_path.iterdir()} - {"alexnet.onnx", "out.dcz"}
    if unnamed is not None:
        assert not left, f"temp files survived the kill: {left}"
    else:
        assert all(n.startswith(".out.dcz.") and n.endswith(".tmp") for n in left)


# ------------------------------------------------------------------ one suffix rule for every writing command

def is_dcz(path) -> bool:
    return open(path, "rb").read(len(container.MAGIC)) == container.MAGIC


@pytest.mark.parametrize("command", [("pack",), ("prune",), ("share",), ("quantize",), ("huffman",),
                                     ("compress",), ("svd", "--rank", "8"), ("export",)])
def test_the_suffix_decides_the_format(cli, tmp_path, command):
    import onnx

    name, *options = command
    source = LENET
    if name == "huffman":
        assert cli("share", LENET, "-o", tmp_path / "s.dcz").exit_code == 0
        source = tmp_path / "s.dcz"
    onnx_out, dcz_out, other = tmp_path / "out.onnx", tmp_path / "out.dcz", tmp_path / "out.bin"
    for out in (onnx_out, dcz_out, other):
        result = cli("--json", name, source, "-o", out, *options)
        assert result.exit_code == 0, result.stderr
    onnx.checker.check_model(onnx.load(str(onnx_out)))  # a runnable ONNX model, not a .dcz in disguise
    assert not is_dcz(onnx_out) and is_dcz(dcz_out)
    assert is_dcz(other) == (name != "export")  # other names: the command's own format
    forced = tmp_path / "forced.onnx"
    assert cli(name, source, "-o", forced, "--format", "dcz", *options).exit_code == 0 and is_dcz(forced)


def test_qdq_needs_an_onnx_output(cli, tmp_path):
    assert cli("quantize", LENET, "-o", tmp_path / "q.dcz").exit_code == 0
    assert_one_line_error(cli("export", tmp_path / "q.dcz", "-o", tmp_path / "x.dcz", "--qdq"))
    assert cli("export", tmp_path / "q.dcz", "-o", tmp_path / "x.onnx", "--qdq").exit_code == 0


# ------------------------------------------------------------------ the same options everywhere

def test_per_kind_and_per_layer_options(cli, tmp_path):
    rows = json.loads(cli("--json", "quantize", LENET, "-o", tmp_path / "q.dcz", "--bits", "conv=8,fc=6",
                          "--layer-bits", "fc1*=4").stdout)["layers"]
    assert {r["name"]: r["bits"] for r in rows} == {"fc1.weight": 4, "fc2.weight": 6, "fc3.weight": 6}
    rows = json.loads(cli("--json", "prune", LENET, "-o", tmp_path / "p.dcz", "--index-bits", "4",
                          "--layer-index-bits", "fc2*=7").stdout)["layers"]
    assert {r["name"]: r["index_bits"] for r in rows} == {"fc1.weight": 4, "fc2.weight": 7, "fc3.weight": 4}


def test_svd_include_exclude_and_old_layers_spelling(cli, tmp_path):
    def skipped(*options):
        result = cli("--json", "svd", LENET, "-o", tmp_path / "s.dcz", "--rank", "8", *options)
        assert result.exit_code == 0, result.stderr
        return {r["name"]: r["skipped"] for r in json.loads(result.stdout)["layers"]}

    assert skipped("--include", "fc1*") == skipped("--layers", "fc1*")
    assert skipped("--include", "fc1*")["fc2"] == "not selected by --include" and skipped("--include", "fc1*")["fc1"] is None
    assert skipped("--exclude", "fc1*")["fc1"] == "excluded by --exclude"


def test_bench_batch_size_and_old_batch_spelling(cli):
    for option in ("--batch-size", "--batch"):
        result = cli("--json", "bench", LENET, "--runs", "1", "--warmup", "0", "--no-int8", option, "3")
        assert result.exit_code == 0 and json.loads(result.stdout)["models"][0]["batch"] == 3


# ------------------------------------------------------------------ globs that match nothing

@pytest.mark.parametrize("command", [
    ("prune", "--layer-sparsity", "fc8*=0.75"),  # the README's old example: lenet300 has no fc8
    ("prune", "--layer-index-bits", "conv9=4"),
    ("share", "--layer-bits", "nothing*=3"),
    ("quantize", "--layer-bits", "nothing*=3"),
    ("compress", "--layer-sparsity", "fc8*=0.75"),
    ("pack", "--include", "embed*"),
    ("prune", "--exclude", "head.*"),
    ("svd", "--rank", "8", "--layer-rank", "fc9=2"),
    ("svd", "--rank", "8", "--include", "fc9"),
])
def test_a_glob_that_matches_nothing_is_an_error(cli, tmp_path, command):
    name, *options = command
    result = cli(name, LENET, "-o", tmp_path / "x.dcz", *options)
    assert_one_line_error(result)
    pattern = options[-1].split("=")[0]
    assert repr(pattern) in result.stderr and "fc1" in result.stderr  # the pattern, and names that exist
    assert not (tmp_path / "x.dcz").exists()


def test_help_and_readme_glob_examples_match_the_sample_model(cli, tmp_path):
    readme = (LENET.parent.parent / "README.md").read_text()
    assert "'fc8*" not in readme
    for options in (("--sparsity", "conv=0.5,fc=0.9", "--layer-sparsity", "fc3*=0.75"),
                    ("--sparsity", "conv=0.5,fc=0.95", "--layer-sparsity", "fc3*=0.75")):
        assert cli("prune", LENET, "-o", tmp_path / "p.dcz", *options).exit_code == 0
    assert cli("svd", LENET, "-o", tmp_path / "s.dcz", "--ratio", "0.25", "--layer-rank", "fc3=16").exit_code == 0


# ------------------------------------------------------------------ --metadata

WRITERS = [("pack",), ("prune",), ("share",), ("quantize",), ("compress",), ("svd", "--rank", "8")]


@pytest.mark.parametrize("command", WRITERS)
def test_metadata_is_set_before_writing(cli, tmp_path, monkeypatch, command):
    seen = []
    real_write = container.write
    monkeypatch.setattr(container, "write", lambda package, out: seen.append(dict(package.metadata))
                        or real_write(package, out))
    result = cli(command[0], LENET, "-o", tmp_path / "m.dcz", *command[1:], "--metadata", "source=lenet300",
                 "--metadata", "recipe=a=b", "--metadata", "source=sha256:ab")
    assert result.exit_code == 0, result.stderr
    assert seen == [{"source": "sha256:ab", "recipe": "a=b"}]  # the last value of a key wins


def test_metadata_is_kept_by_later_stages(cli, tmp_path):
    from deepcompress_cli.files import read_model

    assert cli("pack", LENET, "-o", tmp_path / "a.dcz", "--metadata", "source=lenet300").exit_code == 0
    if not read_model(str(tmp_path / "a.dcz")).metadata:
        pytest.skip("this container version does not store metadata yet")
    assert cli("prune", tmp_path / "a.dcz", "-o", tmp_path / "b.dcz", "--metadata", "recipe=prune").exit_code == 0
    assert cli("huffman", tmp_path / "b.dcz", "-o", tmp_path / "c.dcz").exit_code == 0
    assert read_model(str(tmp_path / "c.dcz")).metadata == {"source": "lenet300", "recipe": "prune"}


def test_metadata_on_onnx_output_goes_to_metadata_props(cli, tmp_path):
    import onnx

    assert cli("export", LENET, "-o", tmp_path / "m.onnx", "--metadata", "source=lenet300").exit_code == 0
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["source"] == "lenet300"


@pytest.mark.parametrize("entry", ["=value", "novalue", "key=line\nbreak", "k\x1b=v", "k" * 257 + "=v",
                                   "k=" + "v" * 4097])
def test_bad_metadata_is_a_usage_error(cli, tmp_path, entry):
    assert_one_line_error(cli("pack", LENET, "-o", tmp_path / "m.dcz", "--metadata", entry))
    assert not (tmp_path / "m.dcz").exists()


# ------------------------------------------------------------------ sizes and ratios

def test_bench_counts_external_data(cli, tmp_path):
    import onnx

    model = onnx.load(str(LENET))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    total = os.path.getsize(tmp_path / "ext.onnx") + os.path.getsize(tmp_path / "ext.onnx.data")
    assert cli("compress", tmp_path / "ext.onnx", "-o", tmp_path / "c.dcz").exit_code == 0
    result = cli("--json", "bench", tmp_path / "ext.onnx", tmp_path / "c.dcz", "--runs", "1", "--warmup", "0",
                 "--no-int8", "--min-ratio", "2")
    assert result.exit_code == 0, result.stderr
    base, small = json.loads(result.stdout)["models"]
    assert base["file_bytes"] == total
    assert small["ratio_file"] == round(total / os.path.getsize(tmp_path / "c.dcz"), 3) > 2


def test_bench_refuses_labels_past_the_classes(cli, tmp_path):
    data = dict(np.load(SAMPLES / "digits_test.npz"))
    data["labels"] = data["labels"] + 20  # classes 20..29 for a 10-class output
    np.savez(tmp_path / "bad.npz", **data)
    result = cli("bench", LENET, LENET, "--data", tmp_path / "bad.npz", "--max-accuracy-drop", "0.5", "--runs", "1")
    assert_one_line_error(result)
    assert "10 classes" in result.stderr


def test_one_name_per_ratio_in_every_output(cli, tmp_path):
    """compress, info and bench name each figure for what it divides, and agree on it."""
    out = tmp_path / "m.dcz"
    compressed = json.loads(cli("--json", "compress", LENET, "-o", out, "--sparsity", "conv=0.6,fc=0.9").stdout)
    info = json.loads(cli("--json", "info", out).stdout)
    bench = json.loads(cli("--json", "bench", LENET, out, "--runs", "1", "--warmup", "0", "--no-int8").stdout)
    totals = compressed["totals"]
    assert totals["ratio_weights"] == info["totals"]["ratio_weights"] == bench["models"][1]["ratio_weights"]
    assert totals["ratio_tensors"] == info["totals"]["ratio_tensors"]
    assert totals["ratio_file"] == bench["models"][1]["ratio_file"]
    assert totals["ratio_weights"] > totals["ratio_tensors"] > totals["ratio_file"] > 1
    row = compressed["layers"][0]
    assert row["bits_per_weight"] == pytest.approx(8 * row["bytes_pqh"] / row["weights"], abs=1e-3)
    assert row["value_bits_per_kept_weight"] > row["bits_per_weight"]  # a kept weight costs more than an average one
    assert "ratio" not in bench["models"][1] and "ratio" not in info["totals"]
