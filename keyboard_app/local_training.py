"""One device's part of a round: train the global model on local history, send only the
clipped and noised difference.

The training loop is `device_model.train.train`, NumPy only: step for step the loop of
`model.train.train` that the server-side references use (tests/test_device_model.py holds
the two to the same update). The clipping and noise are `federated.privacy.privatize`, the
code the server's accountant assumes; the noise level is the device's own (`keyboard_app.
privacy_policy`), never one the server dictates. Nothing but the encoded update leaves
this module.
"""
from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from device_model.checkpoint import weights_from_bytes
from device_model.lstm import NumpyLSTM
from device_model.tokenizer import DeviceTokenizer
from device_model.train import TrainConfig, TrainResult, train
from federated.privacy import privatize
from federated.wire import Update, encode_update
from keyboard_app.secure_upload import parse_task

Tensors = dict[str, np.ndarray]


class TaskError(ValueError):
    """A task whose hyper-parameters or model this device cannot use."""


@dataclass
class LocalUpdate:
    """What a finished local round produced: the bytes to upload and what the device keeps."""

    body: bytes
    update: Update
    prenorm: float  # L2 norm of the delta before clipping (stays on the device)
    result: TrainResult


def train_config(params: dict, seed: int | None = None) -> TrainConfig:
    """The task's `train` hyper-parameters as a one-thread TrainConfig."""
    try:
        return TrainConfig(epochs=float(params["epochs"]), batch_size=int(params["batch_size"]),
                           lr=float(params["lr"]), optimizer=str(params["optimizer"]),
                           seed=secrets.randbits(31) if seed is None else seed, threads=1)
    except KeyError as err:
        raise TaskError(f"task train parameters lack {err}") from None
    except (TypeError, ValueError) as err:
        raise TaskError(f"unusable train parameters {params!r}: {err}") from None


def check_task(task: dict) -> None:
    """Raise TaskError unless the task is one this device can carry out faithfully."""
    try:
        ids = int(task["round_id"]), int(task["model_version"])
        clip_norm = float(task["clip_norm"])
        max_examples = int(task["train"].get("max_examples") or 0)  # 0 or missing: no cap
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise TaskError(f"malformed task ({type(err).__name__}: {err})") from None
    if min(*ids, max_examples) < 0:
        raise TaskError("task ids and max_examples must not be negative")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise TaskError(f"task clip_norm {clip_norm} out of range")
    if task.get("secure_aggregation"):  # sent only masked (keyboard_app.secure_upload)
        try:
            parse_task(task)
        except ValueError as err:
            raise TaskError(str(err)) from None
    train_config(task["train"], seed=0)


def local_delta(global_bytes: bytes, tokenizer: DeviceTokenizer, messages: list[str],
                config: TrainConfig, should_stop: Callable[[], bool] | None = None
                ) -> tuple[Tensors, TrainResult, int]:
    """Train a copy of the global model on `messages`; (local - global, result, examples)."""
    global_tensors, meta = weights_from_bytes(global_bytes, tokenizer_sha256=tokenizer.sha256)
    model = NumpyLSTM({k: v.copy() for k, v in global_tensors.items()}, meta.config)
    sequences = tokenizer.encode_messages(messages)
    result = train(model, sequences, config, pad_id=tokenizer.pad_id, should_stop=should_stop)
    local = model.weights
    # sorted names: a fixed order, so a seeded noise generator gives reproducible updates
    delta = {k: (local[k] - global_tensors[k]).astype(np.float32) for k in sorted(global_tensors)}
    return delta, result, len(sequences)


def make_update(delta: Tensors, task: dict, num_examples: int, noise_stddev: float,
                rng: np.random.Generator | None = None,
                metrics: dict[str, float] | None = None) -> tuple[Update, float]:
    """Clip the delta to the task's norm and add the device's noise of std `noise_stddev`;
    (update, norm before clipping)."""
    noised, prenorm = privatize(delta, float(task["clip_norm"]), noise_stddev, rng)
    return Update(noised, int(task["round_id"]), int(task["model_version"]), num_examples,
                  metrics or {}), prenorm


def example_limit(params: dict, available: int) -> int:
    """How many of `available` messages a task's `train` parameters let a round use."""
    return min(available, int(params.get("max_examples") or available))


def sample_messages(messages: list[str], limit: int, seed: int) -> list[str]:
    """At most `limit` of `messages`, a seeded uniform sample kept in time order.

    A random sample rather than the latest ones: over its rounds a device with a long
    history trains on all of it, not only on its last `limit` messages.
    """
    if len(messages) <= limit:
        return messages
    keep = np.random.default_rng(seed).choice(len(messages), limit, replace=False)
    return [messages[i] for i in sorted(keep)]


def run_task(task: dict, global_bytes: bytes, tokenizer: DeviceTokenizer, messages: list[str],
             *, noise_stddev: float, should_stop: Callable[[], bool] | None = None,
             seed: int | None = None, rng: np.random.Generator | None = None
             ) -> LocalUpdate | None:
    """Train on a sample of at most `max_examples` messages (0 or missing: all of them) and
    build the upload, noised with `noise_stddev` (the device's, from its privacy policy).

    Returns None when `should_stop` interrupted training (a partial update is never sent)
    or when no message has a word to learn from.
    """
    check_task(task)
    params = task["train"]
    config = train_config(params, seed)
    limit = example_limit(params, len(messages))
    delta, result, examples = local_delta(global_bytes, tokenizer,
                                          sample_messages(messages, limit, config.seed),
                                          config, should_stop)
    if result.stopped or examples == 0 or result.steps == 0:
        return None
    update, prenorm = make_update(delta, task, examples, noise_stddev, rng)
    return LocalUpdate(encode_update(update), update, prenorm, result)

