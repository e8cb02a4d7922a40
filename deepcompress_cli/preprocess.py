"""`data`: raw arrays or image files -> a model-ready `.npz` (the `--data`/`--calibrate`/`--train` file).

    deepcompress data natural_images.npz --key images -o calib.npz --model efficientnet_lite0.onnx \\
        --scale 1 --mean 127 --std 128

What it does, in this order, and why:
- **Source.** An `.npz` (the array `--key`, default the only one besides the labels; labels from
  `--labels KEY`, default an array named `labels` if the file has one) or an `.npy`; or, with
  Pillow (`pip install deepcompress[images]`), a folder of image files, sorted by their path
  (so the order, and the bytes written, never depend on the file system), decoded to RGB (gray
  when the model takes 1 channel). Images in sub-folders get labels: the class id of a
  sub-folder is its rank in the sorted sub-folder names (the ImageFolder convention).
  Arrays are images when they are N x H x W x C (`--source-layout NHWC`, the way image
  libraries give them, or NCHW) or N x H x W (gray); any other rank is taken as it is.
- **`--take N`**: the first N samples (after sorting).
- **`--size H[,W]`**: each image is center-cropped to the aspect ratio of H x W (nothing is
  cropped when it already has it) and resized with an antialiased bilinear (triangle) filter,
  in numpy for arrays and decoded files alike: the same result whether the pixels come from an
  array or a file, on every machine, with or without Pillow. Crop windows may be fractional
  (the filter weighs partial pixels), so no rounding shifts the image.
- **`value = (x * scale - mean) / std`**, `--mean`/`--std` one value or one per channel,
  computed in float64 and cast once to `--dtype` (so the result is the correctly rounded
  float32 of the exact value; an integer `--dtype` needs integral values that fit).
- **`--layout NCHW|NHWC`**: the output's axis order (a gray source gets its channel axis).
- **`--model`** fills in what the model's graph input says and the options leave out: the
  input name (when the model has one input), layout (a 4-D input with 1, 3 or 4 channels on
  exactly one of axes 1 and 3), size (its fixed H and W), channels and dtype; and the result is
  checked against that input before anything is written.
- **Output**: the arrays `NAME` and `labels` (int64) as an uncompressed `.npz` with fixed zip
  timestamps and attributes (`numpy.savez` stamps the current time), so the same command
  gives the same bytes; written atomically, never over the source, an image or the model.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np

from .data import LABELS, InputSpec, _layout, _open_regular, input_specs, load_npz, npz_keys
from .errors import DczError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "float64", "uint8", "int8", "int16", "int32", "int64")
MAX_SIDE = 1 << 14
CHUNK = 16  # samples resized and normalized at a time: bounds the float64 working copy
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: fixed, so outputs are reproducible
CHANNEL_COUNTS = (1, 3, 4)


def _numbers(value, cast, option: str, count: tuple[int, ...]) -> tuple:
    """`value` as a tuple of `cast` numbers: one number, a sequence, or text "a,b"."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, numbers.Number):
        parts = [value]
    else:
        try:
            parts = list(value)
        except TypeError:
            parts = None
    result = ()
    try:
        if parts is None or isinstance(value, bool):
            raise ValueError
        result = tuple(cast(p) for p in parts)
    except (TypeError, ValueError):
        parts = None
    if parts is None or len(result) not in count or not all(math.isfinite(v) for v in result):
        what = "a finite number" if count == (1,) else f"{_counts(count)} finite numbers, comma-separated"
        raise DczError(f"{option} must be {what}, got {value!r}")
    return result


def _counts(count: tuple[int, ...]) -> str:
    return ", ".join(map(str, count[:-1])) + f" or {count[-1]}" if len(count) > 1 else str(count[0])


def _integer(text):
    if isinstance(text, float) and not text.is_integer():
        raise ValueError
    return int(text)


@dataclass
class PrepConfig:
    """What `data` does to the raw arrays (its options), checked when made."""
    input: str | None = None  # the output array's name: the model's input
    key: str | None = None  # the source array (.npz)
    labels: str | None = None  # the source's labels array (.npz)
    layout: str | None = None  # the output's axis order, NCHW or NHWC (None: as the source)
    source_layout: str = "NHWC"  # the axis order of 4-D source arrays
    size: tuple[int, int] | None = None  # (H, W)
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dtype: str | None = None  # None: the model's input dtype, else float32
    take: int | None = None

    def __post_init__(self):
        for option, value in (("--input", self.input), ("--key", self.key), ("--labels", self.labels)):
            if value is not None and (not isinstance(value, str) or not value or not value.isprintable()):
                raise DczError(f"{option} must be a non-empty name, got {value!r}")
        if self.layout is not None:
            self.layout = str(self.layout).upper()
            if self.layout not in LAYOUTS:
                raise DczError(f"--layout must be NCHW or NHWC, got {self.layout!r}")
        self.source_layout = str(self.source_layout).upper()
        if self.source_layout not in LAYOUTS:
            raise DczError(f"--source-layout must be NCHW or NHWC, got {self.source_layout!r}")
        if self.size is not None:
            size = _numbers(self.size, _integer, "--size", (1, 2))
            if not all(1 <= s <= MAX_SIDE for s in size):
                raise DczError(f"--size must be 1..{MAX_SIDE} pixels, got {self.size!r}")
            self.size = (size[0], size[-1])
        self.scale = _numbers(self.scale, float, "--scale", (1,))[0]
        if self.scale == 0:
            raise DczError("--scale must not be 0")
        self.mean = _numbers(self.mean, float, "--mean", (1, 3, 4))
        self.std = _numbers(self.std, float, "--std", (1, 3, 4))
        if any(s == 0 for s in self.std):
            raise DczError(f"--std must not be 0, got {','.join(f'{v:g}' for v in self.std)}")
        if self.dtype is not None:
            self.dtype = str(self.dtype).lower()
            if self.dtype not in DTYPES:
                raise DczError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.take is not None and (isinstance(self.take, bool) or not isinstance(self.take, numbers.Integral)
                                      or self.take < 1):
            raise DczError(f"--take must be an integer >= 1, got {self.take!r}")


# ------------------------------------------------------------------------------ the model's input

@dataclass
class Target:
    """What the output must be: from the options, else from the model's graph input."""
    name: str
    layout: str | None  # NCHW, NHWC, NHW (gray, rank 3) or None (as the source)
    size: tuple[int, int] | None
    channels: int | None
    dtype: np.dtype
    spec: InputSpec | None


def target(config: PrepConfig, specs: list[InputSpec] | None, where: str) -> Target:
    spec = None
    if specs is not None:
        if config.input is not None:
            spec = next((s for s in specs if s.name == config.input), None)
            if spec is None:
                raise DczError(f"--input {config.input!r}: {where} has no such input (it has "
                               f"{', '.join(repr(s.name) for s in specs) or 'none'})")
        elif len(specs) == 1:
            spec = specs[0]
        else:
            raise DczError(f"{where} has {len(specs)} inputs ({', '.join(repr(s.name) for s in specs)}): "
                           "choose one with --input")
    name = config.input or (spec.name if spec else None)
    if name is None:
        raise DczError("data needs --input NAME (the model's input the arrays feed) or --model")
    layout, size, channels = config.layout, config.size, None
    dims = spec.dims if spec is not None else None
    if dims is not None and len(dims) == 4:
        if layout is None:
            first, last = dims[1] in CHANNEL_COUNTS, dims[3] in CHANNEL_COUNTS
            layout = "NCHW" if first and not last else "NHWC" if last and not first else None
        if layout is not None:
            c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
            channels = c
            if size is None and h and w:
                size = (h, w)
    elif dims is not None and len(dims) == 3 and layout is None:
        layout, channels = "NHW", 1
        if size is None and dims[1] and dims[2]:
            size = (dims[1], dims[2])
    if config.dtype is not None:
        dtype = np.dtype(config.dtype)
        if spec is not None and dtype != spec.dtype:
            raise DczError(f"--dtype {config.dtype}: the model's input {name!r} takes {spec.dtype}")
    elif spec is not None and spec.dtype.name in DTYPES:
        dtype = spec.dtype
    elif spec is not None:
        raise DczError(f"the model's input {name!r} takes {spec.dtype}, which data cannot write")
    else:
        dtype = np.dtype(np.float32)
    return Target(name, layout, size, channels, dtype, spec)


# ------------------------------------------------------------------------------ sources

class Source:
    """The raw samples: `count`, their geometry, and `chunks()` of float64 N x H x W x C (images)
    or as stored (other arrays)."""

    def __init__(self, count: int, shape: tuple, image: bool, labels: np.ndarray | None, files=(), classes=None,
                 layout: str | None = None):
        self.count, self.shape, self.image, self.labels = count, shape, image, labels
        self.files, self.classes = list(files), classes
        self.layout = layout  # the output's axis order when neither the options nor the model say


class ArraySource(Source):
    def __init__(self, array: np.ndarray, labels, source_layout: str):
        if array.ndim == 4 and source_layout == "NCHW":
            array = array.transpose(0, 2, 3, 1)  # a view: chunks are copied as they are converted
        image, layout = array.ndim in (3, 4), ("NHW" if array.ndim == 3 else source_layout)
        if array.ndim == 3:
            array = array[..., None]
        self.array = array
        super().__init__(len(array), array.shape[1:], image, labels, layout=layout if image else None)

    def chunks(self, progress):
        starts = range(0, self.count, CHUNK)
        for i in progress(starts, desc="data", total=len(starts), unit="batch"):
            yield self.array[i:i + CHUNK].astype(np.float64)


class FolderSource(Source):
    def __init__(self, root: str, mode: str, size):
        self.root, self.mode = root, mode
        files, names = _image_files(root)
        if not files:
            raise DczError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or its sub-folders")
        depths = {len(n) for n in names}
        labels = classes = None
        if depths == {2}:  # every image in a class folder
            classes = sorted({n[0] for n in names})
            labels = np.array([classes.index(n[0]) for n in names], np.int64)
        elif depths != {1}:
            raise DczError(f"{root}: images both beside and in sub-folders; put every image in a class "
                           "sub-folder (labels) or none (no labels)")
        first = self.decode(files[0])
        self.size = size
        gray = first.ndim == 2
        super().__init__(len(files), first.shape + (1,) * gray, True, labels, files, classes,
                         "NHW" if gray else "NHWC")

    def decode(self, path: str) -> np.ndarray:
        from PIL import Image

        try:
            with warnings.catch_warnings(), _open_regular(path, path) as f, Image.open(f) as image:
                # Pillow's decompression-bomb check (Image.MAX_IMAGE_PIXELS) is an error, not a stray warning
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
                return np.asarray(image.convert(self.mode))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DczError(f"{path}: not a readable image ({str(e)[:80]})") from None

    def chunks(self, progress):
        shape = None
        for path in progress(self.files, desc="data", total=len(self.files), unit="image"):
            pixels = self.decode(path)
            if pixels.ndim == 2:
                pixels = pixels[..., None]
            if self.size is None and shape is not None and pixels.shape != shape:
                raise DczError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels, the first image "
                               f"{shape[1]}x{shape[0]}: give --size to resize them alike")
            shape = pixels.shape
            yield pixels[None].astype(np.float64)


def _image_files(root: str) -> tuple[list[str], list[tuple[str, ...]]]:
    """Image paths under `root` (one level of sub-folders), sorted by their relative path; hidden
    names skipped; symlinked folders not followed."""
    found = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if not sub.name.startswith(".") and sub.is_file() and sub.name.lower().endswith(IMAGE_SUFFIXES):
                    found.append((sub.path, (entry.name, sub.name)))
        elif entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES):
            found.append((entry.path, (entry.name,)))
    found.sort(key=lambda f: f[1])
    return [f[0] for f in found], [f[1] for f in found]


def open_source(source: str, config: PrepConfig, channels: int | None, size, max_bytes) -> Source:
    where = f"SRC {source}"
    if os.path.isdir(source):
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise DczError(f"{source} is a folder: reading image files needs Pillow "
                           "(pip install 'deepcompress[images]')") from None
        if config.key is not None or config.labels is not None:
            raise DczError("--key and --labels choose arrays of an .npz; a folder's labels are its sub-folders")
        mode = {1: "L", 4: "RGBA"}.get(channels, "RGB")
        return FolderSource(source, mode, size)
    with _open_regular(source, where) as f:
        npy = f.read(6) == np.lib.format.MAGIC_PREFIX
    if npy:
        if config.key is not None or config.labels is not None:
            raise DczError(f"{where}: a single array (.npy) has no --key or --labels")
        array, labels = _load_npy(source, where, max_bytes), None
    else:
        keys = npz_keys(source, "SRC")
        labels_key = config.labels or (LABELS if LABELS in keys and config.key != LABELS else None)
        key = config.key
        if key is None:
            candidates = [k for k in keys if k != labels_key]
            if len(candidates) != 1:
                raise DczError(f"{where} has {len(candidates)} arrays besides the labels "
                               f"({', '.join(repr(k) for k in candidates[:8]) or 'none'}): choose one with --key")
            key = candidates[0]
        wanted = [key] + ([labels_key] if labels_key and labels_key != key else [])
        arrays = load_npz(source, None, "SRC", max_bytes, keys=wanted)
        array, labels = arrays[key], arrays.get(labels_key) if labels_key else None
        if labels is not None and (labels.ndim != 1 or labels.dtype.kind not in "iu" or
                                   (labels.size and labels.min() < 0)):
            raise DczError(f"{where}: labels {labels_key!r} must be a 1-D array of class ids >= 0 "
                           f"(got {labels.dtype} {list(labels.shape)})")
    if array.dtype.kind not in "iuf":
        raise DczError(f"{where}: the samples are {array.dtype}, not numbers")
    if array.ndim < 1 or not len(array):
        raise DczError(f"{where}: no samples (shape {list(array.shape)})")
    return ArraySource(array, None if labels is None else labels.astype(np.int64), config.source_layout)


def _load_npy(path: str, where: str, max_bytes) -> np.ndarray:
    from .data import MAX_DATA_BYTES

    limit = MAX_DATA_BYTES if max_bytes is None else max_bytes
    fmt = np.lib.format
    with _open_regular(path, where) as f:
        try:
            version = fmt.read_magic(f)
            shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
            if dtype.hasobject or dtype.fields is not None:
                raise DczError(f"{where}: dtype {dtype}, not plain numbers")
            if dtype.itemsize * math.prod(shape) > limit:
                raise DczError(f"{where}: the array decodes to {dtype.itemsize * math.prod(shape):,} bytes, over "
                               f"the limit of {limit:,} (raise it with --max-data-bytes)")
            f.seek(0)
            return fmt.read_array(f, allow_pickle=False)
        except DczError:
            raise
        except Exception as e:  # noqa: BLE001 - numpy's parser on a hostile file
            raise DczError(f"{where}: not a readable .npy ({str(e)[:80]})") from None


# ------------------------------------------------------------------------------ the conversion

def resize_weights(n_in: int, n_out: int, start: float, length: float) -> np.ndarray:
    """(n_out, n_in) weights of an antialiased bilinear resize of the window [start, start + length)
    of n_in pixels to n_out: a triangle filter widened by the downscale factor (as Pillow's
    BILINEAR), each row normalized (pixels past the edge do not exist)."""
    scale = length / n_out
    support = max(scale, 1.0)
    centers = start + (np.arange(n_out) + 0.5) * scale
    w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] + 0.5 - centers[:, None]) / support)
    return w / w.sum(axis=1, keepdims=True)


def crop_box(height: int, width: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(top, left, crop height, crop width): the centered window of the aspect ratio of `size`."""
    h, w = size
    if width * h > height * w:  # too wide: crop the sides
        crop = height * w / h
        return 0.0, (width - crop) / 2, float(height), crop
    crop = width * h / w
    return (height - crop) / 2, 0.0, crop, float(width)


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """N x H x W x C float64 center-cropped to the aspect of `size` and resized to it."""
    n, height, width, c = x.shape
    if (height, width) == tuple(size):
        return x
    top, left, ch, cw = crop_box(height, width, size)
    rows = resize_weights(height, size[0], top, ch)
    cols = resize_weights(width, size[1], left, cw)
    return np.einsum("oh,nhwc,pw->nopc", rows, x, cols, optimize=True)


def normalize(x: np.ndarray, config: PrepConfig, dtype: np.dtype, where: str) -> np.ndarray:
    """(x * scale - mean) / std in float64 (per channel on the last axis), cast once to `dtype`."""
    mean, std = np.asarray(config.mean), np.asarray(config.std)
    value = (x * config.scale - mean) / std
    if not np.isfinite(value).all():
        raise DczError(f"{where}: the values are not all finite (NaN or infinite in the source)")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        fraction = value[np.round(value) != value]
        if fraction.size:
            raise DczError(f"--dtype {dtype}: the values are not all integers (e.g. {fraction.flat[0]:g}); give a "
                           "float --dtype, or a --scale/--mean/--std that keeps them integral")
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise DczError(f"--dtype {dtype}: the values go from {value.min():g} to {value.max():g}, past its range")
    out = value.astype(dtype)
    if not np.isfinite(out).all():
        raise DczError(f"--dtype {dtype}: the values (up to {np.abs(value).max():g}) overflow it")
    return out


def prepare(source: str, output: str, config: PrepConfig, model: str | None = None, max_bytes: int | None = None,
            progress=lambda items, **kw: items) -> dict:
    from .files import atomic_output, read_model

    specs = input_specs(read_model(model).graph.graph) if model is not None else None
    goal = target(config, specs, f"--model {model}")
    src = open_source(source, config, goal.channels, config.size or goal.size, max_bytes)
    where = f"SRC {source}"
    count = src.count
    if config.take is not None:
        if config.take > count:
            raise DczError(f"--take {config.take}: {where} has {count} samples")
        count = config.take
        if isinstance(src, FolderSource):
            src.files = src.files[:count]
        else:
            src.array = src.array[:count]
        src.count = count
    labels = None if src.labels is None else src.labels[:count]
    if labels is not None and len(labels) != count:
        raise DczError(f"{where}: {count} samples but {len(labels)} labels")

    # the output's geometry, checked before any work
    size = config.size or goal.size
    if src.image:
        height, width, channels = src.shape
        layout = goal.layout or src.layout
        if goal.channels is not None and channels != goal.channels:
            raise DczError(f"{where}: the samples have {channels} channel{'s' * (channels != 1)}, but the model's "
                           f"input {goal.name!r} takes {goal.channels}")
        if layout == "NHW" and channels != 1:
            raise DczError(f"{where}: the samples have {channels} channels, but the model's input {goal.name!r} "
                           "takes gray images (N x H x W)")
        h, w = size or (height, width)
        per = {"NCHW": (channels, h, w), "NHWC": (h, w, channels), "NHW": (h, w)}[layout]
    else:
        layout = None
        channels = src.shape[-1] if src.shape else 1
        if config.size is not None or config.layout is not None:
            raise DczError(f"{where}: --size and --layout need images (N x H x W or N x H x W x C arrays); "
                           f"the samples are {list(src.shape)}")
        per = src.shape
    for option, values in (("--mean", config.mean), ("--std", config.std)):
        if len(values) != 1 and (not src.image or len(values) != channels):
            raise DczError(f"{option} has {len(values)} values, but the samples have "
                           f"{channels if src.image else 'no'} channel{'s' * (channels != 1 or not src.image)}")
    shape = (count, *per)
    if goal.spec is not None:
        _layout([goal.spec], {goal.name: (shape, goal.dtype)}, f"--model {model}")

    out = np.empty(shape, goal.dtype)
    done = 0
    for chunk in src.chunks(progress):
        if src.image and size is not None:
            chunk = resize(chunk, size)
        values = normalize(chunk, config, goal.dtype, where)
        if layout == "NCHW":
            values = values.transpose(0, 3, 1, 2)
        elif layout == "NHW":
            values = values[..., 0]
        out[done:done + len(values)] = values
        done += len(values)
    arrays = {goal.name: out}
    if labels is not None:
        if goal.name == LABELS:
            raise DczError("--input labels: that name is the labels array's")
        arrays[LABELS] = labels
    inputs = [source, *src.files] + ([model] if model is not None else [])
    with atomic_output(output, inputs) as f:
        written = write_npz(f, arrays)
    report = {"output": output, "source": source, "input": goal.name, "samples": count, "shape": list(shape),
              "dtype": goal.dtype.name, "layout": layout, "size": list(size) if size else None,
              "labels": labels is not None, "bytes": written}
    if src.classes is not None:
        report["classes"] = src.classes
    return report


def write_npz(f, arrays: dict[str, np.ndarray]) -> int:
    """`arrays` as an uncompressed .npz that numpy.load reads, with fixed member metadata (time,
    system, permissions) so that the same arrays give the same bytes. Returns the bytes written."""
    start = f.tell() if f.seekable() else 0
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIME)
            info.create_system = 3  # Unix, whatever the writer runs on
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return f.tell() - start if f.seekable() else None
