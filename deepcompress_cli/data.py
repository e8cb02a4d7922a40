"""User data files (`--data`, `--calibrate`, `--train`, `--val`): named arrays in an `.npz`.

The contract: one array per graph input, keyed by the input's name, one row per sample, plus an
optional `labels` array of integer class ids. An `.npz` is a zip of `.npy` members, and a member's
size is whatever its header claims, so the file is read in two passes:

1. headers only: every wanted member's `.npy` header (dtype, shape) is read from the start of its
   stream, without decompressing the body. Members the model does not use are never opened.
   Each array is checked against its graph input (rank, fixed dims, dtype) and the sum of the
   decoded sizes against `max_bytes`, so a zip bomb (a small file declaring a huge array) is
   refused before anything is allocated;
2. bodies: only then are the checked arrays decoded.

Dtypes (`convert`): data reaches the model in the dtype its input declares, cast only when the
cast keeps the values the user meant:
- float -> float (float64 -> float32, float16 -> float32, ...) and complex -> complex: allowed,
  numpy's default is float64 and rounding to the model's type is what any runtime would do;
- integer -> integer: allowed when every value fits the declared type (int64 ids -> int32);
- anything else is refused, naming the input and the dtype it takes. In particular integer ->
  float: uint8 images fed to a float model are almost always missing their normalization
  (MNIST scores a plausible 96.7 % instead of 98.8 % on raw pixels), so the user must scale them.
  Bool, complex, strings, datetimes, structured and object arrays are never converted.

Sample layout (`sample_layout`): which axis of each input's array holds the samples.
- An ordinary input has its samples on axis 0, whatever the declared size there (a fixed
  batch such as [1, 3, 224, 224] takes data [n, 3, 224, 224], run `1` at a time).
- An input whose declared shape puts the batch elsewhere (a recurrent state [2, N, 128] beside
  `input` [N, 512]): the sample axis is the axis whose symbolic dim has the same name as the
  batch dim of the other inputs (the name most of the inputs with a symbolic axis 0 carry
  there). If names don't tell and axis 0 is fixed, it is the one symbolic axis where the
  array's size equals the sample count of the ordinary inputs (or the only symbolic axis when
  no other input counts samples); none or several such axes is an error that names them.
- A shared input, the same for every sample and passed whole to every batch: a 0-d array for a
  scalar input (a sample rate `sr`), or, for an input with no symbolic dim, an array of exactly
  the declared shape when another input carries the samples. When no input has a symbolic dim
  (a fixed-batch model), every input has its samples on axis 0 instead, unless the counts then
  differ: arrays of exactly their declared shape are then the shared ones.
- `labels` (and the model's outputs) have their samples on axis 0.
Every input with samples must have as many as the others. A wrong rank, a wrong fixed dim, a
scalar input given an array (or the reverse) is a one-line DczError naming the input, what the
array is and what the graph declares. Random inputs (`bench` without `--data`, the default
`compress`) follow the same layout, except that a scalar input cannot be made up (it is a
setting, not data): give data.

Random input shapes (`random_shapes`): a model's symbolic dims need sizes that let it run and
that look like real use (all 1 breaks a detector's Concat and a window longer than the signal;
one token is no test of an encoder). In order:
- `bench --shape NAME=D0,D1,...` gives an input's whole shape (its size on the sample axis is
  the batch of each run); a dim name it fixes has that size in every input that carries it;
- the sample axis holds the samples; any other dim shares the size of a same-named dim already
  sized;
- otherwise by the dim's name: batch-like (`batch`, `N`, `bs`) 1; sequence-like (`seq`,
  `length`, `time`, `frames`, `samples`, `tokens`) TOKENS for an integer input (token ids),
  TIME for a float one (audio, frames); spatial (`height`, `width`, `h`, `w`) SPATIAL; an
  unnamed dim by its input's rank: spatial in rank >= 4 (images), else sequence-like;
- time and spatial sizes are raised to what the model's sliding windows need (the largest
  kernel span times the stride before it, `graphs.window_reach`) and rounded up to a multiple
  of the model's total stride, so that every window fits and a detector's up- and downsampled
  branches line up (at most MAX_DEFAULT_SIZE).
"""

from __future__ import annotations

import os
import re
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import DczError

# The default cap on the decoded bytes of the arrays one file contributes. A fixed number, not a
# share of this machine's RAM, so that a file accepted in one place is accepted everywhere (a CI job
# does not start failing on a smaller runner). 4 GiB is over 20x the MNIST training set in float32
# and more than the numpy interpreter can get through in a reasonable run (a billion float32
# values); a bigger data set is a deliberate choice: --max-data-bytes raises it.
MAX_DATA_BYTES = 4 << 30

LABELS = "labels"

# Sizes of symbolic dims in random inputs (module docstring): text is judged on 16 tokens (a
# short sentence), a float sequence on at least 128 steps, an image on 224 x 224 (ImageNet's).
TOKENS = 16
TIME = 128
SPATIAL = 224
MAX_DEFAULT_SIZE = 4096
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty zip


@dataclass(frozen=True)
class InputSpec:
    """What a graph input declares: its dims (None: unknown rank; a None dim: symbolic), dtype
    and the names of its symbolic dims (`symbols`, None where fixed or unnamed)."""
    name: str
    dims: tuple[int | None, ...] | None
    dtype: np.dtype
    symbols: tuple[str | None, ...] | None = None

    @classmethod
    def of(cls, name: str, tensor_type) -> InputSpec:
        """From an ONNX TypeProto.Tensor; an undeclared element type is taken as float32."""
        from onnx import helper

        dims = symbols = None
        if tensor_type.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                         for d in tensor_type.shape.dim)
            symbols = tuple(d.dim_param or None if d.HasField("dim_param") else None
                            for d in tensor_type.shape.dim)
        elem = tensor_type.elem_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype(np.float32)
        except (KeyError, TypeError, ValueError):
            raise DczError(f"the model's input {name!r} has an unknown element type {elem}") from None
        return cls(name, dims, dtype, symbols)


def input_specs(graph) -> list[InputSpec]:
    """The graph inputs data must feed: those that are not initializers (ONNX < 4 lists both)."""
    initializers = {t.name for t in graph.initializer}
    return [InputSpec.of(i.name, i.type.tensor_type) for i in graph.input if i.name not in initializers]


# ------------------------------------------------------------------------------ random input shapes

def parse_shape(text: str, option: str = "--shape") -> tuple[str, tuple[int, ...]]:
    """`NAME=D0,D1,...` -> (NAME, dims); `NAME=` is a scalar. A malformed one is a one-line error."""
    name, equals, dims = text.rpartition("=")
    if not equals or not name:
        raise DczError(f"{option} {text!r}: expected NAME=D0,D1,... (an input name, then its sizes)")
    try:
        shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
    except ValueError:
        raise DczError(f"{option} {name}: sizes are integers, as in {name}=1,3,224,224 (got {dims!r})") from None
    if any(d < 1 for d in shape):
        raise DczError(f"{option} {name}: sizes are at least 1 (got {dims!r})")
    return name, shape


def check_shapes(specs: list[InputSpec], given: dict[str, tuple[int, ...]], option: str = "--shape") -> None:
    """Each given shape names an input and agrees with its rank, fixed dims and the other shapes'
    sizes of the same dim names: a one-line error naming the input otherwise."""
    by_name = {s.name: s for s in specs}
    sizes: dict[str, tuple[int, str]] = {}  # dim name -> (size, input that gave it)
    for name, shape in given.items():
        spec = by_name.get(name)
        if spec is None:
            have = ", ".join(repr(s.name) for s in specs[:8]) or "none"
            raise DczError(f"{option} {name}: the model has no such input (its inputs: {have})")
        if spec.dims is None:
            continue
        text = ",".join(map(str, shape))
        if len(shape) != len(spec.dims):
            raise DczError(f"{option} {name}={text}: rank {len(shape)}, but the model's input takes "
                           f"{_declared(spec)} (rank {len(spec.dims)})")
        for axis, (have, want, symbol) in enumerate(zip(shape, spec.dims, spec.symbols or (None,) * len(shape))):
            if want is not None and have != want:
                raise DczError(f"{option} {name}={text}: dim {axis} is fixed at {want} in the model's input "
                               f"({_declared(spec)})")
            if want is None and symbol:
                size, where = sizes.setdefault(symbol, (have, name))
                if size != have:
                    raise DczError(f"{option} {name}={text}: dim {symbol!r} is {have} here but {size} in "
                                   f"{option} {where}")


def shape_batch(specs: list[InputSpec], layout: dict, given: dict[str, tuple[int, ...]]) -> int | None:
    """The batch `--shape` sets: the given size on the sample axis of the first input it shapes."""
    for spec in specs:
        axis = layout.get(spec.name)
        if spec.name in given and axis is not None and axis < len(given[spec.name]):
            return given[spec.name][axis]
    return None


def dim_kind(symbol: str | None) -> str | None:
    """"batch", "time" or "spatial" from a dim's name (`batch_size`, `sequence_length`, `height`,
    `seqLen`, `num_frames`), None when the name does not tell (`unk__214`, `DynamicDimension.1`)."""
    words = re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", symbol or "").lower())
    if any(w in ("n", "b", "bs") or w.startswith("batch") for w in words):
        return "batch"
    if any(w in ("h", "w", "height", "width", "rows", "cols") for w in words):
        return "spatial"
    if any(w in ("t", "l", "len") or w.startswith(("seq", "length", "time", "frame", "sample", "step", "token"))
           for w in words):
        return "time"
    return None


def random_shapes(specs: list[InputSpec], layout: dict, samples: int, given: dict | None = None,
                  stride: int = 1, reach: int = 1) -> dict[str, list[int]]:
    """Each input's shape for `samples` random samples, by the rule in the module docstring
    (`given`: --shape, checked by `check_shapes`; `stride`, `reach`: `graphs.window_reach`)."""
    given = given or {}
    named: dict[str, int] = {}  # dim name -> size, shared by every input that carries it
    for name, shape in given.items():
        spec = next(s for s in specs if s.name == name)
        for axis, symbol in enumerate(spec.symbols or ()):
            if symbol and axis != layout.get(name):
                named.setdefault(symbol, shape[axis])

    def fit(size):
        size = max(size, reach)
        return min(MAX_DEFAULT_SIZE, -(-size // stride) * stride)

    def default(spec, symbol):
        kind = dim_kind(symbol)
        if kind == "batch":
            return 1
        if kind is None:
            kind = "spatial" if len(spec.dims) >= 4 else "time"  # [N, C, H, W] or [N, H, W, C] images
        if kind == "time" and spec.dtype.kind in "biu":
            return TOKENS
        return fit(TIME if kind == "time" else SPATIAL)

    shapes = {}
    for spec in specs:
        axis = layout.get(spec.name)
        if spec.name in given:
            dims = list(given[spec.name])
        elif spec.dims is None:
            dims = [samples]
        else:
            dims = []
            for a, (d, symbol) in enumerate(zip(spec.dims, spec.symbols or (None,) * len(spec.dims))):
                if d is None and a != axis:
                    d = named.get(symbol) if symbol else None
                    if d is None:
                        d = default(spec, symbol)
                        if symbol:
                            named[symbol] = d
                dims.append(d)
        if axis is not None:
            dims[axis] = samples
        shapes[spec.name] = dims
    return shapes


# ------------------------------------------------------------------------------ sample layout

def sample_layout(specs: list[InputSpec], arrays: dict, where: str = "--data") -> dict[str, int | None]:
    """Input name -> the axis of its array that holds the samples (0 for ordinary inputs, 1 for a
    state [2, N, 128]), None for an input shared by every sample; under the rule in the module
    docstring. Names, shapes and (for arrays) dtypes are checked: a one-line DczError otherwise."""
    shapes = {}
    for spec in specs:
        if spec.name not in arrays:
            have = ", ".join(repr(k) for k in list(arrays)[:5]) or "none"
            raise DczError(f"{where}: no array named {spec.name!r} (the model's input; the data has {have})")
        array = arrays[spec.name]
        if hasattr(array, "dtype"):
            _check_dtype(spec.name, np.dtype(array.dtype), spec.dtype, where)
        shapes[spec.name] = (tuple(np.shape(array)), getattr(array, "dtype", None))
    return layout_of_shapes(specs, shapes, where)


def declared_layout(specs: list[InputSpec]) -> dict[str, int | None]:
    """The layout random inputs get from the declared shapes alone: as `sample_layout` would find
    it for data of those shapes (an input whose sample axis only the data could tell: its first
    symbolic axis)."""
    batch = _batch_name(specs)
    symbolic = any(s.dims is None or None in s.dims for s in specs)
    layout = {}
    for spec in specs:
        if spec.dims is None:
            layout[spec.name] = 0
        elif not spec.dims:
            layout[spec.name] = None
        elif None not in spec.dims:
            layout[spec.name] = None if symbolic else 0
        else:
            axis = _named_axis(spec, batch)
            layout[spec.name] = axis if axis is not None else spec.dims.index(None)
    return layout


def sample_count(arrays: dict, layout: dict) -> int:
    """How many samples `arrays` hold (1 when every input is shared and there are no labels)."""
    for name, axis in layout.items():
        if axis is not None and name in arrays:
            return int(np.shape(arrays[name])[axis])
    if LABELS in arrays:
        return len(arrays[LABELS])
    return 1


def take(arrays: dict, layout: dict, start: int, stop: int) -> dict:
    """Samples [start, stop) of each array along its sample axis; shared inputs whole; arrays
    not in `layout` (labels) on axis 0."""
    out = {}
    for name, array in arrays.items():
        axis = layout.get(name, 0)
        out[name] = array if axis is None else array[(slice(None),) * axis + (slice(start, stop),)]
    return out


def pick(arrays: dict, layout: dict, index: np.ndarray) -> dict:
    """The samples at `index` (an integer array) of each array, as `take` slices them."""
    out = {}
    for name, array in arrays.items():
        axis = layout.get(name, 0)
        out[name] = array if axis is None else np.take(array, index, axis=axis)
    return out


def batch_size(specs: list[InputSpec], layout: dict) -> int | None:
    """The batch size the model fixes: the declared size on the sample axis of its inputs (e.g.
    1 for [1, 3, 224, 224]), None when it is symbolic."""
    for spec in specs:
        axis = layout.get(spec.name)
        if axis is not None and spec.dims and spec.dims[axis] is not None:
            return spec.dims[axis]
    return None


def _batch_name(specs: list[InputSpec]) -> str | None:
    """The name of the batch dim: the one most inputs with a symbolic axis 0 carry there."""
    names = [s.symbols[0] for s in specs if s.dims and s.dims[0] is None and s.symbols and s.symbols[0]]
    return max(names, key=names.count) if names else None  # max keeps the first of equals


def _named_axis(spec: InputSpec, batch: str | None) -> int | None:
    """The one symbolic axis of `spec` named like the batch dim, if there is exactly one."""
    if batch is None or not spec.symbols:
        return None
    named = [a for a, (d, s) in enumerate(zip(spec.dims, spec.symbols)) if d is None and s == batch]
    return named[0] if len(named) == 1 else None


def _declared(spec: InputSpec, axis: int | None = None) -> str:
    dims = spec.dims
    if dims is None:
        return f"{spec.dtype} of any shape"
    if not dims:
        return f"a scalar {spec.dtype}"
    symbols = spec.symbols or (None,) * len(dims)
    text = ", ".join(str(d) if d is not None else (s or ("N" if a == axis else "?"))
                     for a, (d, s) in enumerate(zip(dims, symbols)))
    return f"{spec.dtype} [{text}]"


def _array(shape: tuple, dtype) -> str:
    return f"a 0-d {dtype} array" if not shape else f"{dtype} {list(shape)}"


def layout_of_shapes(specs: list[InputSpec], shapes: dict[str, tuple], where: str) -> dict[str, int | None]:
    """`sample_layout` on (shape, dtype) pairs: from .npy headers before decoding, or arrays."""
    batch = _batch_name(specs)
    symbolic = any(s.dims is None or None in s.dims for s in specs)
    layout: dict[str, int | None] = {}
    deferred, exact = [], []

    def mismatch(spec, axis=None, why=""):
        shape, dtype = shapes[spec.name]
        where_samples = f" (samples on axis {axis})" if axis is not None else ""
        return DczError(f"{where}: {spec.name!r} is {_array(shape, dtype or 'an')}, but the model's input takes "
                        f"{_declared(spec, axis)}{where_samples}{why}")

    def check_dims(spec, axis):
        shape = shapes[spec.name][0]
        if len(shape) != len(spec.dims):
            raise mismatch(spec, axis, f": rank {len(spec.dims)}, not {len(shape)}")
        for a, (have, want) in enumerate(zip(shape, spec.dims)):
            if a != axis and want is not None and have != want:
                raise mismatch(spec, axis)
        layout[spec.name] = axis

    for spec in specs:
        shape = shapes[spec.name][0]
        if spec.dims is None:  # unknown rank: anything; a 0-d array is shared
            layout[spec.name] = None if not shape else 0
        elif not spec.dims:
            if shape:
                raise mismatch(spec, why=", the same for every sample: give a 0-d array such as "
                                         f"numpy.array(16000, {spec.dtype.name!r})")
            layout[spec.name] = None
        elif not shape:
            raise mismatch(spec, 0, ", not a scalar: one row per sample")
        elif None not in spec.dims:
            if symbolic and shape == spec.dims:
                layout[spec.name] = None  # shared; samples come from the other inputs
            elif symbolic and len(shape) == len(spec.dims) and shape[1:] == spec.dims[1:]:
                layout[spec.name] = 0  # a fixed batch beside inputs with a symbolic one
            else:
                check_dims(spec, 0)
                if shape == spec.dims:
                    exact.append(spec.name)
        else:
            axis = _named_axis(spec, batch)
            if axis is None and spec.dims[0] is None:
                axis = 0
            if axis is None:
                deferred.append(spec)
            else:
                check_dims(spec, axis)
    counts = {name: shapes[name][0][axis] for name, axis in layout.items() if axis is not None}
    if len(set(counts.values())) > 1 and len(exact) < len(counts):
        # all dims fixed, counts differ: arrays of exactly their declared shape are shared
        # ([1, 2] image sizes beside [1, 3, 416, 416] images given as [n, 3, 416, 416])
        rest = {name: count for name, count in counts.items() if name not in exact}
        if len(set(rest.values())) == 1:
            layout.update({name: None for name in exact})
            counts = rest
    if len(set(counts.values())) > 1:
        raise DczError(f"{where}: the inputs have different sample counts: "
                       + ", ".join(f"{k!r} {v} (axis {layout[k]})" for k, v in counts.items()))
    count = next(iter(counts.values()), None)
    for spec in deferred:  # axis 0 is fixed and no dim is named like the batch: the data tells
        shape = shapes[spec.name][0]
        if len(shape) != len(spec.dims):
            raise mismatch(spec, None, f": rank {len(spec.dims)}, not {len(shape)}")
        candidates = [a for a, d in enumerate(spec.dims) if d is None and (count is None or shape[a] == count)]
        if len(candidates) != 1:
            what = (f"no symbolic axis has the {count} samples of the other inputs" if not candidates else
                    f"axes {', '.join(map(str, candidates))} are all symbolic"
                    + (f" and all of size {count}, the sample count" if count is not None else ""))
            raise DczError(f"{where}: cannot tell which axis of {spec.name!r} ({_array(*shapes[spec.name])}; the "
                           f"model's input takes {_declared(spec)}) holds the samples: {what}"
                           + ("; give a sample count that no other axis has" if candidates else ""))
        check_dims(spec, candidates[0])
        count = shape[candidates[0]] if count is None else count
    return layout


def load_npz(path: str, specs: list[InputSpec] | None = None, option: str = "--data",
             max_bytes: int | None = None, labels: bool = True, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of `path` the model needs: one per spec (in its declared dtype, laid out as
    `sample_layout` says) and `labels` when present and `labels` is true; without `specs`, the
    arrays named in `keys` (default: every one) with their samples on axis 0. All with the same
    number of samples (>= 1). Any problem is a one-line DczError."""
    max_bytes = MAX_DATA_BYTES if max_bytes is None else max_bytes
    where = f"{option} {path}"
    if specs is None and keys is not None:
        specs, labels = None, False
    with open_npz_file(path, where) as f:
        head = f.read(8)
        if head.startswith(np.lib.format.MAGIC_PREFIX):
            raise DczError(f"{where}: a single array (.npy), not named arrays (.npz): "
                           "save with numpy.savez(path, input_name=array, labels=...)")
        if not head.startswith(_ZIP_MAGIC):
            raise DczError(f"{where}: not an .npz file (no zip header)")
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as archive:
                members = _members(archive, where)
                if keys is not None and specs is None:
                    missing = next((k for k in keys if k not in members), None)
                    if missing is not None:
                        have = ", ".join(repr(k) for k in list(members)[:8]) or "none"
                        raise DczError(f"{where}: no array named {missing!r} (the file has {have})")
                    members = {k: members[k] for k in keys}
                wanted = _wanted(members, specs, labels, where)
                headers = {key: _header(archive, members[key], where, key) for key in wanted}
                _check(headers, {s.name: s for s in specs or ()}, where, max_bytes)
                arrays = {key: _body(archive, members[key], where, key) for key in wanted}
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, EOFError, OSError,
                NotImplementedError, RuntimeError) as e:  # RuntimeError: encrypted; NotImplementedError: method
            raise DczError(f"{where}: not a readable .npz ({str(e)[:80]})") from None
    for spec in specs or ():
        arrays[spec.name] = convert(arrays[spec.name], spec, where)
    return arrays


def npz_keys(path: str, option: str = "--data") -> list[str]:
    """The names of the arrays in the .npz `path`, in file order (nothing is decompressed)."""
    where = f"{option} {path}"
    with open_npz_file(path, where) as f:
        if f.read(4) not in _ZIP_MAGIC:
            raise DczError(f"{where}: not an .npz file (no zip header)")
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as archive:
                return list(_members(archive, where))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as e:
            raise DczError(f"{where}: not a readable .npz ({str(e)[:80]})") from None


def convert(array: np.ndarray, spec: InputSpec, where: str = "--data") -> np.ndarray:
    """`array` in the dtype `spec` declares, under the rule in the module docstring."""
    have, want = array.dtype, spec.dtype
    _check_dtype(spec.name, have, want, where)
    if have == want:
        return array
    if have.kind in "iu" and array.size:
        low, high, info = int(array.min()), int(array.max()), np.iinfo(want)
        if low < info.min or high > info.max:
            raise DczError(f"{where}: {spec.name!r} holds {have} values from {low} to {high}, which do not "
                           f"fit the model's input dtype {want}")
    return array.astype(want)


def check_classes(out: np.ndarray, labels: np.ndarray | None, option: str) -> None:
    """Labels past the model's classes would score 0 % for every model and pass every gate."""
    classes = int(np.prod(out.shape[1:]))
    if labels is not None and labels.size and labels.max() >= classes:
        raise DczError(f"{option} labels go up to {labels.max()}, but the model's output has {classes} classes")


def check_labels(labels: np.ndarray | None, data: dict, option: str = "--data",
                 layout: dict | None = None) -> np.ndarray | None:
    """`labels` must be class ids, one per sample of the data. Without `layout` every array must
    have its samples on axis 0 (and so be no scalar)."""
    if layout is None:
        for name, array in data.items():
            if not np.ndim(array):
                raise DczError(f"{option} {name!r} is a scalar, not an array of samples")
        layout = {name: 0 for name in data}
    counts = {name: int(np.shape(data[name])[axis]) for name, axis in layout.items()
              if axis is not None and name in data}
    if len(set(counts.values())) > 1:
        raise DczError(f"{option} arrays have different sample counts: {counts}")
    if labels is None:
        return None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DczError(f"{option} labels must be a 1-D array of integer class ids (got {labels.dtype} {labels.shape})")
    if labels.size and labels.min() < 0:
        raise DczError(f"{option} labels must be class ids >= 0 (found {labels.min()})")
    for name, count in counts.items():
        if count != len(labels):
            raise DczError(f"{option} {name!r} has {count} samples but labels has {len(labels)}")
    return labels


# ------------------------------------------------------------------------------ internals

def open_npz_file(path: str, where: str):
    """`path` opened for reading if it is a regular file. Checked on the open descriptor (no
    race), and opened non-blocking so that a FIFO without a writer cannot hang the open itself:
    FIFOs and devices would be read forever."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DczError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise DczError(f"{where}: is a directory") from None
    except OSError as e:
        raise DczError(f"{where}: cannot read ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe or device)"
        raise DczError(f"{where}: is {kind}")
    return os.fdopen(fd, "rb")


def _members(archive: zipfile.ZipFile, where: str) -> dict[str, zipfile.ZipInfo]:
    """Array name -> member (`x.npy` holds array `x`, as numpy.savez writes it)."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if key in members:
            raise DczError(f"{where}: two members hold the array {key!r}")
        members[key] = info
    return members


def _wanted(members: dict, specs, labels: bool, where: str) -> list[str]:
    if specs is None:
        return list(members)
    missing = [s.name for s in specs if s.name not in members]
    if missing:
        have = ", ".join(repr(k) for k in list(members)[:5]) or "none"
        raise DczError(f"{where}: no array named {missing[0]!r} (the model's input; the file has {have})")
    return [s.name for s in specs] + ([LABELS] if labels and LABELS in members else [])


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, key: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from the member's .npy header, decompressing only the header's bytes; the
    member's uncompressed size (zip directory) must be exactly header + array, as np.save writes."""
    fmt = np.lib.format
    try:
        with archive.open(info) as fp, warnings.catch_warnings():
            # numpy parses the header dict as Python: a hostile one would print SyntaxWarnings
            warnings.simplefilter("ignore", SyntaxWarning)
            version = fmt.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(fp)
            else:  # 3.0 only differs for non-latin-1 field names, i.e. structured dtypes (refused)
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
            offset = fp.tell()
    except (zipfile.BadZipFile, zlib.error, EOFError):
        raise  # the archive's fault: reported by load_npz
    except Exception as e:  # noqa: BLE001 - numpy's header parser on a hostile header (ValueError,
        # SyntaxError, tokenize.TokenError, ...): not .npy magic, a malformed or oversized header
        raise DczError(f"{where}: {key!r} is not a readable .npy array ({str(e)[:80]})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        raise DczError(f"{where}: {key!r} has dtype {dtype}, not an array of plain numbers")
    nbytes = dtype.itemsize * _product(shape)  # exact Python ints: no wrap-around
    if info.file_size != offset + nbytes:
        raise DczError(f"{where}: {key!r} declares {shape} {dtype} ({nbytes:,} bytes) but its member "
                       f"holds {max(info.file_size - offset, 0):,} bytes")
    return shape, dtype


def _check(headers: dict, specs: dict[str, InputSpec], where: str, max_bytes: int) -> None:
    """Shapes, dtypes, sample counts and the total size, all from the headers, before decoding."""
    for key, (shape, dtype) in headers.items():
        if key in specs:
            _check_dtype(key, dtype, specs[key].dtype, where)
        elif not shape:
            raise DczError(f"{where}: {key!r} is a scalar, not an array with one row per sample")
    used = [spec for key, spec in specs.items() if key in headers]
    layout = layout_of_shapes(used, {s.name: headers[s.name] for s in used}, where)
    others = [key for key in headers if key not in specs]  # labels (or every array, without specs)
    counts = {key: headers[key][0][axis] for key, axis in layout.items() if axis is not None}
    counts.update({key: headers[key][0][0] for key in others})
    if len(set(counts.values())) > 1:
        raise DczError(f"{where}: arrays have different sample counts: {counts}")
    if counts and not next(iter(counts.values())):
        raise DczError(f"{where}: no samples (the arrays have 0 rows)")
    total = sum(dtype.itemsize * _product(shape) for shape, dtype in headers.values())
    if total > max_bytes:
        raise DczError(f"{where}: the arrays the model uses decode to {total:,} bytes, over the limit of "
                       f"{max_bytes:,} (raise it with --max-data-bytes)")


def _check_dtype(name: str, have: np.dtype, want: np.dtype, where: str) -> None:
    same_kind = have.kind == want.kind and want.kind in "fc"  # float -> float, complex -> complex
    if have == want or same_kind or (have.kind in "iu" and want.kind in "iu"):
        return
    hint = ""
    if have.kind in "iub" and want.kind == "f":
        hint = (f"; convert it as the model was trained, e.g. x.astype({want.name!r}) / 255 for "
                "8-bit images (integers are not cast to float, to keep a missing normalization from "
                "passing unnoticed)")
    elif have.kind == "c" and want.kind == "f":
        hint = " (the imaginary part would be lost)"
    raise DczError(f"{where}: {name!r} holds {have}, but the model's input takes {want}{hint}")


def _body(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, key: str) -> np.ndarray:
    try:
        with archive.open(info) as fp:
            return np.lib.format.read_array(fp, allow_pickle=False)
    except ValueError as e:  # truncated data
        raise DczError(f"{where}: {key!r} cannot be read ({str(e)[:80]})") from None


def _product(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
