"""`deepcompress data`: raw arrays (or image files, with Pillow) -> a model-ready .npz (issue 13, item 8)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_one_line_error, shared_path
from deepcompress_cli.preprocess import crop_box, resize, resize_weights

RNG = np.random.default_rng(0)


def images(n=5, h=6, w=6, c=3) -> np.ndarray:
    return RNG.integers(0, 256, (n, h, w, c), dtype=np.uint8) if c else RNG.integers(0, 256, (n, h, w), dtype=np.uint8)


def conv_model(tmp_path, dims=("N", 3, 8, 8), name="input") -> str:
    """Conv over an image input -> global average -> Gemm to 4 classes."""
    c = dims[1] if dims[1] in (1, 3) else dims[3]
    nodes = [helper.make_node("Conv", [name, "w"], ["h"], kernel_shape=[3, 3]),
             helper.make_node("GlobalAveragePool", ["h"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"])]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              initializer=[numpy_helper.from_array(RNG.standard_normal((5, c, 3, 3)).astype(np.float32), "w"),
                                           numpy_helper.from_array(RNG.standard_normal((5, 4)).astype(np.float32), "fc")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


def data(cli, source, out, *options):
    return cli("data", source, "-o", out, *options)


# ------------------------------------------------------------------------------ values

def test_the_efficientnet_recipe_equals_the_numpy_expression_exactly(cli, tmp_path):
    x = images(5)
    np.savez(tmp_path / "raw.npz", images=x)
    out = tmp_path / "calib.npz"
    result = data(cli, tmp_path / "raw.npz", out, "--key", "images", "--input", "input", "--layout", "NCHW",
                  "--scale", 1, "--mean", 127, "--std", 128)
    assert result.exit_code == 0, result.stderr
    got = np.load(out)
    assert list(got) == ["input"]
    expected = ((x.astype(np.float64) - 127) / 128).transpose(0, 3, 1, 2).astype(np.float32)
    assert got["input"].dtype == np.float32 and np.array_equal(got["input"], expected)


def test_gray_images_with_labels_as_the_mnist_cnn_takes_them(cli, tmp_path):
    x, labels = images(7, 28, 28, 0), np.arange(7) % 10
    np.savez(tmp_path / "mnist.npz", images=x, labels=labels)
    out = tmp_path / "test.npz"
    result = data(cli, tmp_path / "mnist.npz", out, "--input", "input", "--layout", "NCHW",
                  "--scale", 1 / 255, "--mean", 0.5, "--std", 0.5)  # --key: the only array besides labels
    assert result.exit_code == 0, result.stderr
    got = np.load(out)
    expected = ((x.astype(np.float64) * (1 / 255) - 0.5) / 0.5).astype(np.float32)[:, None]
    assert np.array_equal(got["input"], expected)
    assert got["labels"].dtype == np.int64 and np.array_equal(got["labels"], labels)


def test_per_channel_mean_and_std_and_nhwc(cli, tmp_path):
    x = images(3)
    np.save(tmp_path / "raw.npy", x)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    result = data(cli, tmp_path / "raw.npy", tmp_path / "o.npz", "--input", "x", "--scale", 1 / 255,
                  "--mean", ",".join(map(str, mean)), "--std", ",".join(map(str, std)), "--dtype", "float16")
    assert result.exit_code == 0, result.stderr
    expected = ((x * (1 / 255) - np.array(mean)) / np.array(std)).astype(np.float16)
    assert np.array_equal(np.load(tmp_path / "o.npz")["x"], expected)


def test_nchw_source_take_and_an_integer_dtype(cli, tmp_path):
    x = images(6).transpose(0, 3, 1, 2)
    np.savez(tmp_path / "raw.npz", x=x)
    result = data(cli, tmp_path / "raw.npz", tmp_path / "o.npz", "--input", "x", "--source-layout", "NCHW",
                  "--layout", "NCHW", "--dtype", "int16", "--mean", 128, "--take", 4)
    assert result.exit_code == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "o.npz")["x"], x[:4].astype(np.int16) - 128)


def test_the_same_command_writes_the_same_bytes(cli, tmp_path, monkeypatch):
    import time

    np.savez(tmp_path / "raw.npz", images=images(4))
    args = ("--input", "input", "--layout", "NCHW", "--mean", 127, "--std", 128)
    assert data(cli, tmp_path / "raw.npz", tmp_path / "a.npz", *args).exit_code == 0
    later = time.time() + 3 * 86400  # what numpy.savez would stamp in the zip: the time of writing
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "localtime", lambda t=None: time.gmtime(later))
    assert data(cli, tmp_path / "raw.npz", tmp_path / "b.npz", *args).exit_code == 0
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        assert [i.date_time for i in z.infolist()] == [(1980, 1, 1, 0, 0, 0)]


# ------------------------------------------------------------------------------ resize

def test_resize_keeps_constants_and_box_averages_a_halving():
    x = np.full((1, 8, 12, 3), 7.0)
    np.testing.assert_allclose(resize(x, (3, 5)), 7.0)
    w = resize_weights(8, 4, 0.0, 8.0)  # halving: Pillow's bilinear weights 1/8, 3/8, 3/8, 1/8
    np.testing.assert_allclose(w[1, 1:5], [1 / 8, 3 / 8, 3 / 8, 1 / 8])
    np.testing.assert_allclose(w.sum(1), 1)
    np.testing.assert_allclose(w[0, :3], [3 / 7, 3 / 7, 1 / 7])  # the edge: renormalized


def test_center_crop_keeps_the_middle_at_the_same_scale():
    x = RNG.standard_normal((2, 4, 8, 1))
    assert crop_box(4, 8, (4, 4)) == (0.0, 2.0, 4.0, 4.0)
    np.testing.assert_allclose(resize(x, (4, 4)), x[:, :, 2:6], atol=1e-12)
    assert crop_box(10, 5, (2, 2)) == (2.5, 0.0, 5.0, 5.0)


def test_model_gives_input_layout_size_and_dtype(cli, tmp_path):
    model = conv_model(tmp_path)
    np.savez(tmp_path / "raw.npz", images=images(5, 10, 12), labels=np.arange(5) % 4)
    out = tmp_path / "o.npz"
    result = cli("--json", "data", tmp_path / "raw.npz", "-o", out, "--model", model, "--scale", 1 / 255)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["shape"] == [5, 3, 8, 8] and report["layout"] == "NCHW" and report["input"] == "input"
    assert report["bytes"] == out.stat().st_size
    bench = cli("bench", model, "--runs", 1, "--no-int8", "--data", out)
    assert bench.exit_code == 0, bench.stderr
    nhwc = conv_model(tmp_path, ("N", 8, 8, 3))  # a channels-last graph input: NHWC, no transpose
    result = cli("--json", "data", tmp_path / "raw.npz", "-o", tmp_path / "h.npz", "--model", nhwc)
    assert json.loads(result.stdout)["shape"] == [5, 8, 8, 3]


def test_the_api(tmp_path):
    import deepcompress_cli as dc

    np.savez(tmp_path / "raw.npz", images=images(3))
    report = dc.prepare_data(tmp_path / "raw.npz", tmp_path / "o.npz", input="x", layout="nchw", size=(4, 4),
                             mean=(1, 2, 3), progress=False)
    assert report["shape"] == [3, 3, 4, 4] and report["size"] == [4, 4]


# ------------------------------------------------------------------------------ refusals, one line

def bad(case, tmp_path):
    """(source, options) of a `data` call that must be exit 2, one line."""
    np.savez(tmp_path / "raw.npz", images=images(4))
    np.savez(tmp_path / "two.npz", a=images(4), b=images(4))
    np.savez(tmp_path / "gray.npz", images=images(4, 6, 6, 0))
    np.savez(tmp_path / "vec.npz", v=RNG.standard_normal((4, 10)))
    raw, ok = tmp_path / "raw.npz", ("--input", "x")
    return {
        "layout": (raw, (*ok, "--layout", "CHWN")),
        "size_zero": (raw, (*ok, "--size", "0")),
        "size_text": (raw, (*ok, "--size", "a,b")),
        "size_three": (raw, (*ok, "--size", "4,4,4")),
        "mean_two": (raw, (*ok, "--mean", "1,2")),
        "mean_gray": (tmp_path / "gray.npz", (*ok, "--mean", "1,2,3")),
        "std_zero": (raw, (*ok, "--std", "0")),
        "scale_nan": (raw, (*ok, "--scale", "nan")),
        "dtype": (raw, (*ok, "--dtype", "complex64")),
        "dtype_not_integral": (raw, (*ok, "--dtype", "uint8", "--std", "3")),
        "dtype_range": (raw, (*ok, "--dtype", "int8")),
        "take_zero": (raw, (*ok, "--take", "0")),
        "take_more": (raw, (*ok, "--take", "5")),
        "no_input": (raw, ()),
        "key_missing": (raw, (*ok, "--key", "pixels")),
        "labels_missing": (raw, (*ok, "--labels", "y")),
        "several_arrays": (tmp_path / "two.npz", ok),
        "size_of_vectors": (tmp_path / "vec.npz", (*ok, "--size", "4")),
        "missing_source": (tmp_path / "nope.npz", ok),
        "model_channels": (tmp_path / "gray.npz", ("--model", conv_model(tmp_path))),
        "model_input": (raw, ("--model", conv_model(tmp_path), "--input", "pixels")),
        "model_dtype": (raw, ("--model", conv_model(tmp_path), "--dtype", "int32")),
    }[case]


CASES = ["layout", "size_zero", "size_text", "size_three", "mean_two", "mean_gray", "std_zero", "scale_nan", "dtype",
         "dtype_not_integral", "dtype_range", "take_zero", "take_more", "no_input", "key_missing", "labels_missing",
         "several_arrays", "size_of_vectors", "missing_source", "model_channels", "model_input", "model_dtype"]


@pytest.mark.parametrize("case", CASES)
def test_bad_options_are_one_line(cli, tmp_path, case):
    source, options = bad(case, tmp_path)
    assert_one_line_error(data(cli, source, tmp_path / "o.npz", *options))
    assert not (tmp_path / "o.npz").exists()


def test_the_source_is_never_overwritten(cli, tmp_path):
    np.savez(tmp_path / "raw.npz", images=images(2))
    before = (tmp_path / "raw.npz").read_bytes()
    result = data(cli, tmp_path / "raw.npz", tmp_path / "raw.npz", "--input", "x")
    assert_one_line_error(result)
    assert "overwrite" in result.stderr and (tmp_path / "raw.npz").read_bytes() == before


# ------------------------------------------------------------------------------ image files (Pillow)

def test_a_folder_without_pillow_says_how_to_get_it(cli, tmp_path):
    try:
        import PIL  # noqa: F401
        pytest.skip("Pillow is installed")
    except ImportError:
        pass
    (tmp_path / "imgs").mkdir()
    result = data(cli, tmp_path / "imgs", tmp_path / "o.npz", "--input", "x")
    assert_one_line_error(result)
    assert "deepcompress[images]" in result.stderr


def test_a_folder_of_images_sorted_with_labels_from_sub_folders(cli, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path / "imgs"
    pixels = {}
    for cls in ("dog", "cat"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            x = images(1, 6, 8)[0]
            Image.fromarray(x).save(root / cls / f"{i}.png")
            pixels[(cls, i)] = x
    result = cli("--json", "data", root, "-o", tmp_path / "o.npz", "--input", "x", "--layout", "NCHW")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["classes"] == ["cat", "dog"]
    got = np.load(tmp_path / "o.npz")
    np.testing.assert_array_equal(got["labels"], [0, 0, 1, 1])
    expected = np.stack([pixels[k] for k in [("cat", 0), ("cat", 1), ("dog", 0), ("dog", 1)]])
    np.testing.assert_array_equal(got["x"], expected.transpose(0, 3, 1, 2).astype(np.float32))
    # the same pixels from an array give the same bytes (resized alike)
    np.savez(tmp_path / "raw.npz", images=expected)
    for src, out in ((root, "f.npz"), (tmp_path / "raw.npz", "a.npz")):
        assert data(cli, src, tmp_path / out, "--input", "x", "--size", "4", "--take", 3).exit_code == 0
    assert np.array_equal(np.load(tmp_path / "f.npz")["x"], np.load(tmp_path / "a.npz")["x"])


def test_images_of_different_sizes_need_size(cli, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(images(1, 6, 8)[0]).save(root / "a.png")
    Image.fromarray(images(1, 7, 8)[0]).save(root / "b.png")
    result = data(cli, root, tmp_path / "o.npz", "--input", "x")
    assert_one_line_error(result)
    assert "--size" in result.stderr
    assert data(cli, root, tmp_path / "o.npz", "--input", "x", "--size", "5,6").exit_code == 0


# ------------------------------------------------------------------------------ the real calibration set

@pytest.mark.slow
def test_natural_images_for_efficientnet_lite0(cli, tmp_path):
    source = shared_path("data", "natural_images_calib.npz")
    model = shared_path("models", "efficientnet_lite0.onnx")
    out = tmp_path / "calib.npz"
    result = data(cli, source, out, "--key", "images", "--input", "input", "--layout", "NCHW", "--scale", 1,
                  "--mean", 127, "--std", 128, "--take", 32)
    assert result.exit_code == 0, result.stderr
    x = np.load(source)["images"][:32]
    expected = ((x.astype(np.float64) - 127) / 128).transpose(0, 3, 1, 2).astype(np.float32)
    assert np.array_equal(np.load(out)["input"], expected)
    again = tmp_path / "again.npz"  # the model's input says the same
    assert data(cli, source, again, "--model", model, "--mean", 127, "--std", 128, "--take", 32).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_an_unreadable_image_is_one_line(cli, tmp_path):
    pytest.importorskip("PIL.Image")
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "a.png").write_bytes(b"\x89PNG not really")
    result = data(cli, root, tmp_path / "o.npz", "--input", "x")
    assert_one_line_error(result)
    assert "a.png" in result.stderr
