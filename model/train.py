"""The one training loop: public pre-training, the central reference, on-device training."""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from device_model.train import (OPTIMIZERS, TrainConfig, TrainResult,  # noqa: F401 (re-exported)
                                batches as _batches)
from model.lstm import NextWordLSTM
from model.schedule import lr_factor


def _pad(batch: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max(len(s) for s in batch)
    return torch.tensor([s + [pad_id] * (width - len(s)) for s in batch], dtype=torch.long)


def make_optimizer(model: NextWordLSTM, config: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def train(model: NextWordLSTM, sequences: list[list[int]], config: TrainConfig,
          pad_id: int = 0, should_stop: Callable[[], bool] | None = None,
          progress: bool | None = None,
          on_epoch: Callable[[int, NextWordLSTM], None] | None = None) -> TrainResult:
    """Train `model` in place on token sequences (<bos> ... <eos>); deterministic for a seed.

    `should_stop` is polled between batches; when it returns True training ends at once.
    The progress bar shows when stderr is a terminal, unless `progress` says otherwise.
    `on_epoch(epoch, model)` runs after each full epoch (for validation); the model is
    back in training mode afterwards.
    """
    sequences = [s for s in sequences if len(s) >= 2]
    result = TrainResult()
    if not sequences:
        return result
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    optimizer = make_optimizer(model, config)
    batches_per_epoch = math.ceil(len(sequences) / config.batch_size)
    total_steps = max(1, round(config.epochs * batches_per_epoch))
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config.schedule, step, total_steps))
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=total_steps, disable=not show, unit="batch", leave=False)
    model.train()
    start, loss_sum, loss_tokens = time.perf_counter(), 0.0, 0
    try:
        while result.steps < total_steps and not result.stopped:
            epoch_sum, epoch_tokens = 0.0, 0
            for batch in _batches(sequences, config.batch_size, config.max_len, rng):
                if result.steps >= total_steps or (should_stop and should_stop()):
                    result.stopped = result.steps < total_steps
                    break
                ids = _pad(batch, pad_id)
                logits, _ = model(ids[:, :-1])
                targets = ids[:, 1:]
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                       targets.reshape(-1), ignore_index=pad_id)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                lr_sched.step()
                n = int((targets != pad_id).sum())
                epoch_sum += loss.item() * n
                epoch_tokens += n
                result.steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{epoch_sum / max(epoch_tokens, 1):.3f}")
            if epoch_tokens:
                result.epoch_losses.append(epoch_sum / epoch_tokens)
                if on_epoch and not result.stopped:
                    on_epoch(len(result.epoch_losses), model)
                    model.train()
            loss_sum += epoch_sum
            loss_tokens += epoch_tokens
    finally:
        bar.close()
        model.eval()
        torch.set_num_threads(old_threads)
    result.tokens = loss_tokens
    result.seconds = time.perf_counter() - start
    result.mean_loss = loss_sum / loss_tokens if loss_tokens else float("nan")
    return result


@torch.inference_mode()
def mean_loss(model: NextWordLSTM, sequences: list[list[int]], pad_id: int = 0,
              batch_size: int = 128, max_len: int = 64) -> float:
    """Mean next-token cross-entropy (nats) of `model` over `sequences`, no training."""
    model.eval()
    total, count = 0.0, 0
    ordered = sorted((s[:max_len + 1] for s in sequences if len(s) >= 2), key=len)
    for i in range(0, len(ordered), batch_size):
        ids = _pad(ordered[i:i + batch_size], pad_id)
        logits, _ = model(ids[:, :-1])
        targets = ids[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                 ignore_index=pad_id, reduction="sum").item()
        count += int((targets != pad_id).sum())
    return total / count if count else float("nan")
