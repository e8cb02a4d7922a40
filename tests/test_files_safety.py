"""Files around the container: what may be read, what may be replaced, and what a file may print.

Outputs are only regular files and never one of the inputs (external data included); a full disk
or a kill leaves nothing behind; inputs are regular files read with checked reads (a file
truncated meanwhile is an error, not SIGBUS); external references neither enter nor leave a
`.dcz` except the ones export writes; text output cannot be driven by names in a file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_one_line_error
from deepcompress_cli import container, files, onnx_io
from deepcompress_cli.errors import DczError
from deepcompress_cli.files import read_model, write_dcz, write_onnx

RNG = np.random.default_rng(0)


def mlp(names=("w1", "w2")) -> onnx.ModelProto:
    w1 = RNG.standard_normal((16, 64), dtype=np.float32)
    w2 = RNG.standard_normal((64, 10), dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", names[0]], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", names[1]], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10])],
                              [numpy_helper.from_array(w1, names[0]), numpy_helper.from_array(w2, names[1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def external(t: TensorProto, location: str, offset: int = 0, length: int | None = None) -> bytes:
    """Turn `t` into an external tensor at `location`; returns the bytes it had."""
    data = t.raw_data
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(len(data) if length is None else length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return data


def external_mlp(folder, location="w.bin"):
    """model.onnx in `folder` with both weights in one external data file."""
    folder.mkdir(exist_ok=True)
    model = mlp()
    blob = b""
    for t in model.graph.initializer:
        blob += external(t, location, offset=len(blob))
    (folder / location).write_bytes(blob)
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def packed(tmp_path, model=None):
    src = tmp_path / "in.onnx"
    onnx.save(model or mlp(), str(src))
    write_dcz(read_model(str(src)), str(tmp_path / "m.dcz"))
    return tmp_path / "m.dcz"


def leftovers(folder, *keep) -> set:
    return {p.name for p in folder.iterdir()} - set(keep)


# --------------------------------------------------------------------------- outputs

def test_output_onto_a_fifo_is_refused_and_left_alone(tmp_path, cli):
    model = packed(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_one_line_error(cli("pack", model, "-o", fifo))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    link = tmp_path / "link.dcz"  # a symlink to a FIFO: the same
    link.symlink_to(fifo)
    assert_one_line_error(cli("prune", model, "-o", link))
    assert stat.S_ISFIFO(os.stat(link).st_mode) and link.is_symlink()


def test_output_onto_dev_null_is_refused_and_left_alone(tmp_path, cli, monkeypatch):
    """As root an atomic rename over /dev/null would replace the device.  A guard makes sure a
    regression cannot do it here: any rename outside tmp_path fails (and the message differs)."""
    real_replace = os.replace

    def guarded(src, dst, *args, **kwargs):
        if not os.path.abspath(dst).startswith(str(tmp_path)):
            raise OSError(errno.EPERM, "test guard: rename outside tmp_path")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", guarded)
    before = os.stat("/dev/null")
    model = packed(tmp_path)
    for command in (["pack", model], ["export", model]):
        result = cli(*command, "-o", "/dev/null")
        assert_one_line_error(result)
        assert "not a regular file" in result.stderr
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert leftovers(tmp_path, "in.onnx", "m.dcz") == set()


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_output_onto_a_character_device_is_refused(tmp_path, cli):
    model = packed(tmp_path)
    device = tmp_path / "null"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a second /dev/null
    assert_one_line_error(cli("pack", model, "-o", device))
    assert stat.S_ISCHR(os.lstat(device).st_mode)


def test_a_symlinked_output_is_written_through(tmp_path, cli):
    """The file a link points to is replaced; the link itself stays a link."""
    model = packed(tmp_path)
    target = tmp_path / "real.dcz"
    target.write_bytes(b"old")
    link = tmp_path / "latest.dcz"
    link.symlink_to(target.name)
    assert cli("pack", model, "-o", link).exit_code == 0
    assert link.is_symlink() and target.read_bytes()[:8] == container.MAGIC


def test_a_symlinked_export_with_external_data_is_refused(tmp_path, monkeypatch):
    """Readers look for `X.data` beside the name they open, the link's or the real file's."""
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 1000)
    package = read_model(str(packed(tmp_path)))
    (tmp_path / "real").mkdir()
    (tmp_path / "out.onnx").symlink_to(tmp_path / "real" / "model.onnx")
    with pytest.raises(DczError, match="symlink"):
        write_onnx(package, str(tmp_path / "out.onnx"))
    assert list((tmp_path / "real").iterdir()) == []


def test_output_onto_the_inputs_external_data_is_refused(tmp_path, cli):
    model = external_mlp(tmp_path / "m")
    weights = (tmp_path / "m" / "w.bin").read_bytes()
    assert_one_line_error(cli("pack", model, "-o", tmp_path / "m" / "w.bin"))
    alias = tmp_path / "alias.bin"  # another name of the same file: still the input
    os.link(tmp_path / "m" / "w.bin", alias)
    (tmp_path / "m" / "w.bin").unlink()
    os.link(alias, tmp_path / "m" / "w.bin")  # now two links: refused as input anyway
    alias.unlink()
    assert (tmp_path / "m" / "w.bin").read_bytes() == weights
    package = read_model(str(model))
    assert len(package.source_files) == 2  # the model and its data file
    with pytest.raises(DczError, match="input"):
        write_dcz(package, str(tmp_path / "m" / "w.bin"))
    assert (tmp_path / "m" / "w.bin").read_bytes() == weights


def test_output_onto_a_hard_link_of_the_input_is_refused(tmp_path, cli):
    model = packed(tmp_path)
    alias = tmp_path / "alias.dcz"
    os.link(model, alias)
    before = model.read_bytes()
    assert_one_line_error(cli("prune", model, "-o", alias))
    assert alias.read_bytes() == before


class DiskFull:
    """A file object whose disk is full: writes go to the buffer, flush and close fail."""

    def __init__(self, f, fail_write=False):
        self.f, self.fail_write = f, fail_write

    def write(self, data):
        if self.fail_write:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(memoryview(data).cast("B"))

    def flush(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        self.f.close()
        raise OSError(errno.ENOSPC, "No space left on device")

    def fileno(self):
        return self.f.fileno()


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "mkstemp"])
@pytest.mark.parametrize("fail_write", [False, True], ids=["at-close", "at-write"])
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, cli, monkeypatch, unnamed, fail_write):
    model = packed(tmp_path)
    out = tmp_path / "out.dcz"
    out.write_bytes(b"previous")
    if not unnamed:
        monkeypatch.setattr(files, "_open_unnamed", lambda directory: None)
    real_init = files._TempFile.__init__

    def init(self, target):
        real_init(self, target)
        self.file = DiskFull(self.file, fail_write)

    monkeypatch.setattr(files._TempFile, "__init__", init)
    result = cli("prune", model, "-o", out)
    assert_one_line_error(result)
    assert "No space left on device" in result.stderr
    assert out.read_bytes() == b"previous"
    assert leftovers(tmp_path, "in.onnx", "m.dcz", "out.dcz") == set()


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "mkstemp"])
def test_outputs_get_ordinary_permissions_and_no_visible_temp_file(tmp_path, monkeypatch, unnamed):
    if not unnamed:
        monkeypatch.setattr(files, "_open_unnamed", lambda directory: None)
    elif files._open_unnamed(str(tmp_path)) is None:
        pytest.skip("no O_TMPFILE on this filesystem")
    umask = os.umask(0o027)
    try:
        with files.atomic_output(str(tmp_path / "a.bin")) as f:
            f.write(b"x" * 1000)
            seen = leftovers(tmp_path)
    finally:
        os.umask(umask)
    assert (seen == set()) if unnamed else (len(seen) == 1)  # the unnamed file has no name yet
    assert (tmp_path / "a.bin").read_bytes() == b"x" * 1000
    assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == 0o640
    assert leftovers(tmp_path, "a.bin") == set()


# ---------------------------------------------------------------------------- inputs

def run_cli(*args, cwd=None, timeout=60):
    """The CLI in a subprocess with a 4 GiB address-space cap: a test of a regression that reads
    a device forever must fail, not hang or exhaust the machine."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
            "from deepcompress_cli.cli import main; sys.argv[0] = 'deepcompress'; main()")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_device_and_fifo_inputs_are_refused(tmp_path):
    zero = tmp_path / "model.onnx"
    zero.symlink_to("/dev/zero")
    fifo = tmp_path / "fifo.dcz"
    os.mkfifo(fifo)  # nobody writes: opening it blocking would hang
    for path in (zero, fifo):
        result = run_cli("info", path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "not a regular file" in result.stderr


def test_require_regular_file():
    assert stat.S_ISREG(files.require_regular_file(__file__).st_mode)
    for path, message in (("/dev/null", "not a regular file"), (os.path.dirname(__file__), "directory"),
                          ("/nonexistent/x", "no such file")):
        with pytest.raises(DczError, match=message):
            files.require_regular_file(path)


def test_a_file_truncated_while_read_is_an_error(tmp_path, cli, monkeypatch):
    """Between the size check and the read another process (`cp new.dcz model.dcz`) truncates
    the file: a one-line error, not a crash."""
    model = packed(tmp_path)
    real_open = files.open_regular

    class TruncatedMeanwhile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def fileno(self):
            return self.f.fileno()

        def readall(self):
            os.truncate(model, 100)
            return self.f.readall()

    monkeypatch.setattr(files, "open_regular", lambda path, **kw: TruncatedMeanwhile(real_open(path, **kw)))
    result = cli("info", model)
    assert_one_line_error(result)
    assert "changed while being read" in result.stderr


def test_a_file_truncated_after_reading_does_not_crash(tmp_path):
    """A memory-mapped input dies with SIGBUS when truncated; a read one does not notice."""
    model = packed(tmp_path, mlp())
    script = textwrap.dedent(f"""
        import os
        from deepcompress_cli.files import read_model, write_onnx
        package = read_model({str(model)!r})
        os.truncate({str(model)!r}, 0)
        write_onnx(package, {str(tmp_path / "out.onnx")!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr[-500:])


def test_external_data_truncated_while_read_is_an_error(tmp_path, cli, monkeypatch):
    model = external_mlp(tmp_path / "m")
    real = files.read_range

    def truncate_data(f, offset, length, path, into=None):
        if path == "w.bin":
            os.truncate(tmp_path / "m" / "w.bin", 0)
        return real(f, offset, length, path, into)

    monkeypatch.setattr(files, "read_range", truncate_data)
    assert_one_line_error(cli("pack", model, "-o", tmp_path / "out.dcz"))
    assert not (tmp_path / "out.dcz").exists()


# --------------------------------------------------------------- external references

def test_a_hard_linked_external_data_file_is_refused(tmp_path, cli):
    model = external_mlp(tmp_path / "m")
    data = tmp_path / "m" / "w.bin"
    outside = tmp_path / "secret.bin"  # a file from elsewhere on the disk, linked into the folder
    outside.write_bytes(data.read_bytes())
    data.unlink()
    os.link(outside, data)
    result = cli("pack", model, "-o", tmp_path / "out.dcz")
    assert_one_line_error(result)
    assert "hard link" in result.stderr
    outside.unlink()  # the only link left: accepted
    assert cli("pack", model, "-o", tmp_path / "out.dcz").exit_code == 0


def test_the_placeholder_location_is_never_a_file(tmp_path, cli, monkeypatch):
    """An input naming `dcz:tensor` is refused (not looked up in its folder), and bench on Constant
    weights does not open `dcz:tensor` in the current directory (it used to)."""
    model = mlp()
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / onnx_io.PLACEHOLDER_LOCATION).write_bytes(model.graph.initializer[0].raw_data)
    external(model.graph.initializer[0], onnx_io.PLACEHOLDER_LOCATION)
    onnx.save(model, str(folder / "model.onnx"))
    result = cli("pack", folder / "model.onnx", "-o", tmp_path / "a.dcz")
    assert_one_line_error(result)
    assert "reserved" in result.stderr

    constants = mlp()  # PaddlePaddle style: the weights in Constant nodes
    for t in list(constants.graph.initializer):
        constants.graph.node.insert(0, helper.make_node("Constant", [], [t.name], value=t))
    del constants.graph.initializer[:]
    dcz = packed(tmp_path, constants)
    (tmp_path / onnx_io.PLACEHOLDER_LOCATION).write_bytes(b"\x00" * 8)
    monkeypatch.chdir(tmp_path)
    result = cli("bench", dcz, "--runs", "1", "--warmup", "0")
    assert result.exit_code == 0, result.stderr


def model_with_training_info(initializer: TensorProto) -> onnx.ModelProto:
    model = mlp()
    info = model.training_info.add()
    info.initialization.CopyFrom(helper.make_graph(
        [helper.make_node("Identity", ["t0"], ["t1"])], "init", [], [helper.make_tensor_value_info("t1", TensorProto.FLOAT, [4])],
        [initializer]))
    return model


@pytest.mark.parametrize("location", ["/etc/passwd", "../x.bin"])
def test_training_info_external_data_outside_the_folder_is_refused(tmp_path, cli, location):
    (tmp_path / "x.bin").write_bytes(bytes(16))
    folder = tmp_path / "m"
    folder.mkdir()
    t = numpy_helper.from_array(np.zeros(4, np.float32), "t0")
    external(t, location)
    onnx.save(model_with_training_info(t), str(folder / "model.onnx"))
    assert_one_line_error(cli("pack", folder / "model.onnx", "-o", tmp_path / "a.dcz"))


def test_external_data_left_in_the_graph_is_inlined_everywhere(tmp_path, cli):
    """training_info and a malformed Constant (no output; a wrongly typed attribute) keep their
    tensors in the graph: their bytes move into the .dcz, and the export refers to no file."""
    t = numpy_helper.from_array(np.arange(4, dtype=np.float32), "t0")
    model = model_with_training_info(t)
    bad = [helper.make_node("Constant", [], [], value=numpy_helper.from_array(np.arange(3, dtype=np.float32), "c1")),
           helper.make_node("Constant", [], ["c2"], value=numpy_helper.from_array(np.arange(2, dtype=np.float32), "c2"))]
    bad[1].attribute[0].type = onnx.AttributeProto.FLOAT  # says FLOAT, holds a tensor
    model.graph.node.extend(bad)
    folder = tmp_path / "m"
    folder.mkdir()
    blob = b""
    for tensor in (model.training_info[0].initialization.initializer[0], bad[0].attribute[0].t, bad[1].attribute[0].t):
        blob += external(tensor, "w.bin", offset=len(blob))
    (folder / "w.bin").write_bytes(blob)
    onnx.save(model, str(folder / "model.onnx"))
    assert cli("pack", folder / "model.onnx", "-o", tmp_path / "a.dcz").exit_code == 0
    assert cli("export", tmp_path / "a.dcz", "-o", tmp_path / "out.onnx").exit_code == 0
    out = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    assert not [t.name for t in onnx_io.all_tensor_protos(out) if t.data_location == TensorProto.EXTERNAL]
    assert np.array_equal(numpy_helper.to_array(out.training_info[0].initialization.initializer[0]), np.arange(4))


def hostile_dcz(tmp_path, mutate) -> str:
    """A .dcz whose stored graph `mutate` changed after packing (the table is kept)."""
    package = read_model(str(packed(tmp_path)))
    mutate(package.graph)
    with open(tmp_path / "hostile.dcz", "wb") as f:
        container.write(package, f)
    return str(tmp_path / "hostile.dcz")


def placeholder(name: str) -> TensorProto:
    t = numpy_helper.from_array(np.zeros((16, 64), np.float32), name)
    onnx_io._make_placeholder(t, name)
    return t


def test_the_reader_refuses_external_references_anywhere_else(tmp_path, cli):
    def training_info_pointing_outside(graph):
        t = numpy_helper.from_array(np.zeros(4, np.float32), "t0")
        external(t, "/etc/passwd")
        graph.training_info.add().initialization.initializer.append(t)

    def placeholder_in_training_info(graph):
        graph.training_info.add().initialization.initializer.append(placeholder("w1"))

    def placeholder_in_a_constant_without_output(graph):
        init = graph.graph.initializer[0]  # w1: moved into a Constant node that has no output
        graph.graph.node.append(helper.make_node("Constant", [], [], value=init))
        graph.graph.initializer.remove(init)
        graph.graph.node.append(helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(
            np.zeros((16, 64), np.float32))))

    def placeholder_in_a_mistyped_attribute(graph):
        init = graph.graph.initializer[0]
        node = helper.make_node("Constant", [], ["w1"], value=init)
        node.attribute[0].type = onnx.AttributeProto.FLOAT
        graph.graph.initializer.remove(init)
        graph.graph.node.insert(0, node)

    for mutate in (training_info_pointing_outside, placeholder_in_training_info,
                   placeholder_in_a_constant_without_output, placeholder_in_a_mistyped_attribute):
        path = hostile_dcz(tmp_path, mutate)
        for command in (["info", path], ["export", path, "-o", tmp_path / "out.onnx"]):
            assert_one_line_error(cli(*command)), mutate.__name__
        assert not (tmp_path / "out.onnx").exists()


def test_element_counts_are_exact_python_ints(tmp_path, cli):
    """(2**62 + 1) * 4 int64 elements is 2**67 bytes; numpy's int64 product wraps it to 32."""
    model = mlp()
    shape = TensorProto(name="big", data_type=TensorProto.INT64, dims=[2**62 + 1, 4],
                        raw_data=np.arange(4, dtype=np.int64).tobytes())
    model.graph.node.insert(0, helper.make_node("Constant", [], ["unused"], value=shape))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "w.bin").write_bytes(external(model.graph.node[0].attribute[0].t, "w.bin", length=32))
    onnx.save(model, str(folder / "model.onnx"))
    result = cli("pack", folder / "model.onnx", "-o", tmp_path / "a.dcz")
    assert_one_line_error(result)
    assert not (tmp_path / "a.dcz").exists()


def test_export_refers_to_no_file_but_its_own_data(tmp_path, monkeypatch):
    package = read_model(str(packed(tmp_path)))
    t = numpy_helper.from_array(np.zeros(4, np.float32), "t0")
    external(t, "/etc/passwd")
    package.graph.training_info.add().initialization.initializer.append(t)  # past the reader
    with pytest.raises(DczError, match="external"):
        write_onnx(package, str(tmp_path / "out.onnx"))
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 1000)  # the data file export writes is fine
    del package.graph.training_info[:]
    write_onnx(package, str(tmp_path / "out.onnx"))
    out = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    assert {e.value for t in onnx_io.all_tensor_protos(out) for e in t.external_data if e.key == "location"} == \
        {"out.onnx.data"}


# ------------------------------------------------------------------------------ text

FORGED = "w\r\x1b[2K\x1b[32mALL GATES PASSED\x1b[0m\nok\u202e\x08"


def test_names_cannot_forge_lines_or_drive_the_terminal(tmp_path, cli):
    model = packed(tmp_path, mlp(names=(FORGED, "w2")))
    result = cli("info", model)
    assert result.exit_code == 0, result.stderr
    for c in "\r\x1b\u202e\x08":
        assert c not in result.stdout
    assert not any(line.lstrip().startswith(("ALL GATES", "ok")) for line in result.stdout.splitlines())
    assert "\\x1b[32mALL GATES PASSED" in result.stdout
    names = [t["name"] for t in json.loads(cli("--json", "info", model).stdout)["tensors"]]
    assert FORGED in names  # JSON keeps the exact name (escaped by JSON itself)
    result = cli("prune", model, "-o", tmp_path / "p.dcz")  # stage tables too
    assert result.exit_code == 0 and "\x1b" not in result.stdout and "\r" not in result.stdout


def test_printable():
    from deepcompress_cli.text import printable

    assert printable("plain name/with: punctuation") == "plain name/with: punctuation"
    assert printable("a\nb\tc\x1b\x7f\x9b\u202e\u2028") == "a\\nb\\tc\\x1b\\x7f\\x9b\\u202e\\u2028"
    assert printable("line 1\nline\r2", keep_newlines=True) == "line 1\nline\\r2"
