"""User data files (--data, --calibrate, --train, --val): headers first, only the arrays the model
uses, bounded before decoding, dtypes converted only when no meaning is lost (issue 12)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLES, assert_one_line_error
from deepcompress_cli.data import MAX_DATA_BYTES, InputSpec, input_specs, load_npz
from deepcompress_cli.errors import DczError

MODEL = SAMPLES / "lenet300.onnx"  # input 'input' float32 [N, 1, 8, 8]
DIGITS = SAMPLES / "digits_test.npz"
MiB = 1 << 20


def digits(n: int = 32) -> dict[str, np.ndarray]:
    data = np.load(DIGITS)
    return {"input": data["input"][:n], "labels": data["labels"][:n]}


def npy_header(shape, dtype) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return out.getvalue()


def zeros_member(shape, dtype) -> tuple[bytes, int, int]:
    """(raw deflate stream, crc32, uncompressed size) of an .npy member holding an all-zero array,
    made without ever holding the zeros: after the first MiB the window is all zeros, so the
    deflate blocks of one more MiB of zeros (byte-aligned by a sync flush) can simply repeat."""
    header = npy_header(shape, dtype)
    size = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=object))
    assert size % MiB == 0 and size >= 2 * MiB
    block, compressor = bytes(MiB), zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(header + block) + compressor.flush(zlib.Z_SYNC_FLUSH)
    again = compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)
    crc = zlib.crc32(header)
    for _ in range(size // MiB):
        crc = zlib.crc32(block, crc)
    return first + again * (size // MiB - 1) + compressor.flush(), crc, len(header) + size


def write_zip(path, members: dict[str, bytes | tuple[bytes, int, int]]) -> None:
    """A zip of deflated members: plain bytes, or a precompressed (deflate, crc, size) triple."""
    local, central = bytearray(), bytearray()
    for name, member in members.items():
        if isinstance(member, bytes):
            compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
            member = (compressor.compress(member) + compressor.flush(), zlib.crc32(member), len(member))
        data, crc, size = member
        encoded = name.encode()
        fields = (20, 0, 8, 0, 33, crc, len(data), size, len(encoded), 0)  # 33: 1980-01-01
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, len(local)) + encoded
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields) + encoded + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def bench(cli, data, *options):
    return cli("bench", MODEL, "--runs", 1, "--warmup", 0, "--no-int8", "--data", data, *options)


def traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------ zip bombs

def test_a_member_the_model_does_not_use_is_never_decompressed(cli, tmp_path):
    """256 MiB of zeros in 0.3 MB of file, beside the real input: the old loader decoded every
    member (a 4 MB file -> 4.2 GB RSS); only `input` and `labels` may be read now."""
    path = tmp_path / "d.npz"
    write_zip(path, {"input.npy": npy(digits()["input"]), "labels.npy": npy(digits()["labels"]),
                     "junk.npy": zeros_member((256, MiB // 4), np.float32)})
    assert path.stat().st_size < MiB
    peak = traced_peak(lambda: load_npz(str(path), input_specs(onnx.load(str(MODEL)).graph)))
    assert peak < 16 * MiB, peak
    result = bench(cli, path)
    assert result.exit_code == 0, result.stderr


def test_a_bomb_in_the_models_own_input_is_refused_from_its_header(cli, tmp_path):
    """A 64 MiB all-zero `input` of the right shape under a 1 MiB cap: refused before decoding."""
    path = tmp_path / "d.npz"
    write_zip(path, {"input.npy": zeros_member((MiB // 4, 1, 8, 8), np.float32)})
    spec = input_specs(onnx.load(str(MODEL)).graph)

    def load():
        with pytest.raises(DczError, match="over the limit of 1,048,576"):
            load_npz(str(path), spec, max_bytes=MiB)
    start = time.perf_counter()
    assert traced_peak(load) < 4 * MiB
    assert time.perf_counter() - start < 5
    result = bench(cli, path, "--max-data-bytes", "1M")
    assert_one_line_error(result)
    assert "--max-data-bytes" in result.stderr and "67,108,864 bytes" in result.stderr
    assert len(load_npz(str(path), spec, max_bytes=65 * MiB)["input"]) == MiB // 4  # the cap is what refused it


def test_a_header_declaring_more_than_its_member_holds_is_refused_at_once(cli, tmp_path):
    """1 TB declared in a few bytes: the old loader tried to allocate it."""
    path = tmp_path / "d.npz"
    write_zip(path, {"input.npy": npy_header((1 << 32, 1, 8, 8), np.float32) + bytes(256)})
    start = time.perf_counter()
    result = bench(cli, path, "--max-data-bytes", "2T")
    assert_one_line_error(result)
    assert "declares" in result.stderr and time.perf_counter() - start < 10
    result = bench(cli, path)  # and under the default cap, the cap says no first
    assert_one_line_error(result)


def test_the_default_cap():
    assert MAX_DATA_BYTES == 4 << 30


@pytest.mark.parametrize("value", ["0", "abc", "-5", "1.5G", "G"])
def test_bad_max_data_bytes_is_one_line(cli, value):
    assert_one_line_error(bench(cli, DIGITS, "--max-data-bytes", value))


def test_max_data_bytes_applies_to_training_data(cli, tmp_path):
    result = cli("prune", MODEL, "-o", tmp_path / "p.dcz", "--train", SAMPLES / "digits_train.npz",
                 "--max-data-bytes", "64K")
    assert_one_line_error(result)
    assert "--train" in result.stderr and "over the limit" in result.stderr
    assert not (tmp_path / "p.dcz").exists()


def test_max_data_bytes_needs_train(cli, tmp_path):
    result = cli("prune", MODEL, "-o", tmp_path / "p.dcz", "--max-data-bytes", "1G")
    assert_one_line_error(result)
    assert "--max-data-bytes" in result.stderr and "needs --train" in result.stderr


# ------------------------------------------------------------------------------ what is read

def test_only_the_models_arrays_are_read_and_others_may_be_anything(tmp_path):
    path = tmp_path / "d.npz"
    write_zip(path, {"input.npy": npy(digits()["input"]), "notes.txt": b"not an array",
                     "objects.npy": b"\x93NUMPY garbage", "labels.npy": npy(digits()["labels"])})
    spec = input_specs(onnx.load(str(MODEL)).graph)
    assert set(load_npz(str(path), spec)) == {"input", "labels"}
    assert set(load_npz(str(path), spec, labels=False)) == {"input"}
    with pytest.raises(DczError, match="is not a readable .npy"):
        load_npz(str(path))  # without specs: every member, each checked


def test_missing_input_names_what_the_file_has(cli, tmp_path):
    np.savez(tmp_path / "d.npz", pixels=digits()["input"])
    result = bench(cli, tmp_path / "d.npz")
    assert_one_line_error(result)
    assert "'input'" in result.stderr and "'pixels'" in result.stderr


def test_fifo_as_data_is_refused_not_read_forever(tmp_path):
    """The old loader blocked in open() on a FIFO without a writer: run in a subprocess with a
    timeout, so that a regression fails instead of hanging the suite."""
    fifo = tmp_path / "d.npz"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "deepcompress_cli", "bench", str(MODEL), "--runs", "1",
                           "--no-int8", "--data", str(fifo)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not a regular file" in done.stderr, done.stderr


def test_a_device_behind_a_symlink_is_refused(cli, tmp_path):
    link = tmp_path / "d.npz"
    link.symlink_to("/dev/zero")
    result = bench(cli, link)
    assert_one_line_error(result)
    assert "not a regular file" in result.stderr


# ------------------------------------------------------------------------------ bad data, one line

def bad_data(case: str, tmp_path):
    """(option, path) of a data file that used to escape as an internal error or pass silently."""
    path = tmp_path / "d.npz"
    x, labels = digits().values()
    arrays = {
        "structured": {"input": np.zeros(32, dtype=[("a", "f4"), ("b", "f4")])},
        "no_samples": {"input": x[:0], "labels": labels[:0]},
        "complex": {"input": x.astype(np.complex64)},
        "strings": {"input": x.astype(str)},
        "datetimes": {"input": x.astype(np.int64).astype("datetime64[s]")},
        "bool": {"input": x > 0},
        "uint8_images": {"input": (x * 16).astype(np.uint8), "labels": labels},
        "rank": {"input": x.reshape(32, 64)},
        "dims": {"input": x[:, :, :4]},
        "scalar": {"input": np.float32(1)},
        "labels_count": {"input": x, "labels": labels[:-1]},
    }
    if case == "npy":
        path = tmp_path / "d.npy"
        np.save(path, x)
    elif case == "duplicate":
        write_zip(path, {"input.npy": npy(x), "input": npy(x)})
    elif case == "not_npy":
        write_zip(path, {"input.npy": b"PK not numpy at all"})
    elif case == "truncated_member":
        member = npy(x)
        write_zip(path, {"input.npy": member[:-10]})
    elif case == "not_zip":
        path.write_bytes(b"hello, world")
    elif case == "directory":
        path.mkdir()
    elif case == "missing":
        pass
    else:
        np.savez(path, **arrays[case])
    return path


BAD = ["structured", "no_samples", "complex", "strings", "datetimes", "bool", "uint8_images", "rank",
       "dims", "scalar", "labels_count", "npy", "duplicate", "not_npy", "truncated_member", "not_zip", "directory",
       "missing"]


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_one_line(cli, tmp_path, case):
    assert_one_line_error(bench(cli, bad_data(case, tmp_path)))


@pytest.mark.parametrize("case", ["scalar", "structured", "no_samples", "uint8_images", "npy"])
def test_bad_calibration_data_is_one_line(cli, tmp_path, case):
    result = cli("bench", MODEL, "--runs", 1, "--warmup", 0, "--calibrate", bad_data(case, tmp_path))
    assert_one_line_error(result)
    assert "--calibrate" in result.stderr


@pytest.mark.parametrize("case", ["structured", "complex", "uint8_images", "no_samples"])
def test_bad_training_data_is_one_line(cli, tmp_path, case):
    result = cli("prune", MODEL, "-o", tmp_path / "p.dcz", "--train", bad_data(case, tmp_path))
    assert_one_line_error(result)
    assert "--train" in result.stderr


def test_uint8_images_name_the_input_and_the_dtype_it_takes(cli, tmp_path):
    """The issue's MNIST case: raw pixels used to be cast and scored a plausible accuracy."""
    result = bench(cli, bad_data("uint8_images", tmp_path))
    assert_one_line_error(result)
    assert "'input' holds uint8" in result.stderr and "float32" in result.stderr and "/ 255" in result.stderr


def test_complex_data_says_it_would_lose_the_imaginary_part(cli, tmp_path):
    assert "imaginary" in bench(cli, bad_data("complex", tmp_path)).stderr


# ------------------------------------------------------------------------------ safe casts

def test_float64_data_feeds_a_float32_model_like_float32_data(cli, tmp_path):
    import json

    x, labels = digits(100).values()
    np.savez(tmp_path / "f64.npz", input=x.astype(np.float64), labels=labels.astype(np.int32))
    np.savez(tmp_path / "f32.npz", input=x, labels=labels)
    runs = [json.loads(cli("--json", "bench", MODEL, "--runs", 1, "--no-int8", "--data", tmp_path / name).stdout)
            for name in ("f64.npz", "f32.npz")]
    assert runs[0]["models"][0]["modes"]["fp32"]["accuracy"] == runs[1]["models"][0]["modes"]["fp32"]["accuracy"]


def embedding_model(tmp_path, elem=TensorProto.INT32):
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("Flatten", ["e"], ["f"]),
         helper.make_node("Gemm", ["f", "w"], ["y"])], "emb",
        [helper.make_tensor_value_info("ids", elem, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        initializer=[numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "table"),
                     numpy_helper.from_array(rng.standard_normal((32, 5)).astype(np.float32), "w")])
    path = tmp_path / "emb.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_integers_cast_to_a_narrower_integer_only_when_they_fit(cli, tmp_path):
    model = embedding_model(tmp_path)
    ids = np.random.default_rng(0).integers(0, 50, (16, 4))  # int64, numpy's default
    np.savez(tmp_path / "ok.npz", ids=ids)
    result = cli("bench", model, "--runs", 1, "--no-int8", "--data", tmp_path / "ok.npz")
    assert result.exit_code == 0, result.stderr
    np.savez(tmp_path / "big.npz", ids=ids + (1 << 40))
    result = cli("bench", model, "--runs", 1, "--no-int8", "--data", tmp_path / "big.npz")
    assert_one_line_error(result)
    assert "int32" in result.stderr and "'ids'" in result.stderr
    np.savez(tmp_path / "float.npz", ids=ids.astype(np.float32))  # float -> integer: refused
    assert_one_line_error(cli("bench", model, "--runs", 1, "--no-int8", "--data", tmp_path / "float.npz"))


def test_convert_unit_rules():
    from deepcompress_cli.data import convert

    spec = InputSpec("x", None, np.dtype(np.float32))
    assert convert(np.ones(3, np.float16), spec).dtype == np.float32
    same = np.ones(3, np.float32)
    assert convert(same, spec) is same  # no copy when nothing changes
    for dtype in (np.uint8, np.int64, np.bool_, np.complex64):
        with pytest.raises(DczError, match="'x' holds"):
            convert(np.ones(3, dtype), spec)
    narrow = InputSpec("i", None, np.dtype(np.uint8))
    assert convert(np.array([0, 255]), narrow).dtype == np.uint8
    with pytest.raises(DczError, match="do not fit"):
        convert(np.array([-1, 3]), narrow)


def test_mutated_npz_files_are_read_or_refused_in_one_line(tmp_path):
    """Random byte flips and truncations of stored and deflated .npz files: zlib errors and numpy's
    header parser (tokenize.TokenError, SyntaxError) used to escape as internal errors."""
    import random

    spec = input_specs(onnx.load(str(MODEL)).graph)
    originals = []
    for save in (np.savez, np.savez_compressed):
        out = io.BytesIO()
        save(out, **digits(20))
        originals.append(out.getvalue())
    rng, path, outcomes = random.Random(1), tmp_path / "d.npz", set()
    for _ in range(400):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 8)):  # half of the flips in the first member's headers
            data[rng.randrange(400 if rng.random() < 0.5 else len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data[:rng.randrange(len(data))] if rng.random() < 0.1 else data))
        try:
            load_npz(str(path), spec, max_bytes=MiB)
            outcomes.add("read")
        except DczError:
            outcomes.add("refused")
    assert outcomes == {"read", "refused"}
