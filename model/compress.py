"""An int8 export for phones: per-row symmetric quantisation of the 2-D weights.

Each row r of a weight matrix is stored as int8 q with a float32 scale s_r = max|W_r| / 127,
W_r ~ s_r * q. Biases stay float32. The file is safetensors with the checkpoint's metadata
keys, its format marked int8; loading gives back a float NextWordLSTM.

    python -m model.compress CHECKPOINT OUT
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load, save as st_save
from torch import Tensor

from device_model.checkpoint import FORMAT_INT8, SCALE
from device_model.files import write_atomic
from model.checkpoint import (FORMAT, CheckpointError, CheckpointMeta, load_checkpoint,
                              read_metadata)
from model.lstm import NextWordLSTM


def quantize(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 values, float32 scale per row) with weight ~ values * scale[:, None]."""
    scale = weight.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).float()
    values = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return values, scale


def dequantize(values: Tensor, scale: Tensor) -> Tensor:
    return values.float() * scale[:, None]


def model_to_int8_bytes(model: NextWordLSTM, meta: CheckpointMeta) -> bytes:
    """The model as int8 safetensors bytes (2-D weights quantised, the rest float32)."""
    tensors: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().float().contiguous()
        if tensor.dim() == 2:
            tensors[name], tensors[name + SCALE] = quantize(tensor)
        else:
            tensors[name] = tensor
    return st_save(tensors, metadata={**meta.to_strings(), "format": FORMAT_INT8})


def _restore(name: str, template: Tensor, tensors: dict[str, Tensor]) -> Tensor:
    """One float weight from the stored tensors, checked against the architecture."""
    value = tensors.get(name)
    if value is None or tuple(value.shape) != tuple(template.shape):
        found = None if value is None else tuple(value.shape)
        raise CheckpointError(f"{name}: missing or shape {found}, "
                              f"expected {tuple(template.shape)}")
    if template.dim() != 2:
        if value.dtype != torch.float32 or not torch.isfinite(value).all():
            raise CheckpointError(f"{name}: needs finite float32 values")
        return value
    scale = tensors.get(name + SCALE)
    if value.dtype != torch.int8:
        raise CheckpointError(f"{name}: dtype {value.dtype}, expected int8")
    if scale is None or scale.dtype != torch.float32 or tuple(scale.shape) != (template.shape[0],):
        raise CheckpointError(f"{name}{SCALE}: needs float32 shape ({template.shape[0]},)")
    if not (torch.isfinite(scale).all() and (scale > 0).all()):
        raise CheckpointError(f"{name}{SCALE}: scales must be finite and positive")
    return dequantize(value, scale)


def model_from_int8_bytes(data: bytes, tokenizer_sha256: str | None = None
                          ) -> tuple[NextWordLSTM, CheckpointMeta]:
    """A float model from int8 bytes, checked like `model.checkpoint.model_from_bytes`."""
    strings = read_metadata(data)
    if strings.get("format") != FORMAT_INT8:
        raise CheckpointError(f"not a {FORMAT_INT8} file (metadata format is "
                              f"{strings.get('format')!r})")
    meta = CheckpointMeta.from_strings({**strings, "format": FORMAT})
    if tokenizer_sha256 is not None and meta.tokenizer_sha256 != tokenizer_sha256:
        raise CheckpointError(f"trained with tokenizer {meta.tokenizer_sha256[:12]}, "
                              f"not the loaded tokenizer {tokenizer_sha256[:12]}")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as err:
        raise CheckpointError(f"truncated or malformed weights: {err}") from None
    model = NextWordLSTM(meta.config)
    template = model.state_dict()
    expected = set(template) | {k + SCALE for k, v in template.items() if v.dim() == 2}
    if set(tensors) != expected:
        raise CheckpointError(f"unexpected tensors {sorted(set(tensors) ^ expected)[:3]}")
    model.load_state_dict({k: _restore(k, v, tensors) for k, v in template.items()})
    return model.eval(), meta


def save_int8(path: str | Path, model: NextWordLSTM, meta: CheckpointMeta) -> None:
    """Write the int8 file atomically."""
    write_atomic(path, model_to_int8_bytes(model, meta), mode=0o644)


def load_int8(path: str | Path, tokenizer_sha256: str | None = None
              ) -> tuple[NextWordLSTM, CheckpointMeta]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return model_from_int8_bytes(path.read_bytes(), tokenizer_sha256)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None


def load_any(path: str | Path, tokenizer_sha256: str | None = None
             ) -> tuple[NextWordLSTM, CheckpointMeta]:
    """A float32 or an int8 checkpoint, whichever the file holds."""
    path = Path(path)
    try:
        int8 = path.is_file() and read_metadata(path.read_bytes()).get("format") == FORMAT_INT8
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return load_int8(path, tokenizer_sha256) if int8 else load_checkpoint(path, tokenizer_sha256)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.compress",
                                     description="Export a checkpoint as int8 safetensors.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        model, meta = load_checkpoint(args.checkpoint)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    save_int8(args.out, model, meta)
    before, after = args.checkpoint.stat().st_size, args.out.stat().st_size
    print(f"float32 {args.checkpoint}: {before:,} bytes")
    print(f"int8    {args.out}: {after:,} bytes ({after / before:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
