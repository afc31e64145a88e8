"""Local training in NumPy: the loop of `model.train.train`, step for step.

The same shuffled, length-bucketed batches (`batches`, which `model.train` uses too), the
same loss (mean cross-entropy over non-pad targets), the same gradient clipping
(`clip_grad_norm_`), optimisers (PyTorch's Adam, AdamW and SGD updates) and learning-rate
schedule. Dropout masks come from a NumPy generator seeded from the config's seed
(`dropout_rng`); PyTorch draws its own, so the two paths agree exactly only when the test
gives PyTorch the same masks.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from device_model.lstm import Dropout, NumpyLSTM, log_softmax, loss_and_grads, lstm_forward, mm
from model.schedule import SCHEDULES, lr_factor

OPTIMIZERS = ("sgd", "adam", "adamw")
BETAS, EPS = (0.9, 0.999), 1e-8  # PyTorch's Adam defaults
DROPOUT_STREAM = 1  # the dropout generator is default_rng([seed, DROPOUT_STREAM])


@dataclass
class TrainConfig:
    """How to train: epochs over a list of messages, batch size, learning rate, optimizer, seed."""

    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 2e-3
    optimizer: str = "adam"
    seed: int = 0
    max_len: int = 64  # longest message in tokens; longer ones are cut
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    schedule: str = "constant"  # or "cosine"
    threads: int | None = None  # torch threads while training; None keeps the current
    # (the NumPy loop ignores it: its BLAS threads are OPENBLAS_NUM_THREADS at start-up)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} not in {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} not in {SCHEDULES}")
        if not (self.epochs > 0 and self.batch_size > 0 and self.lr > 0 and self.max_len > 1):
            raise ValueError("epochs, batch_size, lr must be positive and max_len > 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """What a training run did."""

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    mean_loss: float = float("nan")
    epoch_losses: list[float] = field(default_factory=list)
    stopped: bool = False  # True when `should_stop` ended it early

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def batches(sequences: list[list[int]], batch_size: int, max_len: int,
            rng: np.random.Generator) -> list[list[list[int]]]:
    """Shuffled batches of similar-length sequences (little padding)."""
    order = rng.permutation(len(sequences))
    chunks = []
    pool = batch_size * 50
    for start in range(0, len(order), pool):
        window = sorted(order[start:start + pool], key=lambda i: len(sequences[i]))
        chunks += [[sequences[i][:max_len + 1] for i in window[j:j + batch_size]]
                   for j in range(0, len(window), batch_size)]
    rng.shuffle(chunks)
    return chunks


def pad(batch: list[list[int]], pad_id: int) -> np.ndarray:
    """A batch of sequences as one int64 array, padded on the right."""
    width = max(len(s) for s in batch)
    return np.array([s + [pad_id] * (width - len(s)) for s in batch], dtype=np.int64)


def dropout_rng(seed: int) -> np.random.Generator:
    """The generator of a training run's dropout masks."""
    return np.random.default_rng([seed, DROPOUT_STREAM])


class Optimizer:
    """PyTorch's SGD (no momentum), Adam and AdamW updates on NumPy arrays, in place."""

    def __init__(self, params: dict[str, np.ndarray], config: TrainConfig) -> None:
        self.params, self.kind = params, config.optimizer
        self.weight_decay, self.steps = config.weight_decay, 0
        adam = self.kind != "sgd"
        self.m = {k: np.zeros_like(v) for k, v in params.items()} if adam else {}
        self.v = {k: np.zeros_like(v) for k, v in params.items()} if adam else {}

    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        self.steps += 1
        beta1, beta2 = BETAS
        correction1, correction2 = 1 - beta1 ** self.steps, math.sqrt(1 - beta2 ** self.steps)
        for name, param in self.params.items():
            grad = grads[name]
            if self.weight_decay and self.kind == "adamw":
                param *= np.float32(1 - lr * self.weight_decay)
            elif self.weight_decay:
                grad = grad + np.float32(self.weight_decay) * param
            if self.kind == "sgd":
                param -= np.float32(lr) * grad
                continue
            m, v = self.m[name], self.v[name]
            m += np.float32(1 - beta1) * (grad - m)
            v *= np.float32(beta2)
            v += np.float32(1 - beta2) * grad * grad
            denom = np.sqrt(v)
            denom /= np.float32(correction2)
            denom += np.float32(EPS)
            param -= np.float32(lr / correction1) * m / denom


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients together to L2 norm <= max_norm, as torch's clip_grad_norm_."""
    norms = np.array([np.linalg.norm(g.ravel()) for g in grads.values()], np.float32)
    total = float(np.linalg.norm(norms))
    scale = np.float32(min(max_norm / (total + 1e-6), 1.0))
    for g in grads.values():
        g *= scale
    return total


def train(model: NumpyLSTM, sequences: list[list[int]], config: TrainConfig,
          pad_id: int = 0, should_stop: Callable[[], bool] | None = None,
          on_epoch: Callable[[int, NumpyLSTM], None] | None = None,
          trainable: Sequence[str] | None = None) -> TrainResult:
    """Train `model` in place on token sequences (<bos> ... <eos>); deterministic for a seed.

    `should_stop` is polled between batches; when it returns True training ends at once.
    `on_epoch(epoch, model)` runs after each full epoch (the model refreshed for inference).
    `trainable`: the names of the weights to train (None: all), as PyTorch trains only the
    parameters that require gradients (the gradient clipped over those alone).
    """
    sequences = [s for s in sequences if len(s) >= 2]
    result = TrainResult()
    if not sequences:
        return result
    rng = np.random.default_rng(config.seed)
    dropout = Dropout(model.config.dropout, dropout_rng(config.seed))
    names = list(model.weights) if trainable is None else list(trainable)
    optimizer = Optimizer({k: model.weights[k] for k in names}, config)
    total_steps = max(1, round(config.epochs * math.ceil(len(sequences) / config.batch_size)))
    start, loss_sum, loss_tokens = time.perf_counter(), 0.0, 0
    try:
        while result.steps < total_steps and not result.stopped:
            epoch_sum, epoch_tokens = 0.0, 0
            for batch in batches(sequences, config.batch_size, config.max_len, rng):
                if result.steps >= total_steps or (should_stop and should_stop()):
                    result.stopped = result.steps < total_steps
                    break
                loss, n, grads = loss_and_grads(model.weights, pad(batch, pad_id), pad_id,
                                                dropout)
                if trainable is not None:
                    grads = {k: grads[k] for k in names}
                if config.grad_clip:
                    clip_grad_norm(grads, config.grad_clip)
                optimizer.step(grads, config.lr * lr_factor(config.schedule, result.steps,
                                                            total_steps))
                epoch_sum += loss
                epoch_tokens += n
                result.steps += 1
            if epoch_tokens:
                result.epoch_losses.append(epoch_sum / epoch_tokens)
                if on_epoch and not result.stopped:
                    model.refresh()
                    on_epoch(len(result.epoch_losses), model)
            loss_sum += epoch_sum
            loss_tokens += epoch_tokens
    finally:
        model.refresh()
    result.tokens = loss_tokens
    result.seconds = time.perf_counter() - start
    result.mean_loss = loss_sum / loss_tokens if loss_tokens else float("nan")
    return result


def mean_loss(model: NumpyLSTM, sequences: list[list[int]], pad_id: int = 0,
              batch_size: int = 128, max_len: int = 64) -> float:
    """Mean next-token cross-entropy (nats) of `model` over `sequences`, no training (as
    `model.train.mean_loss`)."""
    w = model.weights
    total, count = 0.0, 0
    ordered = sorted((s[:max_len + 1] for s in sequences if len(s) >= 2), key=len)
    for i in range(0, len(ordered), batch_size):
        ids = pad(ordered[i:i + batch_size], pad_id)
        inputs, targets = ids[:, :-1], ids[:, 1:]
        hs = lstm_forward(w, w["embedding.weight"][inputs.T]).hs[1:].transpose(1, 0, 2)
        keep = targets != pad_id
        logits = mm(hs[keep], w["embedding.weight"].T)
        logits += w["output_bias"]
        logp = log_softmax(logits)
        total -= float(logp[np.arange(len(logp)), targets[keep]].sum(dtype=np.float64))
        count += int(keep.sum())
    return total / count if count else float("nan")
