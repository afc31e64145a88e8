"""Blobs: model versions, optimizer state, pending updates and masked inputs, the tokenizer.

`BlobStore` keeps them as files in the data dir (`blob_store = "files"`, the default):
every file is written atomically (`device_model.files.write_atomic`: temporary file, fsync,
rename, fsync of the folder), so a crash leaves the old file or the new one, never half of
one. `DatabaseBlobStore`
(`blob_store = "database"`) keeps them in the shared PostgreSQL database's `blobs` table,
so server processes on several hosts, each with its own data dir, serve one deployment;
the data dir then only caches files by content hash. The database holds each model
version's sha256 and provenance either way. Headers and tensors are read with
`device_model.tensorfile`, the one bounded safetensors parser.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from aggregation_server.db import Blob
from device_model import tensorfile
from device_model.files import write_atomic
from device_model.tensorfile import TensorFileError
from federated.wire import WireError, tensors_from_bytes, tensors_to_bytes
from federated.clock import Clock, SystemClock
from model.config import ModelConfig
from model.tokenizer import TokenizerError, WordTokenizer

CHECKPOINT_FORMAT = "private-keyboard/checkpoint-1"  # as model/checkpoint.py writes it
Tensors = dict[str, np.ndarray]
Shapes = dict[str, tuple[int, ...]]


class StorageError(ValueError):
    """A checkpoint or tokenizer the server cannot serve."""


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

    def read(self, relative: str) -> bytes:
        return self.abs(relative).read_bytes()

    def exists(self, relative: str) -> bool:
        return self.abs(relative).is_file()

    def delete(self, relative: str) -> None:
        self.abs(relative).unlink(missing_ok=True)

    def delete_round_updates(self, round_id: int) -> None:
        shutil.rmtree(self.root / "updates" / str(round_id), ignore_errors=True)

    def tokenizer_path(self) -> Path:
        return self.abs("tokenizer.json")

    def shapes(self, relative: str) -> Shapes:
        """Tensor names and shapes of a stored safetensors file, from its header only."""
        infos, _, _ = self._header(relative)
        return {name: info.shape for name, info in infos.items()}

    def metadata(self, relative: str) -> dict[str, str]:
        """The string metadata of a stored safetensors file, from its header only."""
        return self._header(relative)[1]

    def tensors(self, relative: str) -> Tensors:
        """The named tensors of a stored safetensors file (writable arrays)."""
        try:
            return tensorfile.load_file(self.abs(relative))[0]
        except TensorFileError as err:
            raise StorageError(f"{relative}: {err}") from None

    def _header(self, relative: str) -> tuple[dict[str, tensorfile.TensorInfo],
                                              dict[str, str], int]:
        try:
            return tensorfile.read_file_header(self.abs(relative))
        except TensorFileError as err:
            raise StorageError(f"{relative}: {err}") from None

    def write_tensors(self, relative: str, tensors: Tensors, metadata: dict[str, str]) -> bytes:
        data = tensors_to_bytes(tensors, metadata)
        self.write(relative, data)
        return data


class DatabaseBlobStore(BlobStore):
    """Blobs in the database's `blobs` table (PostgreSQL), reachable from every host.

    A write is committed before it returns, as a file write is synced. Reads of model
    versions, optimizer state and the tokenizer go through a cache in the data dir named
    by content hash (a rewritten blob gets a new name); updates and masked inputs are read
    from the database each time, so no host keeps copies of a round another host closed.
    """

    def __init__(self, data_dir: Path, engine: Engine, clock: Clock = SystemClock()) -> None:
        super().__init__(data_dir)
        self.engine, self.clock = engine, clock  # the clock: the blobs' created_at
        self.table = Blob.__table__
        (self.root / "cache").mkdir(exist_ok=True)

    def _sha256(self, relative: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.scalar(select(self.table.c.sha256).where(self.table.c.name == relative))

    def abs(self, relative: str) -> Path:
        """A local file with the blob's bytes (fetched into the cache if needed); a path that
        does not exist if there is no such blob."""
        sha = self._sha256(relative)
        if sha is None:
            return self.root / "cache" / "missing" / relative
        path = self.root / "cache" / f"{sha}{Path(relative).suffix}"
        if not path.is_file():
            write_atomic(path, self.read(relative))
        return path

    def write(self, relative: str, data: bytes) -> None:
        row = {"name": relative, "sha256": sha256_hex(data), "size": len(data), "data": data,
               "created_at": self.clock()}
        statement = insert(self.table).values(**row)
        statement = statement.on_conflict_do_update(
            index_elements=[self.table.c.name],
            set_={k: statement.excluded[k] for k in row if k != "name"})
        with self.engine.begin() as conn:
            conn.execute(statement)

    def read(self, relative: str) -> bytes:
        with self.engine.connect() as conn:
            data = conn.scalar(select(self.table.c.data).where(self.table.c.name == relative))
        if data is None:
            raise FileNotFoundError(f"no blob {relative!r} in the database")
        return bytes(data)

    def exists(self, relative: str) -> bool:
        return self._sha256(relative) is not None

    def delete(self, relative: str) -> None:
        """Delete the blob, and this host's cached copy (other hosts' copies stay until
        their data dir is cleared: `cache/` may be emptied at any time)."""
        sha = self._sha256(relative)
        with self.engine.begin() as conn:
            conn.execute(delete(self.table).where(self.table.c.name == relative))
        if sha is not None:
            (self.root / "cache" / f"{sha}{Path(relative).suffix}").unlink(missing_ok=True)

    def delete_round_updates(self, round_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(self.table).where(
                self.table.c.name.startswith(f"updates/{round_id}/", autoescape=True)))

    def tensors(self, relative: str) -> Tensors:
        if not relative.startswith("updates/"):
            return super().tensors(relative)
        try:  # writable views of one copy
            return tensorfile.load(bytearray(self.read(relative)))[0]
        except TensorFileError as err:
            raise StorageError(f"{relative}: {err}") from None


def blob_store(kind: str, data_dir: Path, engine: Engine,
               clock: Clock = SystemClock()) -> BlobStore:
    """The store a `blob_store` setting names."""
    return DatabaseBlobStore(data_dir, engine, clock) if kind == "database" \
        else BlobStore(data_dir)
