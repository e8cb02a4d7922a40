"""What a small hostile input may cost: the decoded-size cap of `export`/`bench` and protobuf's
2 GiB limit on a serialized model (issue 12). Fixtures are generated, not committed."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from google.protobuf.message import EncodeError
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLES, assert_one_line_error
from deepcompress_cli import container, files, onnx_io
from deepcompress_cli.errors import DczError

N = 2048  # an all-zero 2048 x 2048 float weight: 16 MiB decoded from a few hundred stored bytes


@pytest.fixture(scope="module")
def fillers(tmp_path_factory):
    """A .dcz whose only weight is 16-bit sparse fillers: 16 MiB decoded from < 1 KB of file."""
    from click.testing import CliRunner

    from deepcompress_cli.cli import main

    folder = tmp_path_factory.mktemp("fillers")
    weight = numpy_helper.from_array(np.zeros((N, N), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), folder / "zero.onnx")
    result = CliRunner().invoke(main, ["-q", "prune", str(folder / "zero.onnx"), "-o", str(folder / "z.dcz"),
                                       "--threshold-std", "0", "--index-bits", "16"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    path = folder / "z.dcz"
    assert path.stat().st_size < 2048
    return path


def test_check_decoded_size_is_exact(fillers):
    package = files.read_model(str(fillers))
    assert files.check_decoded_size(package, N * N * 4) == N * N * 4  # at the cap: accepted
    with pytest.raises(DczError, match=rf"decodes to {N * N * 4} bytes, over the {N * N * 4 - 1}-byte limit"):
        files.check_decoded_size(package, N * N * 4 - 1)


def test_decoded_size_uses_python_ints():
    """Declared shapes whose product wraps int64 still count exactly (no np.prod)."""
    package = files.read_model(str(SAMPLES / "lenet5.onnx"))
    package.tensors[0].shape = (2**40, 2**40)
    assert files.decoded_bytes(package) >= 2**80
    with pytest.raises(DczError, match="over the"):
        files.check_decoded_size(package)


def test_info_does_not_expand_fillers(fillers):
    """`info` counts a sparse tensor's stored entries: 16 MiB declared, well under 1 MiB touched."""
    import tracemalloc

    from deepcompress_cli.report import summary

    package = files.read_model(str(fillers))
    tracemalloc.start()
    try:
        rows = summary(package, package.file_bytes)["tensors"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows[0]["sparsity"] == 1.0 and rows[0]["original_bytes"] == N * N * 4
    assert peak < 1 << 20, peak


@pytest.mark.parametrize("command", ["export", "bench"])
def test_over_the_flag_is_refused_before_decoding(cli, fillers, tmp_path, command):
    out = tmp_path / "out.onnx"
    args = ["export", fillers, "-o", out] if command == "export" else ["bench", fillers, "--runs", "1", "--no-int8"]
    result = cli(*args, "--max-decoded-bytes", "1M")
    assert_one_line_error(result)
    assert f"decodes to {N * N * 4} bytes, over the {1 << 20}-byte limit" in result.stderr
    assert "--max-decoded-bytes" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("command", ["export", "bench"])
def test_default_cap_is_relative_to_stored_bytes(cli, fillers, tmp_path, monkeypatch, command):
    """Without the floor, 16 MiB from a few hundred stored bytes is over 1024 x; the flag raises it."""
    monkeypatch.setattr(files, "DECODED_FLOOR", 1 << 20)
    args = ["export", fillers, "-o", tmp_path / "o.onnx"] if command == "export" else \
        ["bench", fillers, "--runs", "1", "--warmup", "0", "--no-int8"]
    assert_one_line_error(cli(*args))
    result = cli(*args, "--max-decoded-bytes", "16M")
    assert result.exit_code == 0, result.stderr


def test_default_cap_passes_real_models(cli, tmp_path, monkeypatch):
    """An .onnx stores its own bytes (1x) and a compressed sample is far under 1024x, floor or not."""
    monkeypatch.setattr(files, "DECODED_FLOOR", 0)
    for name in ("lenet5.onnx", "lenet300.onnx"):
        assert cli("-q", "compress", SAMPLES / name, "-o", tmp_path / "c.dcz").exit_code == 0
        for source in (SAMPLES / name, tmp_path / "c.dcz"):
            result = cli("export", source, "-o", tmp_path / "o.onnx")
            assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("value", ["0", "-1", "lots", "1.5G"])
def test_max_decoded_bytes_parsing(cli, fillers, tmp_path, value):
    result = cli("export", fillers, "-o", tmp_path / "o.onnx", "--max-decoded-bytes", value)
    assert_one_line_error(result)
    assert "--max-decoded-bytes" in result.stderr


# ------------------------------------------------------------- protobuf's 2 GiB message limit

class Huge:
    """Stands for a ModelProto over 2 GiB (building one would take 2 GB): ByteSize says so, and
    serializing would fail the way protobuf does."""

    def __init__(self, real):
        self.real = real

    def ByteSize(self):  # noqa: N802 - protobuf's name
        return container.MAX_GRAPH + 1

    def SerializeToString(self, **kw):  # noqa: N802
        raise EncodeError("Failed to serialize")

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_serialize_checks_the_size_exactly():
    model = onnx.load(str(SAMPLES / "lenet5.onnx"))
    assert container.serialize(model, "graph") == model.SerializeToString(deterministic=True)
    with pytest.raises(DczError, match=r"graph serializes to 2147483648 bytes, over protobuf's 2147483647-byte"):
        container.serialize(Huge(model), "graph")


def test_container_write_refuses_a_graph_over_2_gib():
    package = files.read_model(str(SAMPLES / "lenet5.onnx"))
    package.graph = Huge(package.graph)
    out = io.BytesIO()
    with pytest.raises(DczError, match="over protobuf's"):
        container.write(package, out)
    assert out.getvalue() == b""


@pytest.mark.parametrize("target", ["dcz", "onnx", "compress-report"])
def test_cli_graph_over_2_gib_is_one_line(cli, tmp_path, monkeypatch, target):
    real_to_onnx = onnx_io.to_onnx
    if target == "dcz":
        real_read = files.read_model

        def read_model(*args, **kw):
            package = real_read(*args, **kw)
            package.graph = Huge(package.graph)
            return package

        monkeypatch.setattr(files, "read_model", read_model)
        monkeypatch.setattr(files, "check_graph", lambda package: None)  # straight to container.write
        args = ["pack", SAMPLES / "lenet5.onnx", "-o", tmp_path / "o.dcz"]
    else:
        monkeypatch.setattr(onnx_io, "to_onnx", lambda *a, **kw: Huge(real_to_onnx(*a, **kw)))
        args = ["export", SAMPLES / "lenet5.onnx", "-o", tmp_path / "o.onnx"]
        if target == "compress-report":  # the gzip peer of the plain .onnx
            args = ["compress", SAMPLES / "lenet5.onnx", "-o", tmp_path / "o.dcz", "--report"]
    result = cli(*args)
    assert_one_line_error(result)
    assert "over protobuf's 2147483647-byte limit" in result.stderr
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------- found by benchmarks/fuzz_reader.py (.onnx)

def test_external_location_with_a_nul_byte(cli, tmp_path):
    """os.path.realpath raised ValueError (an internal error) on a location holding a NUL byte."""
    model = onnx.load(str(SAMPLES / "lenet5.onnx"))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="w\0.bin")
    weight.ClearField("raw_data")
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    result = cli("pack", tmp_path / "m.onnx", "-o", tmp_path / "m.dcz")
    assert_one_line_error(result)
    assert "is not a file name" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# ----------------------------------------------------- found by benchmarks/fuzz_reader.py (.npz)

def test_a_hostile_npy_header_prints_no_warning(tmp_path):
    """numpy parses the header dict as Python source: `1if` printed a SyntaxWarning line to stderr
    beside the one-line error."""
    import warnings
    import zipfile

    from deepcompress_cli.data import load_npz

    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1if, ), }"
    header += b" " * ((-(len(header) + 11)) % 64) + b"\n"
    npy = b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header + bytes(4)
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("input.npy", npy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DczError, match="not a readable .npy array"):
            load_npz(str(path), None)
    assert not [w for w in caught if issubclass(w.category, SyntaxWarning)]


def test_export_and_bench_state_the_decoded_size(cli, tmp_path):
    """The size a model decodes to is reported up front, beside the cap that refuses it."""
    import json

    from conftest import SAMPLES

    model = SAMPLES / "lenet300.onnx"
    assert cli("compress", model, "-o", tmp_path / "m.dcz").exit_code == 0
    weights = 4 * (64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)
    exported = json.loads(cli("--json", "export", tmp_path / "m.dcz", "-o", tmp_path / "m.onnx").stdout)
    assert exported["decoded_bytes"] == weights
    report = json.loads(cli("--json", "bench", model, tmp_path / "m.dcz", "--runs", "1", "--warmup", "0",
                            "--no-int8").stdout)
    assert [row["decoded_bytes"] for row in report["models"]] == [weights, weights]
