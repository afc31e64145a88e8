"""The safetensors file format on NumPy alone: one bounded parser for models and updates.

A file is an 8-byte little-endian header length N, N bytes of JSON, then the raw
little-endian tensor bytes. The header maps each tensor name to its dtype, shape and
[begin, end) offsets into the data, plus an optional `__metadata__` object of strings.
`save` writes what the `safetensors` library writes (tensors ordered by dtype, then name;
header padded with spaces to 8 bytes; metadata keys sorted, where the library's order is
arbitrary), so the server reads device bytes unchanged. `load` checks everything the
library checks, and bounds the header's size and nesting before parsing any JSON.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_HEADER_BYTES = 1024 * 1024  # a 1.5M-parameter model's header is under 1 KB
MAX_NESTING = 3  # {name: {"shape": [...]}} is as deep as a valid header goes
METADATA = "__metadata__"
# The `safetensors` dtype names, in the order its writer sorts them (largest first).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"), "U16": np.dtype("<u2"), "F16": np.dtype("<f2"),
    "I32": np.dtype("<i4"), "U32": np.dtype("<u4"), "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"), "I64": np.dtype("<i8"), "U64": np.dtype("<u8")}
_RANK = {name: rank for rank, name in enumerate(DTYPES)}
_NAMES = {dtype.newbyteorder("<"): name for name, dtype in DTYPES.items()}
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")  # every byte that is not a bracket


class TensorFileError(ValueError):
    """Bytes that are not a well-formed, bounded safetensors file; says exactly why."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _nesting(header: bytes) -> int:
    """How deeply `[` and `{` nest in JSON text, strings left out."""
    brackets = _STRING.sub(b"", header).translate(None, _BRACKETS)
    if not brackets:
        return 0
    steps = np.frombuffer(brackets, dtype=np.uint8)
    depth = np.cumsum(np.where((steps == ord("[")) | (steps == ord("{")), 1, -1))
    return int(depth.max())


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise TensorFileError("header has a duplicate key")
    return dict(pairs)


def _info(name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise TensorFileError(f"tensor {name!r}: needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise TensorFileError(f"tensor {name!r}: unsupported dtype {dtype!r}")
    ints = isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2 and all(
        type(v) is int and v >= 0 for v in [*shape, *offsets])
    if not ints:
        raise TensorFileError(f"tensor {name!r}: shape and data_offsets must be "
                              "non-negative integers")
    begin, end = offsets
    size = DTYPES[dtype].itemsize
    for dim in shape:
        size *= dim
    if end - begin != size:
        raise TensorFileError(f"tensor {name!r}: offsets [{begin}, {end}) do not hold "
                              f"shape {shape} of {dtype}")
    return TensorInfo(dtype, tuple(shape), begin, end)


def read_header(data: bytes, max_header_bytes: int = MAX_HEADER_BYTES
                ) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """(tensor entries in file order, string metadata, where the data starts)."""
    return _parse_header(data, len(data), max_header_bytes)


def read_file_header(path: str | Path, max_header_bytes: int = MAX_HEADER_BYTES
                     ) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """`read_header` of a file, reading only its header (the file's size stands in for
    the data section, which is not read)."""
    with open(path, "rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else 0
        head += f.read(min(size, max_header_bytes + 1))
        total = os.fstat(f.fileno()).st_size
    return _parse_header(head, total, max_header_bytes)


def _parse_header(data: bytes, total: int, max_header_bytes: int
                  ) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """The header at the start of `data`, a file of `total` bytes, checked in full."""
    if total < 8:
        raise TensorFileError(f"truncated: {total} bytes is too short for safetensors")
    size = int.from_bytes(data[:8], "little")
    if size > max_header_bytes:
        raise TensorFileError(f"header of {size} bytes is over the {max_header_bytes}-byte limit")
    if size > total - 8:
        raise TensorFileError(f"truncated: header says {size} bytes, file has {total - 8}")
    text = bytes(data[8:8 + size])
    if _nesting(text) > MAX_NESTING:
        raise TensorFileError(f"header nests deeper than {MAX_NESTING} levels")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TensorFileError("malformed header (not JSON)") from None
    if not isinstance(header, dict):
        raise TensorFileError("malformed header (not an object)")
    metadata = header.pop(METADATA, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise TensorFileError("header __metadata__ must map names to strings")
    infos = sorted(((k, _info(k, v)) for k, v in header.items()), key=lambda kv: kv[1].begin)
    position = 0
    for name, info in infos:
        if info.begin != position:
            raise TensorFileError(f"tensor {name!r}: data at {info.begin}, expected {position}")
        position = info.end
    if position != total - 8 - size:
        raise TensorFileError(f"truncated or overlong: the data section is "
                              f"{total - 8 - size} bytes, the tensors need {position}")
    return dict(infos), metadata, 8 + size


def load(data: bytes, max_header_bytes: int = MAX_HEADER_BYTES
         ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(named tensors, string metadata) from safetensors bytes; TensorFileError if malformed.

    The arrays are views of `data`: read-only for `bytes` (copy one before changing it),
    writable for a `bytearray` (or a writable memoryview).
    """
    infos, metadata, start = read_header(data, max_header_bytes)
    tensors = {}
    for name, info in infos.items():
        dtype = DTYPES[info.dtype]
        count = (info.end - info.begin) // dtype.itemsize
        flat = np.frombuffer(data, dtype=dtype, count=count, offset=start + info.begin)
        tensors[name] = flat.reshape(info.shape)
    return tensors, metadata


def load_file(path: str | Path, max_header_bytes: int = MAX_HEADER_BYTES
              ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """`load` of a file; the arrays are writable views of the one buffer read from it
    (uninitialised before the read: zero-filling a bytearray first cost the server's
    aggregation about 0.2 ms per 6.2 MB update, BENCHMARKS.md)."""
    with open(path, "rb") as f:
        data = np.empty(os.fstat(f.fileno()).st_size, np.uint8)
        if f.readinto(data) != len(data):
            raise TensorFileError(f"{path}: the file changed while it was read")
    return load(memoryview(data), max_header_bytes)


def read_metadata(data: bytes, max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, str]:
    """Only the string metadata (the header is still checked in full)."""
    return read_header(data, max_header_bytes)[1]


def save(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Safetensors bytes the `safetensors` library reads back to the same tensors."""
    arrays = {}
    for name, tensor in tensors.items():
        array = np.asarray(tensor)
        dtype = _NAMES.get(array.dtype.newbyteorder("<"))
        if dtype is None or name == METADATA:
            raise TensorFileError(f"tensor {name!r}: cannot store dtype {array.dtype}")
        arrays[name] = (dtype, np.asarray(array, dtype=DTYPES[dtype], order="C"))
    order = sorted(arrays, key=lambda k: (-_RANK[arrays[k][0]], k))
    header: dict[str, object] = {}
    if metadata is not None:
        header[METADATA] = {k: str(metadata[k]) for k in sorted(metadata)}
    position = 0
    for name in order:
        dtype, array = arrays[name]
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [position, position + array.nbytes]}
        position += array.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return b"".join([len(text).to_bytes(8, "little"), text,
                     *(arrays[name][1].tobytes() for name in order)])
