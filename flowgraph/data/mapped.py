r"""Memory-mapped image arrays: ``.npy`` members stored uncompressed in an ``.npz``, and a
one-time ``.npy`` cache for formats that cannot be mapped (pickles, compressed ``.npz``).

A mapped array costs no private memory: its pages live in the OS page cache, shared by every
process that maps the same file (all ranks of a DDP run on one machine), and only the images
actually read are paged in.

`cached_array` builds the cache once: it writes the rows of each source chunk in turn into
``<cache_dir>/<tag>-<digest>.npy`` (so at most one chunk is in memory) and the labels into
``...labels.npy``, fsyncs, and renames the finished files into place (the labels first, so the
images' file existing means both are complete); a file lock makes concurrent builders (the
ranks of one machine) wait for the first. The digest covers the source files' names, sizes
and modification times, so a changed source builds a new cache.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from flowgraph.data.errors import DatasetError, DatasetOptionError

__all__ = ["cache_dir_for", "cached_array", "map_npz_member"]

_HEADER_BYTES = 128  # fixed .npy header size: the shape is known only after the last chunk


def map_npz_member(path: Path, key: str) -> np.ndarray | None:
    """The array ``key`` of the ``.npz`` at `path`, memory-mapped read-only, or ``None`` when
    the member is compressed (``np.savez_compressed``) or absent, or not a plain array."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                return None
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return None
    if dtype.hasobject or fortran:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def cache_dir_for(option: str | os.PathLike | None, data_root: Path) -> Path | None:
    """The cache folder the ``cache`` dataset option names: ``None``/``"none"`` → no cache;
    ``"auto"`` → ``<data_root>/.flowgraph-cache`` when that folder can be written, else
    ``$XDG_CACHE_HOME/flowgraph`` (default ``~/.cache/flowgraph``); anything else is a folder."""
    if option is None or option == "none":
        return None
    if not isinstance(option, (str, os.PathLike)):
        raise DatasetOptionError(f"cache must be 'none', 'auto' or a folder. Got {option!r}.")
    if option != "auto":
        return Path(option).expanduser()
    here = data_root / ".flowgraph-cache"
    if os.access(here if here.is_dir() else data_root, os.W_OK):
        return here
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flowgraph"


def _digest(sources: Sequence[Path], tail: tuple[int, ...]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for p in sources:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns};".encode())
    h.update(repr(tail).encode())
    return h.hexdigest()


def _npy_header(shape: tuple[int, ...]) -> bytes:
    body = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape!r}, }}"
    body = body.ljust(_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


def cached_array(cache_dir: Path, tag: str, sources: Sequence[Path], tail: tuple[int, ...],
                 chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(a read-only memory map of the uint8 rows ``[N, *tail]``, the int64 labels) of the
    (rows, labels) pairs `chunks()` yields, built into `cache_dir` on the first call (see the
    module docstring) and reused after."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create the dataset cache folder {cache_dir}: {e.strerror}. "
                           "Got an unwritable location; pass another folder as the `cache` "
                           "dataset option, or cache: none.", path=cache_dir) from e
    path = cache_dir / f"{tag}-{_digest(sources, tail)}.npy"
    if not path.exists():
        with _locked(path.with_suffix(".lock")):
            if not path.exists():  # another process may have built it while we waited
                _build(path, tail, chunks)
    return np.load(path, mmap_mode="r"), np.load(_labels_path(path))


def _labels_path(path: Path) -> Path:
    return path.with_name(path.stem + ".labels.npy")


def _build(path: Path, tail: tuple[int, ...],
           chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_labels = tmp.with_name(tmp.name + ".labels")
    n, labels = 0, []
    try:
        with open(tmp, "wb") as f:
            f.write(_npy_header((0, *tail)))  # rewritten once the count is known
            for chunk, chunk_labels in chunks():
                labels.append(np.asarray(chunk_labels, dtype=np.int64))
                if chunk.dtype != np.uint8 or tuple(chunk.shape[1:]) != tail:
                    raise ValueError(f"cache chunks must be uint8 [n, {tail}]. Got "
                                     f"{chunk.dtype} {chunk.shape}.")
                f.write(np.ascontiguousarray(chunk).data)
                n += len(chunk)
            f.seek(0)
            f.write(_npy_header((n, *tail)))
            f.flush()
            os.fsync(f.fileno())
        with open(tmp_labels, "wb") as f:
            np.save(f, np.concatenate(labels) if labels else np.zeros(0, np.int64))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_labels, _labels_path(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_labels.unlink(missing_ok=True)


class _locked:
    """An exclusive ``flock`` on `path` (a no-op where fcntl is missing)."""

    def __init__(self, path: Path):
        self.path, self.fd = path, -1

    def __enter__(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: concurrent builders each build; the rename is atomic
            return
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
