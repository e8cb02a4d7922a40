"""Reading models from paths or stdin, and writing outputs atomically (temp file + rename).

Files are only ever regular files (or `-`): a device, FIFO or socket is never read (it may never
end) nor replaced (an atomic rename over `/dev/null` would replace the device itself).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import secrets
import stat
import sys
import tempfile

from .errors import DczError
from .tensors import FLOAT_DTYPES, Package

STDIO = "-"


# ------------------------------------------------------------------------------------ reading

def require_regular_file(path: str) -> os.stat_result:
    """The stat of `path` (symlinks followed) if it is an existing regular file, else a DczError."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DczError(f"{path}: no such file") from None
    except OSError as e:
        raise DczError(f"{path}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DczError(f"{path}: is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise DczError(f"{path}: not a regular file (a device, FIFO or socket; use - for standard input)")
    return st


def open_regular(path: str, follow_symlinks: bool = True):
    """An unbuffered binary reader of `path`, refusing anything but a regular file.

    Opened non-blocking so that a FIFO swapped in after the check cannot hang the open; the
    opened file itself is checked again (fstat), so no race can slip a device through.
    """
    require_regular_file(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise DczError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DczError(f"{path}: not a regular file (a device, FIFO or socket; use - for standard input)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=0)


def file_id(f) -> tuple[int, int]:
    """(device, inode): what identifies a file whatever names (links) it has."""
    st = os.fstat(f.fileno())
    return st.st_dev, st.st_ino


def read_range(f, offset: int, length: int, path: str, into=None):
    """Exactly `length` bytes at `offset` of the open file `f` (into the writable buffer `into`
    when given), or a DczError if the file is shorter than that now: a file truncated while it
    is read is an error message, not a crash."""
    buf = memoryview(into).cast("B") if into is not None else memoryview(bytearray(length))
    if len(buf) != length:
        raise ValueError("buffer size does not match the length")
    done = 0
    while done < length:
        try:
            n = os.preadv(f.fileno(), [buf[done:]], offset + done) if hasattr(os, "preadv") else \
                _pread_into(f, buf[done:], offset + done)
        except OSError as e:
            raise DczError(f"{path}: cannot read ({e.strerror})") from None
        if n == 0:
            raise DczError(f"{path}: file changed while being read (now shorter than expected)")
        done += n
    return buf


def _pread_into(f, view, offset: int) -> int:
    data = os.pread(f.fileno(), len(view), offset)
    view[:len(data)] = data
    return len(data)


def read_whole(f, path: str) -> bytes:
    """The whole content of the open regular file `f`, read (not memory-mapped: a mapped file
    truncated by another process kills the reader with SIGBUS) and checked for changes."""
    before = os.fstat(f.fileno())
    try:
        data = f.readall()  # sized from fstat: one allocation, no zero-filling, no second copy
    except OSError as e:
        raise DczError(f"{path}: cannot read ({e.strerror})") from None
    after = os.fstat(f.fileno())
    if len(data) != before.st_size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise DczError(f"{path}: file changed while being read")
    return data


def read_model(path: str, include=(), exclude=()) -> Package:
    """Load an `.onnx` or `.dcz` (told apart by the magic, not the name) as a Package.

    `package.source_files` gets the (device, inode) of every file read (the model and its
    external data), so that no output replaces one of them.
    """
    from . import container, onnx_io

    if path == STDIO:
        data, base_dir, sources = sys.stdin.buffer.read(), None, set()
    else:
        with open_regular(path) as f:
            data, sources = read_whole(f, path), {file_id(f)}
        base_dir = os.path.dirname(os.path.abspath(path))
    if not len(data):
        raise DczError(f"{path}: empty file")
    size = len(data)
    if data[:len(container.MAGIC)] == container.MAGIC:
        package = read_dcz(data)
        reselect(package, include, exclude)
    else:
        model = onnx_io.parse_model(data)
        del data  # the parsed model holds its own copy; don't keep two
        package = onnx_io.from_onnx(model, base_dir, include, exclude)
    # a model's size on disk includes its external data files (from_onnx counts those)
    package.file_bytes = size + (package.file_bytes or 0)
    package.source_files |= sources
    return package


# What `export` and `bench` may decode (`--max-decoded-bytes` overrides): 1024 x the bytes the
# tensors are stored in, but never less than 256 MiB.  The format lets a small file claim 65536x
# its size (codecs.MAX_EXPANSION: 1 GB from 21 KB of 16-bit fillers); real compressed models
# decode to under 100x (Deep Compression: 35-49x), and an .onnx tensor stores its own bytes (1x),
# so a 2.25 GiB model always passes while a few KB cannot ask for gigabytes.
DECODED_PER_STORED_BYTE = 1024
DECODED_FLOOR = 256 << 20


def decoded_bytes(package: Package) -> int:
    """Bytes of all tensors once decoded (exact Python ints, from the declared shapes)."""
    return sum(t.nbytes for t in package.tensors)


def default_max_decoded_bytes(package: Package) -> int:
    return max(DECODED_FLOOR, DECODED_PER_STORED_BYTE * sum(t.stored_bytes for t in package.tensors))


def check_decoded_size(package: Package, max_bytes: int | None = None, what: str = "model") -> int:
    """The decoded size of `package`, checked before anything is decoded; DczError over the cap."""
    total = decoded_bytes(package)
    limit = default_max_decoded_bytes(package) if max_bytes is None else max_bytes
    if total > limit:
        raise DczError(f"{what}: decodes to {total} bytes, over the {limit}-byte limit "
                       "(raise it with --max-decoded-bytes)")
    return total


def read_dcz(buf) -> Package:
    """A `.dcz` held in `buf`: the container's tables, then its stored graph parsed and checked
    against them (the container layer knows no ONNX)."""
    from . import container, onnx_io

    package, graph = container.read(buf)
    onnx_io.attach_graph(package, graph)
    return package


def check_graph(package: Package) -> None:
    """The reader's graph rules (placeholders match the table) on a package about to be written."""
    import copy

    from . import container, onnx_io

    probe = Package(graph=None, tensors=[copy.copy(t) for t in package.tensors])  # attach sets .op
    try:
        onnx_io.attach_graph(probe, container.serialize(package.graph, "graph"))
    except DczError as e:
        raise DczError(f"refusing to write an unreadable file: {e}") from None


def reselect(package: Package, include=(), exclude=()) -> None:
    """Apply `--include`/`--exclude` to an already-packed model (only tensors still stored raw)."""
    for t in package.tensors:
        if [s.codec for s in t.chain] != ["raw"] or t.dtype not in FLOAT_DTYPES:
            continue
        if any(fnmatch.fnmatchcase(t.name, g) for g in exclude):
            t.kind = "other"
        elif t.kind == "other" and any(fnmatch.fnmatchcase(t.name, g) for g in include):
            t.kind = "conv" if len(t.shape) == 4 else "fc"


# ------------------------------------------------------------------------------------ writing

def _check_target(path: str, protected: set) -> str:
    """The real path to write for the output `path`, after refusing a target that is not a
    regular file or that is one of the inputs (by device + inode, so any name or link counts).
    A symlinked output is written through: the file it points to is replaced, the link stays."""
    if path == STDIO:
        raise DczError("this output needs -o FILE, not stdout")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise DczError(f"{path}: cannot write ({e.strerror})") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise DczError(f"{path}: is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise DczError(f"{path}: not a regular file (refusing to replace a device, FIFO or socket)")
        if (st.st_dev, st.st_ino) in protected:
            raise DczError(f"{path}: refusing to overwrite an input file")
    return os.path.realpath(path)


def _input_ids(inputs) -> set:
    ids = set()
    for source in inputs:
        if isinstance(source, tuple):  # already a (device, inode)
            ids.add(source)
        elif source != STDIO:
            with contextlib.suppress(OSError):
                st = os.stat(source)
                ids.add((st.st_dev, st.st_ino))
    return ids


_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000
_UNNAMED_WORKS: dict[int, bool] = {}  # st_dev -> whether unnamed temp files can be linked there


def _link_unnamed(fd: int, name: str) -> None:
    """Give the O_TMPFILE file `fd` the name `name`: linkat(fd, "", AT_EMPTY_PATH), or where that
    is not permitted the /proc/self/fd magic link (which some mounts refuse with EXDEV)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(name), _AT_EMPTY_PATH) == 0:
        return
    os.link(f"/proc/self/fd/{fd}", name, follow_symlinks=True)


def _new_temp_name(directory: str, prefix: str, fd: int) -> str:
    while True:
        name = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}.tmp")
        try:
            _link_unnamed(fd, name)
            return name
        except FileExistsError:
            continue


def _open_unnamed(directory: str) -> int | None:
    """An O_TMPFILE file in `directory` (the mode filtered by the umask, as for any new file), or
    None where the OS, the filesystem or the permissions cannot give it a name later."""
    if not hasattr(os, "O_TMPFILE"):
        return None
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666)
    except OSError:  # a filesystem without O_TMPFILE (EOPNOTSUPP, EISDIR, ...)
        return None
    device = os.fstat(fd).st_dev
    if device not in _UNNAMED_WORKS:  # try once per filesystem, with an empty file
        try:
            os.unlink(_new_temp_name(directory, ".deepcompress-probe.", fd))
            _UNNAMED_WORKS[device] = True
        except (OSError, AttributeError):  # AttributeError: a libc without linkat
            _UNNAMED_WORKS[device] = False
        os.close(fd)
        return _open_unnamed(directory) if _UNNAMED_WORKS[device] else None
    if not _UNNAMED_WORKS[device]:
        os.close(fd)
        return None
    return fd


class _TempFile:
    """An output being written: an unnamed file (Linux O_TMPFILE, so nothing survives a crash,
    named only once complete), or where that cannot be done a hidden `.NAME.XXXX.tmp`."""

    def __init__(self, target: str):
        self.target = target
        self.directory, base = os.path.split(target)
        self.prefix = f".{base}."
        self.name = None  # the temp file's visible name, once it has one
        fd = _open_unnamed(self.directory)
        if fd is None:
            fd, self.name = tempfile.mkstemp(dir=self.directory, prefix=self.prefix, suffix=".tmp")
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        self.file = os.fdopen(fd, "wb")

    def finish(self) -> None:
        """Flush to disk and give the file a (temporary) name next to its target."""
        self.file.flush()
        os.fsync(self.file.fileno())
        if self.name is None:
            self.name = _new_temp_name(self.directory, self.prefix, self.file.fileno())
        self.file.close()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()  # may raise again (a full disk fails the final flush too)
        if self.name is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.name)


@contextlib.contextmanager
def atomic_output(path: str, inputs=(), protected=()):
    """Yield a binary file that becomes `path` only if the block succeeds.

    `inputs` are paths and `protected` (device, inode) pairs of files that must not be
    replaced.  On any error (or a kill) `path` is untouched and nothing is left behind.
    """
    if path == STDIO:
        if sys.stdout.isatty():
            raise DczError("refusing to write binary data to a terminal (use -o FILE)")
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with atomic_outputs([path], inputs, protected) as (f,):
        yield f


@contextlib.contextmanager
def atomic_outputs(paths: list[str], inputs=(), protected=()):
    """Like `atomic_output` for several files that belong together (a model and its data):
    all are written to temp files first and renamed only once every one is complete."""
    protected = set(protected) | _input_ids(inputs)
    targets = [_check_target(path, protected) for path in paths]
    temps = []
    try:
        for path, target in zip(paths, targets):
            try:
                temps.append(_TempFile(target))
            except OSError as e:
                raise DczError(f"{path}: cannot write ({e.strerror})") from None
        yield [t.file for t in temps]
        for t in temps:
            t.finish()
        for t in temps:  # the last one (the model) appears last
            os.replace(t.name, t.target)
            t.name = None
    except OSError as e:  # a full disk, a quota, an I/O error: one line, and nothing left behind
        raise DczError(f"{paths[-1]}: cannot write ({e.strerror or e})") from None
    finally:
        for t in temps:
            t.discard()


def write_dcz(package: Package, path: str, inputs=()) -> int:
    from . import container

    check_graph(package)  # container.write checks the tables; the graph is ONNX, checked here
    with atomic_output(path, inputs, package.source_files) as f:
        return container.write(package, f)


def write_onnx(package: Package, path: str, inputs=(), qdq: bool = False) -> int:
    """Export as a runnable ONNX model; above 1 GiB of weights the weights go to `<path>.data`.

    With `qdq`, quantized weights stay integers behind DequantizeLinear nodes.
    """
    from . import onnx_io
    from .container import serialize

    total = sum(t.nbytes for t in package.tensors)
    if qdq:
        from .qdq import to_qdq_onnx

        if total >= onnx_io.EXTERNAL_DATA_THRESHOLD:
            raise DczError("--qdq export of models over 1 GiB of weights is not supported")
        data = serialize(to_qdq_onnx(package), "ONNX model")
        with atomic_output(path, inputs, package.source_files) as f:
            f.write(data)
        return len(data)
    if total < onnx_io.EXTERNAL_DATA_THRESHOLD:
        data = serialize(onnx_io.to_onnx(package), "ONNX model")
        with atomic_output(path, inputs, package.source_files) as f:
            f.write(data)
        return len(data)
    if path == STDIO:
        raise DczError("a model over 1 GiB is written with external data and needs -o FILE, not stdout")
    if os.path.islink(path):  # readers look for the data beside the name they open: which one?
        raise DczError(f"{path}: is a symlink; a model over 1 GiB gets its data file beside it, "
                       "so give -o the real path")
    location = os.path.basename(path) + ".data"
    data_path = os.path.join(os.path.dirname(os.path.abspath(path)), location)
    with atomic_outputs([data_path, path], inputs, package.source_files) as (data_file, model_file):
        position = [0]

        def store(name, array):
            pad = (-position[0]) % 64  # keep tensors aligned for mmap-based readers
            data_file.write(bytes(pad))
            offset = position[0] + pad
            data_file.write(memoryview(array).cast("B"))
            position[0] = offset + array.nbytes
            return location, offset

        model_bytes = serialize(onnx_io.to_onnx(package, external=store), "ONNX model")
        model_file.write(model_bytes)
    return len(model_bytes) + position[0]
