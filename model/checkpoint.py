"""Checkpoints: `safetensors` weights with JSON metadata. Never pickle."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load, save as st_save

from model.config import ModelConfig
from model.lstm import NextWordLSTM

FORMAT = "private-keyboard/checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, incompatible or holds non-finite weights."""


@dataclass
class CheckpointMeta:
    """What a checkpoint says about itself besides its weights."""

    config: ModelConfig
    tokenizer_sha256: str
    version: int = 0
    training: dict = field(default_factory=dict)

    def to_strings(self) -> dict[str, str]:
        return {"format": FORMAT, "config": self.config.to_json(),
                "tokenizer_sha256": self.tokenizer_sha256, "version": str(self.version),
                "training": json.dumps(self.training, sort_keys=True)}

    @classmethod
    def from_strings(cls, meta: dict[str, str] | None) -> CheckpointMeta:
        if not meta or meta.get("format") != FORMAT:
            raise CheckpointError(f"not a {FORMAT} file (metadata format is "
                                  f"{(meta or {}).get('format')!r})")
        try:
            return cls(ModelConfig.from_json(meta["config"]), meta["tokenizer_sha256"],
                       int(meta["version"]), json.loads(meta["training"]))
        except (KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"bad checkpoint metadata: {err}") from None


def model_to_bytes(model: NextWordLSTM, meta: CheckpointMeta) -> bytes:
    """The model's weights and metadata as safetensors bytes."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return st_save(tensors, metadata=meta.to_strings())


def read_metadata(data: bytes) -> dict[str, str]:
    """The raw string metadata of safetensors bytes, without reading the tensors."""
    if len(data) < 8:
        raise CheckpointError(f"truncated: {len(data)} bytes")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise CheckpointError(f"truncated: header says {header_len} bytes, "
                              f"file has {len(data) - 8}")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError("malformed safetensors header") from None
    return header.get("__metadata__") or {}


def model_from_bytes(data: bytes, tokenizer_sha256: str | None = None,
                     config: ModelConfig | None = None) -> tuple[NextWordLSTM, CheckpointMeta]:
    """A model from safetensors bytes, checked against the expected tokenizer and config."""
    meta = CheckpointMeta.from_strings(read_metadata(data))
    if tokenizer_sha256 is not None and meta.tokenizer_sha256 != tokenizer_sha256:
        raise CheckpointError(f"trained with tokenizer {meta.tokenizer_sha256[:12]}, "
                              f"not the loaded tokenizer {tokenizer_sha256[:12]}")
    if config is not None and meta.config != config:
        raise CheckpointError(f"architecture {meta.config} differs from expected {config}")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as err:
        raise CheckpointError(f"truncated or malformed weights: {err}") from None
    model = NextWordLSTM(meta.config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != expected:
        diff = sorted(set(expected.items()) ^ set(found.items()))[:3]
        raise CheckpointError(f"weights do not fit the architecture: {diff}")
    for name, tensor in tensors.items():
        if tensor.dtype != torch.float32:
            raise CheckpointError(f"{name}: dtype {tensor.dtype}, expected float32")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{name}: non-finite weights (nan or inf)")
    model.load_state_dict(tensors)
    model.eval()
    return model, meta


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write bytes so that a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is no secret
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, model: NextWordLSTM, meta: CheckpointMeta) -> None:
    """Write a checkpoint atomically."""
    write_atomically(path, model_to_bytes(model, meta))


def load_checkpoint(path: str | Path, tokenizer_sha256: str | None = None,
                    config: ModelConfig | None = None) -> tuple[NextWordLSTM, CheckpointMeta]:
    """A model from a checkpoint file; every problem is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return model_from_bytes(path.read_bytes(), tokenizer_sha256, config)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
