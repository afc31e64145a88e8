"""Global model versions as files: version 0 from a checkpoint, later ones from a round's updates.

Only files here (written atomically); the caller records the result in the database.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregation_server.config import RoundConfig, Settings
from aggregation_server.db import ModelVersion
from aggregation_server.storage import (BlobStore, StorageError, check_checkpoint,
                                        load_tokenizer_text, sha256_hex)
from aggregation_server.strategy import (RoundInputs, RoundPolicy, StoredUpdate, Tensors,
                                         weighted_metrics)
from device_model.checkpoint import (FORMAT_INT8, CheckpointError, read_metadata,
                                     weights_from_bytes, weights_to_bytes)
from model.paths import SHIPPED_MODEL, SHIPPED_TOKENIZER

log = logging.getLogger("aggregation_server.versions")


def float32_checkpoint(data: bytes) -> bytes:
    """Checkpoint bytes as float32: an int8 export (the shipped model) is expanded first."""
    try:
        int8 = read_metadata(data).get("format") == FORMAT_INT8
    except CheckpointError:
        return data  # check_checkpoint says what is wrong with it
    if not int8:
        return data
    try:
        return weights_to_bytes(*weights_from_bytes(data))
    except CheckpointError as err:
        raise StorageError(f"not a usable int8 checkpoint: {err}") from None


def initial_version(blobs: BlobStore, settings: Settings, now: float) -> ModelVersion:
    """Validate --init-model and its tokenizer, store them as version 0 (made at `now`)."""
    init, tok = settings.init_model, settings.tokenizer
    if not init and not tok:  # the public pre-trained model shipped in the package
        init, tok = SHIPPED_MODEL, SHIPPED_TOKENIZER
    if not init or not tok:
        raise StorageError("--init-model and --tokenizer go together: give both, or neither "
                           "for the pre-trained model shipped with the server")
    if not Path(init).is_file():
        raise StorageError(f"{init}: file not found")
    tokenizer_text, tokenizer_sha = load_tokenizer_text(Path(tok))
    tensors, meta = check_checkpoint(float32_checkpoint(Path(init).read_bytes()), tokenizer_sha)
    meta = dict(meta, version="0")  # re-saved with version 0 in its metadata
    path = blobs.model_path(0)
    data = blobs.write_tensors(path, tensors, meta)
    blobs.write("tokenizer.json", tokenizer_text.encode("utf-8"))
    log.info("model_initialized", extra={"source": str(init), "sha256": sha256_hex(data)})
    return ModelVersion(version=0, sha256=sha256_hex(data), path=path, size=len(data),
                        created_at=now, round_id=None, reports=0, metrics={},
                        provenance={"source": Path(init).name,
                                    "training": json.loads(meta["training"])})


@dataclass
class NewVersion:
    """A version written to disk, not yet recorded in the database."""

    version: int
    path: str
    sha256: str
    size: int
    metrics: dict[str, float]
    provenance: dict[str, Any]
    optimizer_path: str | None

    def row(self, round_id: int, now: float) -> ModelVersion:
        """Its database record, made at `now`."""
        return ModelVersion(version=self.version, sha256=self.sha256, path=self.path,
                            size=self.size, created_at=now, round_id=round_id,
                            reports=self.provenance["reports"], metrics=self.metrics,
                            provenance=self.provenance, optimizer_path=self.optimizer_path)


def build_version(blobs: BlobStore, shapes: dict, round_id: int, config: RoundConfig,
                  updates: list[StoredUpdate], base: ModelVersion, version: int,
                  prev_optimizer: str | None, policy: RoundPolicy) -> NewVersion:
    """The policy's next model from the updates (its mean and server optimizer step), as a
    new checkpoint file (and the optimizer's state).

    Deterministic for the same inputs, so a process taking over a lapsed aggregation
    writes the same files again.
    """
    inputs = RoundInputs(round_id, config, shapes, updates, lambda u: blobs.tensors(u.path))
    weights, state, optimizer = policy.aggregate(
        inputs, blobs.tensors(base.path),
        lambda name: _optimizer_state(blobs, prev_optimizer, name), version)
    metrics = weighted_metrics(updates)
    provenance = {
        "round_id": round_id, "base_version": base.version, "reports": len(updates),
        "server_optimizer": optimizer.name, "server_lr": optimizer.lr,
        "weighting": "uniform" if config.uniform else "examples",
        "clip_norm": config.clip_norm, "noise_multiplier": config.noise_multiplier,
        "min_reports": config.min_reports, "secure_aggregation": config.secure_aggregation,
        "metrics": metrics}
    meta = dict(blobs.metadata(base.path), version=str(version),
                training=json.dumps({"federated": provenance}, sort_keys=True))
    path = blobs.model_path(version)
    data = blobs.write_tensors(path, weights, meta)
    opt_path = None
    if state:
        opt_path = blobs.optimizer_path(version)
        blobs.write_tensors(opt_path, state, {"optimizer": optimizer.name})
    return NewVersion(version, path, sha256_hex(data), len(data), metrics, provenance, opt_path)


def _optimizer_state(blobs: BlobStore, path: str | None, name: str) -> Tensors:
    """The server optimizer's state after the latest version, if it was the same kind."""
    if not path or blobs.metadata(path).get("optimizer") != name:
        return {}
    return blobs.tensors(path)
