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
        if os.path.isdir(path):
            raise DczError(f"{path}: is a directory")
        base_dir = os.path.dirname(os.path.abspath(path))
        try:
            with open(path, "rb") as f:
                if not os.path.isfile(path):  # a pipe or device (/dev/stdin, <(...)): read it whole
                    data = f.read()
                elif f.read(len(container.MAGIC)) == container.MAGIC:
                    # mmap: streams are read lazily, tensor by tensor, instead of copied up front
                    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    package = container.read(data)
                    package.file_bytes = len(data)
                    reselect(package, include, exclude)
                    return package
                else:  # ONNX: parse straight from the mapped file, no copy of it in memory
                    size = os.fstat(f.fileno()).st_size
                    if size == 0:
                        raise DczError(f"{path}: empty file")
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                        view = memoryview(mapped)
                        try:
                            model = onnx_io.parse_model(view)  # protobuf copies what it keeps
                        finally:
                            view.release()
                    external = onnx_io.external_data_bytes(model, base_dir)  # the model's size is both
                    package = onnx_io.from_onnx(model, base_dir, include, exclude)
                    package.file_bytes = size + external
                    return package
        except OSError as e:
            raise DczError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise DczError(f"{path}: empty file")
    size = len(data)
    if data[:len(container.MAGIC)] == container.MAGIC:
        package = container.read(data)
        reselect(package, include, exclude)
    else:
        model = onnx_io.parse_model(data)
        del data  # the parsed model holds its own copy; don't keep two
        package = onnx_io.from_onnx(model, base_dir, include, exclude)
    package.file_bytes = size
    return package


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
    with atomic_outputs([path], inputs) as (f,):
        yield f


@contextlib.contextmanager
def atomic_outputs(paths: list[str], inputs=()):
    """Like `atomic_output` for several files that belong together (a model and its data):
    all are written to temp files first and renamed only once every one is complete."""
    for path in paths:
        if path == STDIO:
            raise DczError("this output needs -o FILE, not stdout")
        for source in inputs:
            if source != STDIO and os.path.exists(path) and _same_file(source, path):
                raise DczError(f"{path}: refusing to overwrite the input file")
        if os.path.isdir(path):
            raise DczError(f"{path}: is a directory")
    temps, files = [], []
    try:
        for path in paths:
            try:
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                           prefix=f".{os.path.basename(path)}.", suffix=".tmp")
            except OSError as e:
                raise DczError(f"{path}: cannot write ({e.strerror})") from None
            temps.append(tmp)
            files.append(os.fdopen(fd, "wb"))
        yield files
        umask = os.umask(0)
        os.umask(umask)
        for f, tmp in zip(files, temps):
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        for tmp, path in zip(temps, paths):  # the last one (the model) appears last
            os.replace(tmp, path)
        temps.clear()
    except OSError as e:
        raise DczError(f"{paths[-1]}: cannot write ({e.strerror or e})") from None
    finally:
        for f in files:
            f.close()
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


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
    with atomic_outputs([data_path, path], inputs) as (data_file, model_file):
        position = [0]

        def store(name, array):
            pad = (-position[0]) % 64  # keep tensors aligned for mmap-based readers
            data_file.write(bytes(pad))
            offset = position[0] + pad
            data_file.write(memoryview(array).cast("B"))
            position[0] = offset + array.nbytes
            return location, offset

        model_bytes = onnx_io.to_onnx(package, external=store).SerializeToString()
        model_file.write(model_bytes)
    return len(model_bytes) + position[0]
