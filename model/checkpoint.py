"""Checkpoints: `safetensors` weights with JSON metadata. Never pickle."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load, save as st_save

from device_model.checkpoint import (FORMAT, CheckpointError,  # noqa: F401 (re-exported)
                                     CheckpointMeta, read_metadata)
from device_model.files import write_atomic
from model.config import ModelConfig
from model.lstm import NextWordLSTM


def model_to_bytes(model: NextWordLSTM, meta: CheckpointMeta) -> bytes:
    """The model's weights and metadata as safetensors bytes."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return st_save(tensors, metadata=meta.to_strings())


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


def save_checkpoint(path: str | Path, model: NextWordLSTM, meta: CheckpointMeta) -> None:
    """Write a checkpoint atomically (readable by all: a checkpoint is no secret)."""
    write_atomic(path, model_to_bytes(model, meta), mode=0o644)


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
