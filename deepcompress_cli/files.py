"""Reading models from paths or stdin, and writing outputs atomically (temp file + rename)."""

from __future__ import annotations

import contextlib
import fnmatch
import mmap
import os
import sys
import tempfile

from .errors import DczError
from .tensors import FLOAT_DTYPES, Package

STDIO = "-"


def read_model(path: str, include=(), exclude=()) -> Package:
    """Load an `.onnx` or `.dcz` (told apart by the magic, not the name) as a Package."""
    from . import container, onnx_io

    if path == STDIO:
        data, base_dir = sys.stdin.buffer.read(), None
    else:
        if not os.path.exists(path):
            raise DczError(f"{path}: no such file")
        if not os.path.isfile(path):
            raise DczError(f"{path}: not a regular file")
        base_dir = os.path.dirname(os.path.abspath(path))
        try:
            with open(path, "rb") as f:
                if f.read(len(container.MAGIC)) == container.MAGIC:
                    # mmap: streams are read lazily, tensor by tensor, instead of copied up front
                    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    package = container.read(data)
                    reselect(package, include, exclude)
                    return package
                f.seek(0)
                data = f.read()
        except OSError as e:
            raise DczError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise DczError(f"{path}: empty file")
    if data[:len(container.MAGIC)] == container.MAGIC:
        package = container.read(data)
        reselect(package, include, exclude)
        return package
    model = onnx_io.parse_model(data)
    del data  # the parsed model holds its own copy; don't keep two
    return onnx_io.from_onnx(model, base_dir, include, exclude)


def reselect(package: Package, include=(), exclude=()) -> None:
    """Apply `--include`/`--exclude` to an already-packed model (only tensors still stored raw)."""
    for t in package.tensors:
        if [s.codec for s in t.chain] != ["raw"] or t.dtype not in FLOAT_DTYPES:
            continue
        if any(fnmatch.fnmatchcase(t.name, g) for g in exclude):
            t.kind = "other"
        elif t.kind == "other" and any(fnmatch.fnmatchcase(t.name, g) for g in include):
            t.kind = "conv" if len(t.shape) == 4 else "fc"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


@contextlib.contextmanager
def atomic_output(path: str, inputs=()):
    """Yield a binary file that becomes `path` only if the block succeeds.

    The temp file sits in the destination folder so the final rename is atomic; on any error
    (or a kill) `path` is untouched and the temp file is removed (or left with a `.tmp` name).
    """
    if path == STDIO:
        if sys.stdout.isatty():
            raise DczError("refusing to write binary data to a terminal (use -o FILE)")
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    for source in inputs:
        if source != STDIO and os.path.exists(path) and _same_file(source, path):
            raise DczError(f"{path}: refusing to overwrite the input file")
    if os.path.isdir(path):
        raise DczError(f"{path}: is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:
        raise DczError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise DczError(f"{path}: cannot write ({e.strerror or e})") from None
        raise


def write_dcz(package: Package, path: str, inputs=()) -> int:
    from . import container

    with atomic_output(path, inputs) as f:
        return container.write(package, f)


def write_onnx(package: Package, path: str, inputs=(), qdq: bool = False) -> int:
    """Export as a runnable ONNX model; above 1 GiB of weights the weights go to `<path>.data`.

    With `qdq`, quantized weights stay integers behind DequantizeLinear nodes.
    """
    from . import onnx_io

    total = sum(t.nbytes for t in package.tensors)
    if qdq:
        from .qdq import to_qdq_onnx

        if total >= onnx_io.EXTERNAL_DATA_THRESHOLD:
            raise DczError("--qdq export of models over 1 GiB of weights is not supported")
        data = to_qdq_onnx(package).SerializeToString()
        with atomic_output(path, inputs) as f:
            f.write(data)
        return len(data)
    if total < onnx_io.EXTERNAL_DATA_THRESHOLD:
        data = onnx_io.to_onnx(package).SerializeToString()
        with atomic_output(path, inputs) as f:
            f.write(data)
        return len(data)
    if path == STDIO:
        raise DczError("a model over 1 GiB is written with external data and needs -o FILE, not stdout")
    location = os.path.basename(path) + ".data"
    data_path = os.path.join(os.path.dirname(os.path.abspath(path)), location)
    with atomic_output(data_path, inputs) as data_file:
        position = [0]

        def store(name, array):
            pad = (-position[0]) % 64  # keep tensors aligned for mmap-based readers
            data_file.write(bytes(pad))
            offset = position[0] + pad
            data_file.write(memoryview(array).cast("B"))
            position[0] = offset + array.nbytes
            return location, offset

        model_bytes = onnx_io.to_onnx(package, external=store).SerializeToString()
    with atomic_output(path, inputs) as f:  # the model appears only once its data is in place
        f.write(model_bytes)
    return len(model_bytes) + position[0]
