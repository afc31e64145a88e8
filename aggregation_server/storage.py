"""Blobs in the data dir: model versions, optimizer state and pending updates.

Every file is written atomically (temporary file, fsync, rename, fsync of the folder):
a crash leaves the old file or the new one, never half of one. The database holds each
model version's sha256 and provenance; the files hold the bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from federated.wire import WireError, tensors_from_bytes, tensors_to_bytes
from model.config import ModelConfig
from model.tokenizer import TokenizerError, WordTokenizer

CHECKPOINT_FORMAT = "private-keyboard/checkpoint-1"  # as model/checkpoint.py writes it
Tensors = dict[str, np.ndarray]
Shapes = dict[str, tuple[int, ...]]


class StorageError(ValueError):
    """A checkpoint or tokenizer the server cannot serve."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that it is on disk, whole, once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_checkpoint(data: bytes, tokenizer_sha256: str | None = None) -> tuple[Tensors, dict]:
    """Tensors and metadata of checkpoint bytes, or StorageError saying what is wrong."""
    try:
        tensors, meta = tensors_from_bytes(data)
    except WireError as err:
        raise StorageError(f"not a safetensors checkpoint: {err}") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise StorageError(f"metadata format is {meta.get('format')!r}, "
                           f"not {CHECKPOINT_FORMAT!r}")
    try:
        ModelConfig.from_json(meta["config"])
        int(meta["version"])
        if not isinstance(json.loads(meta["training"]), dict):
            raise ValueError("training metadata is not an object")
        sha = meta["tokenizer_sha256"]
    except (KeyError, ValueError, TypeError) as err:
        raise StorageError(f"bad checkpoint metadata: {err}") from None
    if tokenizer_sha256 is not None and sha != tokenizer_sha256:
        raise StorageError(f"checkpoint was made with tokenizer {sha[:12]}, "
                           f"not the given tokenizer {tokenizer_sha256[:12]}")
    if not tensors:
        raise StorageError("checkpoint holds no tensors")
    for name, tensor in tensors.items():
        if tensor.dtype != np.float32:
            raise StorageError(f"tensor {name!r} is {tensor.dtype}, expected float32")
        if not np.isfinite(tensor).all():
            raise StorageError(f"tensor {name!r} has non-finite values")
    return tensors, meta


def load_tokenizer_text(path: Path) -> tuple[str, str]:
    """The text of a tokenizer.json and its sha256 as the tokenizer computes it."""
    try:
        tokenizer = WordTokenizer.load(path)
    except TokenizerError as err:
        raise StorageError(str(err)) from None
    return tokenizer.to_json(), tokenizer.sha256


class BlobStore:
    """Where files live under the data dir; paths in the database are relative to it."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir).resolve()
        for sub in ("models", "optimizer", "updates"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def abs(self, relative: str) -> Path:
        return self.root / relative

    @staticmethod
    def model_path(version: int) -> str:
        return f"models/{version:06d}.safetensors"

    @staticmethod
    def optimizer_path(version: int) -> str:
        return f"optimizer/{version:06d}.safetensors"

    @staticmethod
    def update_path(round_id: int, device_id: str, body_sha256: str) -> str:
        return f"updates/{round_id}/{device_id}-{body_sha256[:16]}.safetensors"

    def write(self, relative: str, data: bytes) -> None:
        write_atomic(self.abs(relative), data)

    def delete_round_updates(self, round_id: int) -> None:
        shutil.rmtree(self.root / "updates" / str(round_id), ignore_errors=True)

    def tokenizer_path(self) -> Path:
        return self.root / "tokenizer.json"

    def shapes(self, relative: str) -> Shapes:
        """Tensor names and shapes of a stored safetensors file, from its header only."""
        with safe_open(self.abs(relative), framework="numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

    def metadata(self, relative: str) -> dict[str, str]:
        with safe_open(self.abs(relative), framework="numpy") as f:
            return dict(f.metadata() or {})

    def tensors(self, relative: str) -> Tensors:
        return load_file(self.abs(relative))

    def write_tensors(self, relative: str, tensors: Tensors, metadata: dict[str, str]) -> bytes:
        data = tensors_to_bytes(tensors, metadata)
        self.write(relative, data)
        return data
