"""Model files on NumPy: the float32 checkpoint and the int8 export, read and written.

The formats are `model.checkpoint`'s and `model.compress`'s (safetensors with string
metadata; the int8 file holds each 2-D weight as int8 rows with a float32 scale per row).
Loading checks what those loaders check: format, tokenizer, architecture, dtypes, shapes
and finiteness; every problem is a `CheckpointError`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device_model import tensorfile
from device_model.tensorfile import TensorFileError
from model.config import ModelConfig

FORMAT = "private-keyboard/checkpoint-1"
FORMAT_INT8 = FORMAT + "+int8"
SCALE = ".scale"
Weights = dict[str, np.ndarray]


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


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The weights of `model.lstm.NextWordLSTM`, by its state_dict names."""
    v, e, h = config.vocab_size, config.embed_dim, config.hidden_size
    return {"embedding.weight": (v, e), "lstm.weight_ih_l0": (4 * h, e),
            "lstm.weight_hh_l0": (4 * h, e), "lstm.bias_ih_l0": (4 * h,),
            "lstm.bias_hh_l0": (4 * h,), "lstm.weight_hr_l0": (e, h), "output_bias": (v,)}


def _tensors(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        return tensorfile.load(data)
    except TensorFileError as err:
        raise CheckpointError(f"truncated or malformed weights: {err}") from None


def read_metadata(data: bytes) -> dict[str, str]:
    """The string metadata of safetensors bytes (the header is checked, not the weights)."""
    try:
        return tensorfile.read_metadata(data)
    except TensorFileError as err:
        raise CheckpointError(str(err)) from None


def checkpoint_meta(data: bytes) -> CheckpointMeta:
    """The checkpoint metadata of a float or an int8 file (header only)."""
    strings = read_metadata(data)
    int8 = strings.get("format") == FORMAT_INT8
    return CheckpointMeta.from_strings({**strings, "format": FORMAT} if int8 else strings)


def _meta(strings: dict[str, str], tokenizer_sha256: str | None,
          config: ModelConfig | None) -> CheckpointMeta:
    meta = CheckpointMeta.from_strings(strings)
    if tokenizer_sha256 is not None and meta.tokenizer_sha256 != tokenizer_sha256:
        raise CheckpointError(f"trained with tokenizer {meta.tokenizer_sha256[:12]}, "
                              f"not the loaded tokenizer {tokenizer_sha256[:12]}")
    if config is not None and meta.config != config:
        raise CheckpointError(f"architecture {meta.config} differs from expected {config}")
    return meta


def _finite_float32(name: str, value: np.ndarray) -> np.ndarray:
    if value.dtype != np.float32:
        raise CheckpointError(f"{name}: dtype {value.dtype}, expected float32")
    if not np.isfinite(value).all():
        raise CheckpointError(f"{name}: non-finite weights (nan or inf)")
    return value


def _dequantize(name: str, values: np.ndarray, tensors: dict[str, np.ndarray]) -> np.ndarray:
    if values.dtype != np.int8:
        raise CheckpointError(f"{name}: dtype {values.dtype}, expected int8")
    scale = tensors[name + SCALE]
    if scale.dtype != np.float32 or scale.shape != (values.shape[0],):
        raise CheckpointError(f"{name}{SCALE}: needs float32 shape ({values.shape[0]},)")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise CheckpointError(f"{name}{SCALE}: scales must be finite and positive")
    return values.astype(np.float32) * scale[:, None]


def weights_from_bytes(data: bytes, tokenizer_sha256: str | None = None,
                       config: ModelConfig | None = None) -> tuple[Weights, CheckpointMeta]:
    """Float32 weights (writable copies) from a float or an int8 file, whichever it is."""
    tensors, strings = _tensors(data)
    int8 = strings.get("format") == FORMAT_INT8
    meta = _meta({**strings, "format": FORMAT} if int8 else strings, tokenizer_sha256, config)
    shapes = param_shapes(meta.config)
    expected = set(shapes) | ({k + SCALE for k, s in shapes.items() if len(s) == 2}
                              if int8 else set())
    if set(tensors) != expected:
        raise CheckpointError(f"weights do not fit the architecture: unexpected tensors "
                              f"{sorted(set(tensors) ^ expected)[:3]}")
    weights = {}
    for name, shape in shapes.items():
        value = tensors[name]
        if value.shape != shape:
            raise CheckpointError(f"weights do not fit the architecture: {name} has shape "
                                  f"{value.shape}, expected {shape}")
        quantized = int8 and len(shape) == 2
        weights[name] = (_dequantize(name, value, tensors) if quantized
                         else _finite_float32(name, value).copy())
    return weights, meta


def weights_to_bytes(weights: Weights, meta: CheckpointMeta) -> bytes:
    """Float32 weights and metadata as checkpoint bytes (what `model_to_bytes` writes)."""
    return tensorfile.save({k: np.asarray(v, dtype=np.float32) for k, v in weights.items()},
                           meta.to_strings())


def load_weights(path: str | Path, tokenizer_sha256: str | None = None
                 ) -> tuple[Weights, CheckpointMeta]:
    """`weights_from_bytes` of a file; every problem is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return weights_from_bytes(path.read_bytes(), tokenizer_sha256)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
