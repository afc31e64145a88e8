"""Checks on an uploaded update, in the order the API applies them; each refusal is an ApiError."""
from __future__ import annotations

import math

import numpy as np

from federated import privacy
from federated.protocol import Receipt
from federated.compression import Compression
from federated.secagg import unflatten
from federated.wire import Update, WireError, decode_compressed_update, decode_update, l2_norm

from aggregation_server import compressed
from aggregation_server.accounting import device_noise_stddev
from aggregation_server.config import RoundConfig
from aggregation_server.db import Round, Task
from aggregation_server.errors import ApiError


def replay(task: Task | None, key: str, digest: str, r: Round | None = None
           ) -> Receipt | None:
    """The stored answer if this is a retry of an accepted upload (same key and body);
    409 if the round it was accepted into was abandoned since (the update was not used)."""
    if task is None or task.idempotency_key != key:
        return None
    if task.body_sha256 != digest:
        raise ApiError(409, "idempotency_key_reused",
                       "this Idempotency-Key was used for a different update body")
    if task.state == "discarded":
        why = f": {r.reason}" if r is not None and r.reason else ""
        raise ApiError(409, "round_abandoned",
                       f"round {task.round_id} was abandoned{why}; this update was accepted "
                       "but not used, and counts for no model version")
    return Receipt.from_json(task.response)


def target_reached(r: Round) -> bool:
    """A plain round that has its target of reports takes no more: the round worker closes
    it (a secure round ends when its protocol does)."""
    return r.reports >= r.target and not r.config.get("secure_aggregation")


def check_open(r: Round, task: Task | None, now: float) -> None:
    """The round takes uploads and this device holds an unused task in it."""
    if r.state == "closing" or (r.state == "open" and target_reached(r)):
        raise ApiError(409, "round_closed", f"round {r.id} is closed: it is being aggregated")
    if r.state != "open":
        why = f" ({r.reason})" if r.reason else ""
        raise ApiError(409, "round_closed", f"round {r.id} is {r.state}{why}")
    if now >= r.deadline:
        raise ApiError(409, "round_closed", f"round {r.id} passed its deadline")
    if task is None:
        raise ApiError(403, "no_task", f"this device holds no task in round {r.id}")
    if task.state != "issued":
        raise ApiError(409, "already_submitted",
                       f"this device already submitted an update to round {r.id}; "
                       "a retry must reuse its Idempotency-Key")


def check_update(body: bytes, r: Round, config: RoundConfig, shapes: dict[str, tuple[int, ...]],
                 max_bytes: int, spec: Compression | None = None) -> Update:
    """The decoded update if it fits the model, the round and the round's norm bound;
    in a compressed round (`spec`), decoded to float tensors after the checks."""
    if len(body) > max_bytes:
        raise ApiError(413, "too_large", f"update of {len(body)} bytes is over the "
                                         f"{max_bytes}-byte limit")
    try:
        update, step = (decode_update(body, shapes, max_bytes), 0) if spec is None else \
            decode_compressed_update(body, spec.kept, spec.seed, spec.levels,
                                     compressed.max_step(spec, config), max_bytes)
    except WireError as err:
        raise ApiError(400, "invalid_update", str(err)) from None
    if update.round_id != r.id:
        raise ApiError(400, "wrong_round", f"update says round {update.round_id}, "
                                           f"uploaded to round {r.id}")
    if update.num_examples > config.train_max_examples:
        raise ApiError(422, "num_examples_over_cap",
                       f"num_examples {update.num_examples} is over the task's cap of "
                       f"{config.train_max_examples} (train.max_examples)")
    if update.model_version != r.model_version:
        raise ApiError(400, "wrong_model_version",
                       f"update was trained from model version {update.model_version}, "
                       f"round {r.id} trains version {r.model_version}")
    if spec is not None:
        return _decompressed(update, step, spec, config, shapes)
    num_params = sum(math.prod(shape) for shape in shapes.values())
    bound = privacy.norm_bound(config.clip_norm, device_noise_stddev(config), num_params)
    norm = quick_norm(update.tensors)
    if abs(norm - bound) <= 1e-3 * bound:  # too close to call in float32: exact norm
        norm = l2_norm(update.tensors)
    if norm > bound:
        raise ApiError(422, "norm_too_large",
                       f"update L2 norm {norm:.4g} is over the round's bound {bound:.4g} "
                       f"(clip norm {config.clip_norm} plus the task's noise)")
    return update


def _decompressed(update: Update, step: int, spec: Compression, config: RoundConfig,
                  shapes: dict[str, tuple[int, ...]]) -> Update:
    """A compressed update's float tensors, if its integers (step times its values) are in
    range (422 otherwise)."""
    integers = update.tensors["values"] * np.float64(step)
    problem = compressed.out_of_range(integers, spec, config, step=step)
    if problem:
        raise ApiError(422, "norm_too_large", problem)
    update.tensors = unflatten(compressed.decode(integers, spec), shapes)
    return update


def quick_norm(tensors: dict[str, np.ndarray], block: int = 4096) -> float:
    """The L2 norm from float32 BLAS dot products over blocks of 4096 values, added in
    float64: many times faster than float64 throughout, relative error below 3e-4."""
    total = 0.0
    for tensor in tensors.values():
        flat = tensor.ravel()
        for i in range(0, flat.size, block):
            total += float(np.dot(flat[i:i + block], flat[i:i + block]))
    return math.sqrt(total)
