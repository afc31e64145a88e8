"""Compressed rounds on the server (round setting `compression = "ddg16"`,
`federated.compression`): the round's public parameters, and reading compressed uploads
(plain rounds: the requantized plain form) and the unmasked modular sum (secure rounds)
back into float updates.

The parameters are a function of the round's config, its id and its model's sha256
(`round_seed`), so every process derives the same ones and nothing new is stored.
What bounds one device's influence: an honest device clips its update to C and the
kept part to C_kept before compressing (`federated.compression`); the server refuses an
upload (plain) or a sum (secure) whose integers are longer than the sensitivity (from
C_kept) plus the noise allow (`privacy.norm_bound` in integer units; a plain upload's
step is at most what an honest device's integers need over its levels, `max_step`, and its
requantization may add `requantization_bound` at that step).
"""
from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from federated import privacy
from federated.compression import (Compression, CompressionError, requantization_bound,
                                   round_seed)
from federated.secagg import ModularIntegers

from aggregation_server.config import RoundConfig
from aggregation_server.db import ModelVersion, Round
from aggregation_server.storage import BlobStore, sha256_hex

_COMPACT: dict[str, str] = {}  # data dir and compact model name -> its sha256, this process
_COMPACT_LOCK = threading.Lock()


def spec_for(config: RoundConfig, round_id: int, model_sha256: str,
             dimension: int) -> Compression | None:
    """The round's compression parameters (None: float32 updates)."""
    if config.compression == "none":
        return None
    return privacy.round_compression(
        round_seed(round_id, model_sha256), dimension, config.clip_norm,
        config.noise_multiplier, config.min_reports, config.capacity,
        secure=config.secure_aggregation, dishonest_share=config.dishonest_share,
        scheme=config.compression)


def round_spec(s: Session, r: Round, config: RoundConfig, dimension: int) -> Compression | None:
    """`spec_for` an open round (its model's sha256 read in session `s`)."""
    if config.compression == "none":
        return None
    return spec_for(config, r.id, s.get(ModelVersion, r.model_version).sha256, dimension)


def compact_path(version: ModelVersion) -> str:
    """The blob name of the version's int8 form (`compact_model`)."""
    return f"models/compact/{version.version}-{version.sha256[:16]}.int8.safetensors"


def compact_model(blobs: BlobStore, version: ModelVersion) -> tuple[Path, str]:
    """(path, sha256) of the model version as per-row int8 (`model.compress`: 27% of the
    float32 bytes, no loss of top-1 on `test`), made once and kept beside the version
    (deterministic, so processes that make it at once write the same bytes)."""
    relative = compact_path(version)
    key = f"{blobs.root}/{relative}"
    with _COMPACT_LOCK:
        if key not in _COMPACT:
            if not blobs.exists(relative):
                from model.checkpoint import model_from_bytes
                from model.compress import model_to_int8_bytes
                model, meta = model_from_bytes(blobs.read(version.path))
                blobs.write(relative, model_to_int8_bytes(model, meta))
            _COMPACT[key] = sha256_hex(blobs.read(relative))
        return blobs.abs(relative), _COMPACT[key]


def delete_compact(blobs: BlobStore, version: ModelVersion) -> None:
    """Delete the version's int8 form, if it was made (retention, `keep_versions`)."""
    relative = compact_path(version)
    with _COMPACT_LOCK:
        _COMPACT.pop(f"{blobs.root}/{relative}", None)
    blobs.delete(relative)


def refusal(config: RoundConfig, dimension: int) -> str | None:
    """Why rounds with this config cannot be compressed (None if they can)."""
    try:
        spec_for(config, 0, "00" * 32, dimension)
    except CompressionError as err:
        return f"compression {config.compression!r}: {err}"
    return None


def encoding(spec: Compression | None) -> ModularIntegers | None:
    """The secure round's encoding: the codec's 16-bit words, or None (fixed point)."""
    return None if spec is None else ModularIntegers(spec.bits)


def noise_sigma(spec: Compression, config: RoundConfig) -> float:
    """The discrete Gaussian's sigma an honest device adds (integer units)."""
    return privacy.compressed_noise(spec, config.noise_multiplier, config.min_reports,
                                    secure=config.secure_aggregation,
                                    dishonest_share=config.dishonest_share)[0]


def norm_limit(spec: Compression, config: RoundConfig, reports: int = 1) -> float:
    """The integers' L2 norm `reports` honest devices stay within (Delta, from C_kept, plus
    the noise), but with negligible probability."""
    return reports * privacy.norm_bound(spec.sensitivity, noise_sigma(spec, config), spec.kept)


def max_step(spec: Compression, config: RoundConfig) -> int:
    """The largest step an honest plain upload has, but with negligible probability: its
    max|v| over L, max|v| within `Compression.coordinate_bound` (the signal spread by the
    public rotation, plus the noise). Bounding max|v| by the upload's norm instead let a
    fake device claim a step 150 times the largest honest one (the LSTM at z = 1), and
    with the requantization's allowance (`requantization_bound`, linear in the step) send
    43 times the norm an honest upload can have."""
    return max(1, math.ceil(spec.coordinate_bound(noise_sigma(spec, config)) / spec.levels))


def out_of_range(integers: np.ndarray, spec: Compression, config: RoundConfig,
                 reports: int = 1, step: int = 0) -> str | None:
    """Why these signed integers (one upload, or the centred sum of `reports`) are longer
    than honest devices make them, or None; `step`: a plain upload's, whose requantization
    may add `requantization_bound`."""
    norm = float(np.linalg.norm(integers))
    bound = norm_limit(spec, config, reports) + (
        requantization_bound(step, spec.kept) if step else 0.0)
    if norm <= bound:
        return None
    return (f"the compressed {'update' if reports == 1 else f'sum of {reports} updates'} has "
            f"L2 norm {norm:.4g} in integer units, over the round's bound {bound:.4g}")


def decode(integers: np.ndarray, spec: Compression, reports: int = 1) -> np.ndarray:
    """The float32 mean of `reports` updates from the (centred) sum of their integers."""
    return (spec.decode_integers(integers) / reports).astype(np.float32)
