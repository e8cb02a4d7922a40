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
"""

from __future__ import annotations

import os
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
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty zip


@dataclass(frozen=True)
class InputSpec:
    """What a graph input declares: its dims (None: unknown rank; a None dim: symbolic) and dtype."""
    name: str
    dims: tuple[int | None, ...] | None
    dtype: np.dtype

    @classmethod
    def of(cls, name: str, tensor_type) -> InputSpec:
        """From an ONNX TypeProto.Tensor; an undeclared element type is taken as float32."""
        from onnx import helper

        dims = None
        if tensor_type.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                         for d in tensor_type.shape.dim)
        elem = tensor_type.elem_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype(np.float32)
        except (KeyError, TypeError, ValueError):
            raise DczError(f"the model's input {name!r} has an unknown element type {elem}") from None
        return cls(name, dims, dtype)


def input_specs(graph) -> list[InputSpec]:
    """The graph inputs data must feed: those that are not initializers (ONNX < 4 lists both)."""
    initializers = {t.name for t in graph.initializer}
    return [InputSpec.of(i.name, i.type.tensor_type) for i in graph.input if i.name not in initializers]


def load_npz(path: str, specs: list[InputSpec] | None = None, option: str = "--data",
             max_bytes: int | None = None, labels: bool = True) -> dict[str, np.ndarray]:
    """The arrays of `path` the model needs: one per spec (in its declared dtype) and `labels`
    when present and `labels` is true; every array when `specs` is None. All of them with one
    row per sample and the same number of samples (>= 1). Any problem is a one-line DczError."""
    max_bytes = MAX_DATA_BYTES if max_bytes is None else max_bytes
    where = f"{option} {path}"
    with _open_regular(path, where) as f:
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


def check_labels(labels: np.ndarray | None, data: dict, option: str = "--data") -> np.ndarray | None:
    """`labels` must be class ids, one per sample of the data (and every array has samples)."""
    counts = {name: (len(array) if array.ndim else None) for name, array in data.items()}
    for name, count in counts.items():
        if count is None:
            raise DczError(f"{option} {name!r} is a scalar, not an array of samples")
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

def _open_regular(path: str, where: str):
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
        if not shape:
            raise DczError(f"{where}: {key!r} is a scalar, not an array with one row per sample")
        spec = specs.get(key)
        if spec is None:
            continue
        _check_dtype(key, dtype, spec.dtype, where)
        if spec.dims is not None:
            declared = "[" + ", ".join("N" if i == 0 else str(d or "?") for i, d in enumerate(spec.dims)) + "]"
            if len(shape) != len(spec.dims):
                raise DczError(f"{where}: {key!r} has shape {list(shape)}, but the model's input is {declared} "
                               f"(rank {len(spec.dims)}, samples first)")
            for axis, (have, want) in enumerate(zip(shape, spec.dims)):
                if axis and want is not None and have != want:
                    raise DczError(f"{where}: {key!r} has shape {list(shape)}, but the model's input is "
                                   f"{declared}")
    counts = {key: shape[0] for key, (shape, _) in headers.items()}
    if len(set(counts.values())) > 1:
        raise DczError(f"{where}: arrays have different sample counts: {counts}")
    if headers and not next(iter(counts.values())):
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
