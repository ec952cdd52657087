"""Reading and writing the safetensors format tensor by tensor, bfloat16 included, local or on `gs://`.

The `safetensors` package's numpy backend cannot read bfloat16 (the dtype of every published Llama
and Qwen checkpoint), and its writers want a whole shard in memory. The format is a little-endian
u64 header length, a JSON header of `{name: {dtype, shape, data_offsets}}` and raw bytes, so we read
just the bytes a tensor needs and write it as a stream. Nothing here executes code from the file: it
is data only, which is why weights are loaded from nothing else.

Where the bytes come from is a small "byte source": a memory map for a local file (a tensor is a view,
no copy), ranged HTTP reads for a `gs://` object (the header, then one request per tensor; nothing is
written to local disk). Writing goes to any binary file object: a local `.tmp` file renamed into place,
or a resumable upload that creates the `gs://` object only once it is complete.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable
from typing import BinaryIO, Protocol

import ml_dtypes
import numpy as np

from ia_jax.storage import gcs

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_FIRST_READ_BYTES = 64 * 1024  # the length prefix and, for most files, the whole header in one request
_WRITE_PIECE_BYTES = 16 * 1024 * 1024  # a tensor goes to the file in pieces, so no writer buffers it whole


class SafetensorsError(ValueError):
    """A malformed or inconsistent safetensors file; the message names the file and tensor."""


class ByteSource(Protocol):
    """Random access to the bytes of one file: `size`, and `read(start, length)` (a buffer of that length)."""

    size: int

    def read(self, start: int, length: int): ...


class _MappedFile:
    """A local file through a memory map, opened on first read: a read is a view, no copy."""

    def __init__(self, path: str):
        self.path, self.size, self._map = path, os.path.getsize(path), None

    def read(self, start: int, length: int) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map[start : start + length]


def open_bytes(path: str) -> ByteSource:
    """The byte source for a local path or a `gs://` object (`FileNotFoundError` names a missing one)."""
    return gcs.RangedReader(path) if gcs.is_gcs(path) else _MappedFile(path)


class SafetensorsFile:
    """Lazy view of one `.safetensors` file, local or `gs://`: `file[name]` reads just that tensor's bytes.

    Opening reads only the header (for `gs://`: one metadata request and one or two small ranged reads)
    and checks every tensor's byte range against the file size, so a header that lies fails here.
    """

    def __init__(self, path: str):
        self.path = path
        self._source = open_bytes(path)
        size = self._source.size
        if size < 8:
            raise SafetensorsError(f"{path}: too short to be a safetensors file ({size} bytes)")
        first = bytes(self._source.read(0, min(size, _FIRST_READ_BYTES)))
        (header_len,) = struct.unpack("<Q", first[:8])
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise SafetensorsError(f"{path}: header length {header_len} exceeds the file ({size} bytes)")
        header_bytes = first[8 : 8 + header_len]
        if len(header_bytes) < header_len:
            header_bytes += bytes(self._source.read(len(first), 8 + header_len - len(first)))
        try:
            header = json.loads(header_bytes)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{path}: header is not a JSON object")
        self.metadata = header.pop("__metadata__", {}) or {}
        self._data_start = 8 + header_len
        self._entries = {}
        for name, entry in header.items():
            try:
                dtype = _DTYPES[entry["dtype"]]
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise SafetensorsError(f"{path}: tensor {name!r} has a malformed header entry ({e!r})") from None
            if end - begin != math.prod(shape) * dtype.itemsize or begin < 0 or self._data_start + end > size:
                raise SafetensorsError(
                    f"{path}: tensor {name!r} ({entry['dtype']}{list(shape)}) has byte range [{begin}, {end}) "
                    f"that does not fit its shape or the file ({size} bytes)"
                )
            self._entries[name] = (dtype, shape, begin)

    def keys(self):
        return self._entries.keys()

    def __contains__(self, name):
        return name in self._entries

    def shape(self, name) -> tuple[int, ...]:
        return self._entries[name][1]

    def __getitem__(self, name) -> np.ndarray:
        """One tensor: a read-only view of the memory map (no copy until the caller converts it) for a
        local file, a fresh array from one ranged read for `gs://`."""
        dtype, shape, begin = self._entries[name]
        try:
            raw = self._source.read(self._data_start + begin, math.prod(shape) * dtype.itemsize)
        except OSError as e:
            raise type(e)(f"{e} (reading tensor {name!r})") from e
        return np.frombuffer(raw, dtype=dtype).reshape(shape)


def write_safetensors(
    path: str,
    specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
    fetch: Callable[[str], np.ndarray],
    metadata: dict[str, str] | None = None,
) -> int:
    """Writes the tensors `specs` names to `path` (local or `gs://`), calling `fetch(name)` for one at a time.

    Never a truncated file under the real name: a local file is written as `path + '.tmp'` and renamed; a
    `gs://` object is streamed by a resumable upload (nothing staged on local disk) that creates the object
    only when it completes, and is cancelled if anything fails. Returns the number of tensor bytes written.
    """
    if gcs.is_gcs(path):
        with gcs.open_writer(path) as file:
            return write_safetensors_to(file, specs, fetch, metadata, name=path)
    tmp_path = path + ".tmp"
    try:
        with open(tmp_path, "wb") as file:
            written = write_safetensors_to(file, specs, fetch, metadata, name=path)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return written


def write_safetensors_to(
    file: BinaryIO,
    specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
    fetch: Callable[[str], np.ndarray],
    metadata: dict[str, str] | None = None,
    *,
    name: str = "<stream>",
) -> int:
    """Writes a safetensors file to the binary stream `file`; `name` is what errors call it.

    The header is planned from the specs first, so at most one tensor is ever held in host memory, and
    it goes out in pieces of at most 16 MiB so a buffering writer never holds a second copy of it.
    """
    specs = list(specs)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for tensor, shape, dtype in specs:
        dtype = np.dtype(dtype)
        if dtype not in _NAMES:
            raise SafetensorsError(f"{name}: tensor {tensor!r} has dtype {dtype}, which safetensors cannot store")
        nbytes = math.prod(shape) * dtype.itemsize
        header[tensor] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # keep tensor data 8-byte aligned, as the reference does
    file.write(struct.pack("<Q", len(header_bytes)))
    file.write(header_bytes)
    for tensor, shape, dtype in specs:
        array = np.ascontiguousarray(fetch(tensor))
        if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
            raise SafetensorsError(
                f"{name}: tensor {tensor!r} arrived as {array.dtype}{list(array.shape)}, "
                f"planned as {np.dtype(dtype)}{list(shape)}"
            )
        data = memoryview(array.reshape(-1).view(np.uint8))
        for piece in range(0, len(data), _WRITE_PIECE_BYTES):
            file.write(data[piece : piece + _WRITE_PIECE_BYTES])
    return offset
