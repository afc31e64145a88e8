"""The wire format of model updates and models: `safetensors` bytes with string metadata.

Nothing that crosses the network is ever unpickled: tensors are parsed by
`device_model.tensorfile` (NumPy only, header size and nesting bounded, the bytes the
`safetensors` library writes), an update's metadata is `UpdateMetadata`, and every check
here raises `WireError` with a message fit for a 4xx. (The JSON messages and the API paths
are `federated.protocol`.)
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from device_model import tensorfile
from device_model.tensorfile import TensorFileError, TensorInfo

API_PREFIX = "/v1"
UPDATE_FORMAT = "private-keyboard/update-1"
COMPRESSED_FORMAT = "private-keyboard/compressed-update-2"
MAX_UPDATE_BYTES = 16 * 1024 * 1024
DEVICE_METRICS = ("loss", "accuracy")  # the only metrics an update may carry (round means)
Shapes = dict[str, tuple[int, ...]]


class WireError(ValueError):
    """A message between device and server that breaks the protocol (an update's bytes, a
    task, a check-in answer); the message says exactly which part and why, fit for a 4xx
    on the server and for the log on the device."""


@dataclass(frozen=True)
class UpdateMetadata:
    """What an update says about itself, stored as the safetensors file's string metadata
    (with its format, which the decoder of each format checks)."""

    round_id: int
    model_version: int
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)  # round means of DEVICE_METRICS

    def to_strings(self, form: str = UPDATE_FORMAT) -> dict[str, str]:
        return {"format": form, "round_id": str(self.round_id),
                "model_version": str(self.model_version),
                "num_examples": str(self.num_examples),
                "metrics": json.dumps(self.metrics, sort_keys=True)}

    @classmethod
    def from_strings(cls, meta: dict[str, str]) -> UpdateMetadata:
        """Parse and check; WireError saying what is wrong."""
        try:
            metrics = json.loads(meta.get("metrics", "{}"))
        except json.JSONDecodeError:
            raise WireError("metadata 'metrics' is not JSON") from None
        if not isinstance(metrics, dict) or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values()):
            raise WireError("metadata 'metrics' must map names to finite numbers")
        unknown = sorted(set(metrics) - set(DEVICE_METRICS))
        if unknown:
            raise WireError(f"metadata 'metrics' has names outside {list(DEVICE_METRICS)}: "
                            f"{[name[:40] for name in unknown[:5]]}")
        return cls(_metadata_int(meta, "round_id"), _metadata_int(meta, "model_version"),
                   _metadata_int(meta, "num_examples", minimum=1), metrics)


@dataclass
class Update:
    """A device's contribution to a round: weight deltas plus what it says about them."""

    tensors: dict[str, np.ndarray]
    round_id: int
    model_version: int
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def metadata(self) -> UpdateMetadata:
        return UpdateMetadata(self.round_id, self.model_version, self.num_examples,
                              self.metrics)


def l2_norm(tensors: dict[str, np.ndarray]) -> float:
    """The L2 norm of all tensors taken together as one vector."""
    return math.sqrt(sum(float(np.einsum("i,i->", t.ravel(), t.ravel(), dtype=np.float64))
                         for t in tensors.values()))


def encode_update(update: Update) -> bytes:
    """An update as safetensors bytes (float32 tensors, JSON-able metadata)."""
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in update.tensors.items()}
    return tensorfile.save(tensors, update.metadata.to_strings())


def encode_compressed_update(update: Update, step: int, values: np.ndarray, seed: bytes,
                             levels: int) -> bytes:
    """A plain round's compressed update (`federated.compression.Compression.encode_plain`):
    its values u in [-levels, levels] as the bytes u + levels, deflated (zlib, Huffman codes
    only: the values are near-Gaussian and unrepeating, so LZ matching only adds bits) under
    the name "deflated"; its integer step, the round's compression seed in hex, and
    `update`'s round, version, examples and metrics (its tensors are not sent)."""
    raw = (np.asarray(values, dtype=np.int16) + levels).astype(np.uint8).tobytes()
    packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    deflated = np.frombuffer(packer.compress(raw) + packer.flush(), dtype=np.uint8)
    meta = {**update.metadata.to_strings(COMPRESSED_FORMAT), "seed": seed.hex(),
            "step": str(int(step))}
    return tensorfile.save({"deflated": deflated}, meta)


def decode_compressed_update(data: bytes, size: int, seed: bytes, levels: int, max_step: int,
                             max_bytes: int = MAX_UPDATE_BYTES) -> tuple[Update, int]:
    """Parse a plain round's compressed update of `size` values in [-levels, levels] under
    `seed`: (an Update whose one tensor "values" holds them as int8, the step, a whole
    number from 1 to `max_step`). WireError says what is off (size, step, seed, format,
    the deflated stream); inflating never makes more than size + 1 bytes."""
    if len(data) > max_bytes:
        raise WireError(f"update of {len(data)} bytes is over the {max_bytes}-byte limit")
    declared, meta = _header(data)
    if meta.get("format") != COMPRESSED_FORMAT:
        raise WireError(f"this round takes compressed updates: metadata format must be "
                        f"{COMPRESSED_FORMAT!r}")
    packed = declared.get("deflated")
    if set(declared) != {"deflated"} or packed.dtype != "U8" or len(packed.shape) != 1:
        raise WireError("a compressed update is one 1-D tensor 'deflated' of bytes (U8), got "
                        f"{sorted(declared)[:5]}")
    if meta.get("seed") != seed.hex():
        raise WireError("the compression seed differs from this round's: the update was "
                        "compressed for another round or model")
    step = _step(meta.get("step"), max_step)
    tensors, _ = tensors_from_bytes(data)
    raw = np.frombuffer(_inflate(tensors["deflated"].tobytes(), size), dtype=np.uint8)
    if int(raw.max(initial=0)) > 2 * levels:
        raise WireError(f"compressed values must lie in [-{levels}, {levels}]: a byte is "
                        f"{int(raw.max())}, over {2 * levels}")
    values = (raw.astype(np.int16) - levels).astype(np.int8)
    return _update({"values": values}, meta), step


def _step(text: object, max_step: int) -> int:
    """The metadata's step: a whole number from 1 to `max_step` in plain decimal digits."""
    if not (isinstance(text, str) and 0 < len(text) <= 19 and text.isascii()
            and text.isdigit() and text[0] != "0" and int(text) <= max_step):
        raise WireError(f"metadata 'step' must be a whole number from 1 to {max_step} "
                        f"(the most an honest update's values need), got {str(text)[:40]!r}")
    return int(text)


def _inflate(deflated: bytes, size: int) -> bytes:
    """Exactly `size` bytes from one complete zlib stream; WireError otherwise. Never
    inflates more than size + 1 bytes, whatever the stream claims."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(deflated, size + 1)
    except zlib.error as err:
        raise WireError(f"the tensor 'deflated' is not a zlib stream: {err}") from None
    if len(raw) != size or not inflater.eof or inflater.unused_data:
        raise WireError(f"the tensor 'deflated' must inflate to exactly {size} bytes, one "
                        "complete zlib stream with nothing after it")
    return raw


def _header(data: bytes) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensor entries, string metadata) of safetensors bytes, checked in full."""
    try:
        infos, meta, _ = tensorfile.read_header(data)
    except TensorFileError as err:
        raise WireError(f"malformed safetensors body: {err}") from None
    return infos, meta


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
    declared, meta = _header(data)
    if meta.get("format") != UPDATE_FORMAT:
        raise WireError(f"metadata format must be {UPDATE_FORMAT!r}")
    missing, extra = sorted(set(expected) - set(declared)), sorted(set(declared) - set(expected))
    if missing or extra:
        raise WireError(f"tensor names do not match the model: missing {missing[:5]}, "
                        f"unexpected {extra[:5]}")
    for name, info in declared.items():
        if info.dtype != "F32":
            raise WireError(f"tensor {name!r} must be float32 (F32)")
        if info.shape != tuple(expected[name]):
            raise WireError(f"tensor {name!r} has shape {list(info.shape)}, "
                            f"expected {list(expected[name])}")
    tensors, _ = tensors_from_bytes(data)
    for name, tensor in tensors.items():
        if not np.isfinite(tensor).all():
            raise WireError(f"tensor {name!r} has non-finite values (nan or inf)")
    return _update(tensors, meta)


def _update(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> Update:
    """An Update of these tensors with the round, version, examples and metrics of `meta`."""
    about = UpdateMetadata.from_strings(meta)
    return Update(tensors, about.round_id, about.model_version, about.num_examples,
                  about.metrics)


def tensors_to_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Any named float32 tensors as safetensors bytes (models, aggregates)."""
    return tensorfile.save({k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()},
                           metadata)


def tensors_from_bytes(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Named tensors (writable copies) and string metadata from safetensors bytes;
    WireError if malformed."""
    try:
        tensors, meta = tensorfile.load(data)
    except TensorFileError as err:
        raise WireError(f"malformed safetensors body: {err}") from None
    return {k: v.copy() for k, v in tensors.items()}, meta
