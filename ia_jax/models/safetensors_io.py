"""Reading and writing the safetensors format tensor by tensor, bfloat16 included.

The `safetensors` package's numpy backend cannot read bfloat16 (the dtype of every published Llama
and Qwen checkpoint), and its writers want a whole shard in memory. The format is a little-endian
u64 header length, a JSON header of `{name: {dtype, shape, data_offsets}}` and raw bytes, so we read it
through a memory map (only the bytes a tensor needs are touched) and write it as a stream. Nothing
here executes code from the file: it is data only, which is why weights are loaded from nothing else.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

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


class SafetensorsError(ValueError):
    """A malformed or inconsistent safetensors file; the message names the file and tensor."""


class SafetensorsFile:
    """Lazy view of one `.safetensors` file: `file[name]` maps just that tensor's bytes."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise SafetensorsError(f"{path}: too short to be a safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER_BYTES, size - 8):
                raise SafetensorsError(f"{path}: header length {header_len} exceeds the file ({size} bytes)")
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
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
        self._mmap = None

    def keys(self):
        return self._entries.keys()

    def __contains__(self, name):
        return name in self._entries

    def shape(self, name) -> tuple[int, ...]:
        return self._entries[name][1]

    def __getitem__(self, name) -> np.ndarray:
        """A read-only array backed by the memory map: no copy until the caller converts it."""
        dtype, shape, begin = self._entries[name]
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        start = self._data_start + begin
        raw = self._mmap[start : start + math.prod(shape) * dtype.itemsize]
        return raw.view(dtype).reshape(shape)


def write_safetensors(
    path: str,
    specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
    fetch: Callable[[str], np.ndarray],
    metadata: dict[str, str] | None = None,
) -> int:
    """Writes the tensors `specs` names, calling `fetch(name)` for one tensor at a time.

    The header is planned from the specs first, so at most one tensor is ever held in host memory.
    Writes to `path + '.tmp'` and renames, so a crash never leaves a truncated file under the real name.
    Returns the number of tensor bytes written.
    """
    specs = list(specs)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in specs:
        dtype = np.dtype(dtype)
        if dtype not in _NAMES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {dtype}, which safetensors cannot store")
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # keep tensor data 8-byte aligned, as the reference does
    tmp_path = path + ".tmp"
    with open(tmp_path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name, shape, dtype in specs:
            array = np.ascontiguousarray(fetch(name))
            if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
                raise SafetensorsError(
                    f"{path}: tensor {name!r} arrived as {array.dtype}{list(array.shape)}, "
                    f"planned as {np.dtype(dtype)}{list(shape)}"
                )
            f.write(array.tobytes())
    os.replace(tmp_path, path)
    return offset
