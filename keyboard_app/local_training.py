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

import secrets
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from device_model.checkpoint import weights_from_bytes
from device_model.lstm import NumpyLSTM
from device_model.tokenizer import DeviceTokenizer
from device_model.train import TrainConfig, TrainResult, train
from federated.privacy import privatize
from federated.protocol import Task, TrainParams
from federated.wire import Update, encode_update

Tensors = dict[str, np.ndarray]


@dataclass
class LocalUpdate:
    """What a finished local round produced: the clipped (and, in float rounds, noised)
    update and what the device keeps."""

    update: Update
    prenorm: float  # L2 norm of the delta before clipping (stays on the device)
    result: TrainResult

    @property
    def body(self) -> bytes:
        """The float32 upload of a plain, uncompressed round. Built only when asked for: in
        compressed rounds the update carries no noise yet (the integer noise comes with the
        encoding), so no float form of it should exist to be sent by mistake."""
        return encode_update(self.update)


def train_config(params: TrainParams, seed: int | None = None) -> TrainConfig:
    """The task's `train` hyper-parameters as a one-thread TrainConfig."""
    return TrainConfig(epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
                       optimizer=params.optimizer,
                       seed=secrets.randbits(31) if seed is None else seed, threads=1)


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


def make_update(delta: Tensors, task: Task, num_examples: int, noise_stddev: float,
                rng: np.random.Generator | None = None,
                metrics: dict[str, float] | None = None) -> tuple[Update, float]:
    """Clip the delta to the task's norm and add the device's noise of std `noise_stddev`;
    (update, norm before clipping)."""
    noised, prenorm = privatize(delta, task.clip_norm, noise_stddev, rng)
    return Update(noised, task.round_id, task.model_version, num_examples,
                  metrics or {}), prenorm


def example_limit(params: TrainParams, available: int) -> int:
    """How many of `available` messages a task's `train` parameters let a round use."""
    return min(available, params.max_examples)


def sample_messages(messages: list[str], limit: int, seed: int) -> list[str]:
    """At most `limit` of `messages`, a seeded uniform sample kept in time order.

    A random sample rather than the latest ones: over its rounds a device with a long
    history trains on all of it, not only on its last `limit` messages.
    """
    if len(messages) <= limit:
        return messages
    keep = np.random.default_rng(seed).choice(len(messages), limit, replace=False)
    return [messages[i] for i in sorted(keep)]


def run_task(task: Task, global_bytes: bytes, tokenizer: DeviceTokenizer, messages: list[str],
             *, noise_stddev: float, should_stop: Callable[[], bool] | None = None,
             seed: int | None = None, rng: np.random.Generator | None = None
             ) -> LocalUpdate | None:
    """Train on a sample of at most `max_examples` messages and build the upload, noised
    with `noise_stddev` (the device's, from its privacy policy).

    Returns None when `should_stop` interrupted training (a partial update is never sent)
    or when no message has a word to learn from.
    """
    config = train_config(task.train, seed)
    limit = example_limit(task.train, len(messages))
    delta, result, examples = local_delta(global_bytes, tokenizer,
                                          sample_messages(messages, limit, config.seed),
                                          config, should_stop)
    if result.stopped or examples == 0 or result.steps == 0:
        return None
    update, prenorm = make_update(delta, task, reported_examples(task, examples),
                                  noise_stddev, rng)
    return LocalUpdate(update, prenorm, result)


def reported_examples(task: Task, examples: int) -> int:
    """The message count an upload carries: the true one only in rounds without noise (the
    server may weight by it); with differential privacy the server weights every report
    alike, so the device says 1 and the count, which tells how much a person typed and is
    not noised, stays on the device."""
    return examples if task.noise_multiplier == 0 else 1

