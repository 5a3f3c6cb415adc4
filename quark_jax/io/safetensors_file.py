"""A small, lazy safetensors reader that returns numpy arrays for every dtype Quark exports.

safetensors 0.8 cannot hand F8 tensors to numpy unless numpy knows float8 types; this reader parses the header
itself and views the raw bytes with ml_dtypes types, one tensor at a time (memory-mapped, so opening a large file
reads only its header).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import mmap
import os
import struct
import threading
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from quark_jax.errors import CheckpointError

__all__ = ["SafetensorsFile", "TensorInfo", "SafetensorsFormatError", "SAFETENSORS_DTYPES"]

SAFETENSORS_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "F4": np.dtype(ml_dtypes.float4_e2m1fn),
}


class SafetensorsFormatError(CheckpointError):
    """A safetensors file that cannot be read as such (bad header, truncated data, unknown dtype); a
    :class:`~quark_jax.errors.CheckpointError` (so a ``ValueError``) naming the file."""


@dataclass(frozen=True)
class TensorInfo:
    """Header entry of one tensor: its safetensors dtype string, numpy dtype, shape and byte range."""

    name: str
    st_dtype: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


PARALLEL_READ_BYTES = 256 << 20
"""Tensors of at least this many bytes are read in :data:`PARALLEL_READ_PARTS` parallel byte ranges."""

PARALLEL_READ_PARTS = 8
"""Byte ranges (threads) a large tensor is read in (the calling thread reads one)."""

_POOL = None
_POOL_LOCK = threading.Lock()


def _read_pool():
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL_READ_PARTS - 1,
                                                          thread_name_prefix="quark_jax_read")
        return _POOL


def _leading_rows(index: tuple, shape: tuple):
    """``(start, stop)`` when ``index`` selects whole rows ``start:stop`` (step 1) of an array of ``shape`` (the
    later axes full or absent), else None."""
    if not shape or not index or len(index) > len(shape) or not all(isinstance(s, slice) for s in index):
        return None
    a, b, step = index[0].indices(shape[0])
    if step != 1 or any(s.indices(d) != (0, d, 1) for s, d in zip(index[1:], shape[1:])):
        return None
    return a, max(a, b)


def _int_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in v)


class SafetensorsFile:
    """A safetensors file opened lazily: ``names()``, ``info(name)``, ``get(name) -> np.ndarray`` (a copy).

    >>> import numpy as np, tempfile, os
    >>> from safetensors.numpy import save_file
    >>> path = os.path.join(tempfile.mkdtemp(), "t.safetensors")
    >>> save_file({"a": np.arange(3, dtype=np.float32)}, path)
    >>> SafetensorsFile(path).get("a").tolist()
    [0.0, 1.0, 2.0]
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsFormatError(f"{self.path}: file of {size} bytes is too short for a safetensors header")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > size - 8:
                raise SafetensorsFormatError(f"{self.path}: header length {hlen} exceeds the file size {size}")
            try:
                header = json.loads(f.read(hlen))
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                raise SafetensorsFormatError(f"{self.path}: header is not valid JSON ({e})", file=self.path) from None
        if not isinstance(header, dict):
            raise SafetensorsFormatError(f"{self.path}: header: expected a JSON object, found a "
                                         f"{type(header).__name__}", file=self.path)
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + hlen
        self._size = size
        self._infos: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            st = entry.get("dtype") if isinstance(entry, dict) else None
            if not isinstance(st, str) or st not in SAFETENSORS_DTYPES:
                raise SafetensorsFormatError(f"{self.path}: tensor {name!r} has unsupported dtype {st!r}",
                                             file=self.path, tensor=name, field="dtype", found=repr(st))
            offsets, shape = entry.get("data_offsets"), entry.get("shape")
            if not (_int_list(offsets) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]
                    and _int_list(shape) and all(d >= 0 for d in shape)):
                raise SafetensorsFormatError(f"{self.path}: tensor {name!r}: expected 'data_offsets' [begin, end] "
                                             f"(0 <= begin <= end) and 'shape' (a list of sizes >= 0), found "
                                             f"{offsets!r} and {shape!r}", file=self.path, tensor=name)
            begin, end = int(offsets[0]), int(offsets[1])
            shape = tuple(int(d) for d in shape)
            dtype = SAFETENSORS_DTYPES[st]
            nbytes = math.prod(shape) * dtype.itemsize
            if end - begin != nbytes:
                raise SafetensorsFormatError(f"{self.path}: tensor {name!r} ({st} {list(shape)}) needs {nbytes} "
                                             f"bytes, its data offsets span {end - begin}")
            if self._data_start + end > size:
                raise SafetensorsFormatError(f"{self.path}: tensor {name!r} ends at byte {self._data_start + end} "
                                             f"but the file has {size} bytes (truncated?)")
            self._infos[name] = TensorInfo(name, st, dtype, shape, begin, end)

    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def get(self, name: str) -> np.ndarray:
        """Read one tensor into a new numpy array of its own dtype (F8 via ml_dtypes). A tensor of at least
        :data:`PARALLEL_READ_BYTES` is read as :data:`PARALLEL_READ_PARTS` byte ranges in parallel threads (one
        copy each, page cache -> its part of the array): an 8B model's embedding and LM head (1 GB each) are
        read at the page cache's parallel speed, not one thread's."""
        info = self.info(name)
        n = info.end - info.begin
        if n == 0:
            return np.zeros(info.shape, info.dtype)
        out = np.empty(info.shape, info.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        start = self._data_start + info.begin
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if n < PARALLEL_READ_BYTES or PARALLEL_READ_PARTS < 2:
                self._read_range(fd, view, start, name)
            else:
                step = -(-n // PARALLEL_READ_PARTS)
                parts = [(view[a:min(a + step, n)], start + a) for a in range(0, n, step)]
                others = [_read_pool().submit(self._read_range, fd, v, off, name) for v, off in parts[1:]]
                try:
                    self._read_range(fd, *parts[0], name)  # this thread reads the first part
                finally:
                    for f in others:  # all done before the descriptor closes (their errors raised here)
                        f.result()
        finally:
            os.close(fd)
        return out

    def _read_range(self, fd: int, view: memoryview, offset: int, name: str) -> None:
        """Fill ``view`` from the file at ``offset`` (os.preadv: no file position shared between threads)."""
        got, n = 0, len(view)
        while got < n:
            k = os.preadv(fd, [view[got:]], offset + got)
            if not k:
                raise OSError(f"{self.path}: tensor {name!r} ends before byte {offset + got - self._data_start} of "
                              f"its data (truncated?)")
            got += k

    def get_slice(self, name: str, index: tuple) -> np.ndarray:
        """Read ``tensor[index]`` (a tuple of slices) into a new numpy array, touching only the pages it spans
        (through a view of the memory-mapped file: no full copy of the tensor in host memory)."""
        info = self.info(name)
        if info.end == info.begin:
            return np.zeros(info.shape, info.dtype)[index]
        rows = _leading_rows(tuple(index), info.shape)
        if rows is not None:  # a range of whole rows: contiguous bytes, one read (no mapping, no page walk)
            a, b = rows
            out = np.empty((b - a,) + tuple(info.shape[1:]), info.dtype)
            if out.size:
                row_bytes = (info.end - info.begin) // info.shape[0]
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    self._read_range(fd, memoryview(out.reshape(-1).view(np.uint8)),
                                     self._data_start + info.begin + a * row_bytes, name)
                finally:
                    os.close(fd)
            return out
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = np.frombuffer(mm, dtype=info.dtype, count=int(np.prod(info.shape)),
                                 offset=self._data_start + info.begin).reshape(info.shape)
            out = np.array(view[index])
            del view  # release the buffer before the mmap closes
        return out

    def load_all(self) -> dict[str, np.ndarray]:
        return {name: self.get(name) for name in self._infos}
