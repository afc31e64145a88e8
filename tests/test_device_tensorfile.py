"""device_model.tensorfile, the NumPy safetensors reader and writer, against the library."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load as st_load, save as st_save

from device_model import tensorfile
from device_model.tensorfile import TensorFileError
from federated.wire import Update, decode_update, encode_update

ALL_DTYPES = ["?", "u1", "i1", "<i2", "<u2", "<f2", "<i4", "<u4", "<f4", "<f8", "<i8", "<u8"]


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {f"t_{np.dtype(d).name}": (rng.normal(size=(3, 5)) * 50).astype(d) for d in ALL_DTYPES}
    out.update({"empty": np.zeros((0, 4), np.float32), "scalar": np.array(2.5, np.float32),
                "é name": np.arange(7, dtype=np.int8)})
    return out


def _header(data: bytes) -> bytes:
    return data[8:8 + int.from_bytes(data[:8], "little")]


@pytest.mark.parametrize("metadata", [None, {}, {"format": "x"}])
def test_bytes_are_the_librarys(metadata):
    tensors = _tensors()
    assert tensorfile.save(tensors, metadata) == st_save(tensors, metadata=metadata)


def test_many_metadata_keys_read_back_the_same_both_ways():
    tensors, meta = _tensors(), {"z": "1", "a": "ü\n\"", "format": "f"}
    ours, theirs = tensorfile.save(tensors, meta), st_save(tensors, metadata=meta)
    assert len(ours) == len(theirs) and ours[len(ours) - 200:] == theirs[len(theirs) - 200:]
    assert json.loads(_header(ours)) == json.loads(_header(theirs))
    for data in (ours, theirs):
        back, got = tensorfile.load(data)
        assert got == meta and back.keys() == tensors.keys()
        assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype
                   for k, v in tensors.items())
        assert all(np.array_equal(st_load(data)[k], v) for k, v in tensors.items())


def test_update_bytes_the_server_reads_are_unchanged():
    rng = np.random.default_rng(1)
    update = Update({"a.weight": rng.normal(size=(4, 3)).astype(np.float32),
                     "b": rng.normal(size=5).astype(np.float32)}, 3, 7, 12, {"loss": 1.5})
    body = encode_update(update)
    tensors, meta = tensorfile.load(body)
    again = tensorfile.save(tensors, meta)
    assert json.loads(_header(again)) == json.loads(_header(body))
    assert again[8 + len(_header(again)):] == body[8 + len(_header(body)):]
    decoded = decode_update(again, {"a.weight": (4, 3), "b": (5,)})
    assert (decoded.round_id, decoded.num_examples, decoded.metrics) == (3, 12, {"loss": 1.5})
    assert all(np.array_equal(decoded.tensors[k], v) for k, v in update.tensors.items())


def _raw(header: object, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return len(text).to_bytes(8, "little") + text + data


GOOD = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize("data, message", [
    (b"\x01\x00", "truncated"),
    ((10**9).to_bytes(8, "little") + b"{}", "over the"),
    (_raw({})[:-1], "truncated"),
    (_raw(b"[" * 5000 + b"]" * 5000), "nests deeper"),
    (_raw(b'{"a": {"b": {"c": {"d": 1}}}}'), "nests deeper"),
    (_raw(b"{not json"), "not JSON"),
    (_raw([1, 2]), "not an object"),
    (_raw(b'{"x": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "x": {}}'), "duplicate"),
    (_raw({"x": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "dtype"),
    (_raw({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)), "do not hold"),
    (_raw({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)),
     "non-negative"),
    (_raw({"x": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, bytes(8)), "integers"),
    (_raw({"x": {"dtype": "F32", "shape": [2]}}, bytes(8)), "exactly"),
    (_raw({**GOOD, "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
     "expected 8"),
    (_raw(GOOD, bytes(4)), "truncated"),
    (_raw(GOOD, bytes(12)), "overlong"),
    (_raw({**GOOD, "__metadata__": {"a": 1}}, bytes(8)), "strings"),
])
def test_malformed_files_are_refused_with_the_reason(data, message):
    with pytest.raises(TensorFileError, match=message):
        tensorfile.load(data)


def test_header_limit_is_a_parameter_and_arrays_are_read_only():
    data = tensorfile.save({"x": np.ones(3, np.float32)}, {"k": "v" * 100})
    with pytest.raises(TensorFileError, match="over the 64-byte limit"):
        tensorfile.load(data, max_header_bytes=64)
    tensors, _ = tensorfile.load(data)
    assert not tensors["x"].flags.writeable
    with pytest.raises(TensorFileError, match="cannot store"):
        tensorfile.save({"x": np.zeros(2, np.complex64)})
