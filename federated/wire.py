"""The wire format of model updates and models: `safetensors` bytes with string metadata.

Nothing that crosses the network is ever unpickled: tensors are parsed by `safetensors`,
metadata is JSON, and every check here raises `WireError` with a message fit for a 4xx.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load, save as st_save

API_PREFIX = "/v1"
UPDATE_FORMAT = "private-keyboard/update-1"
MAX_UPDATE_BYTES = 16 * 1024 * 1024
Shapes = dict[str, tuple[int, ...]]


class WireError(ValueError):
    """Bytes that are not an acceptable update; the message says exactly why."""


@dataclass
class Update:
    """A device's contribution to a round: weight deltas plus what it says about them."""

    tensors: dict[str, np.ndarray]
    round_id: int
    model_version: int
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


def l2_norm(tensors: dict[str, np.ndarray]) -> float:
    """The L2 norm of all tensors taken together as one vector."""
    return math.sqrt(sum(float(np.einsum("i,i->", t.ravel(), t.ravel(), dtype=np.float64))
                         for t in tensors.values()))


def encode_update(update: Update) -> bytes:
    """An update as safetensors bytes (float32 tensors, JSON-able metadata)."""
    meta = {"format": UPDATE_FORMAT, "round_id": str(update.round_id),
            "model_version": str(update.model_version),
            "num_examples": str(update.num_examples),
            "metrics": json.dumps(update.metrics, sort_keys=True)}
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in update.tensors.items()}
    return st_save(tensors, metadata=meta)


def _header(data: bytes) -> dict:
    if len(data) < 8:
        raise WireError(f"body of {len(data)} bytes is not safetensors (too short)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise WireError("truncated safetensors body: header runs past the end")
    try:
        header = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("malformed safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise WireError("malformed safetensors header (not an object)")
    return header


def _metadata_int(meta: dict, key: str, minimum: int = 0) -> int:
    try:
        value = int(meta[key])
    except (KeyError, ValueError, TypeError):
        raise WireError(f"metadata {key!r} missing or not an integer") from None
    if value < minimum:
        raise WireError(f"metadata {key!r} is {value}, below {minimum}")
    return value


def decode_update(data: bytes, expected: Shapes, max_bytes: int = MAX_UPDATE_BYTES) -> Update:
    """Parse and check an update against the model's tensor names and shapes.

    Checks size, format, names, shapes, dtype (float32) and finiteness; the caller checks
    round membership and the norm bound, which depend on the round.
    """
    if len(data) > max_bytes:
        raise WireError(f"update of {len(data)} bytes is over the {max_bytes}-byte limit")
    header = _header(data)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != UPDATE_FORMAT:
        raise WireError(f"metadata format must be {UPDATE_FORMAT!r}")
    declared = {k: v for k, v in header.items() if k != "__metadata__"}
    missing, extra = sorted(set(expected) - set(declared)), sorted(set(declared) - set(expected))
    if missing or extra:
        raise WireError(f"tensor names do not match the model: missing {missing[:5]}, "
                        f"unexpected {extra[:5]}")
    for name, info in declared.items():
        if not isinstance(info, dict) or info.get("dtype") != "F32":
            raise WireError(f"tensor {name!r} must be float32 (F32)")
        if tuple(info.get("shape", ())) != tuple(expected[name]):
            raise WireError(f"tensor {name!r} has shape {info.get('shape')}, "
                            f"expected {list(expected[name])}")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as err:
        raise WireError(f"malformed safetensors body: {err}") from None
    for name, tensor in tensors.items():
        if not np.isfinite(tensor).all():
            raise WireError(f"tensor {name!r} has non-finite values (nan or inf)")
    try:
        metrics = json.loads(meta.get("metrics", "{}"))
    except json.JSONDecodeError:
        raise WireError("metadata 'metrics' is not JSON") from None
    if not isinstance(metrics, dict) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values()):
        raise WireError("metadata 'metrics' must map names to finite numbers")
    return Update(tensors, _metadata_int(meta, "round_id"), _metadata_int(meta, "model_version"),
                  _metadata_int(meta, "num_examples", minimum=1), metrics)


def tensors_to_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Any named float32 tensors as safetensors bytes (models, aggregates)."""
    return st_save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
                   metadata=metadata)


def tensors_from_bytes(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Named tensors and string metadata from safetensors bytes; WireError if malformed."""
    header = _header(data)
    try:
        return st_load(data), header.get("__metadata__") or {}
    except (SafetensorError, ValueError) as err:
        raise WireError(f"malformed safetensors body: {err}") from None
