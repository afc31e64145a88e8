"""One device's part of an evaluation round: score the round's model version(s) on its most
recent messages not yet used for training, and report only clipped, noised sums.

The scoring is docs/EVALUATION.md's (`model.metrics.NextWordMetrics` over the NumPy model,
the same code that scores a split centrally); the report is `federated.evaluation`'s, noised
with the device's own noise from its privacy policy, never a level the server dictates.
Nothing but the report leaves this module: no text, no per-message figure.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device_model.checkpoint import weights_from_bytes
from device_model.lstm import NumpyLSTM
from device_model.scorer import NumpyScorer
from device_model.tokenizer import DeviceTokenizer
from federated import evaluation as ev
from federated.protocol import Task
from model.metrics import NextWordMetrics, score_rows
from model.words import words


def score(model_bytes: bytes, tokenizer: DeviceTokenizer, messages: list[str]
          ) -> dict[str, float]:
    """The sums of docs/EVALUATION.md's metrics for one model over `messages`."""
    weights, meta = weights_from_bytes(model_bytes, tokenizer_sha256=tokenizer.sha256)
    metrics = NextWordMetrics(tokenizer.id_to_word, tokenizer.unk_id, tokenizer.eos_id)
    rows = [("device", ws) for ws in map(words, messages) if ws]
    for _ in score_rows(NumpyScorer(NumpyLSTM(weights, meta.config), tokenizer.bos_id),
                        metrics, rows, tokenizer.bos_id, tokenizer.eos_id):
        pass
    return metrics.counts()


@dataclass
class EvalReport:
    """What an evaluation produced: the JSON body to send and what stays on the device."""

    body: dict
    sums: list[dict[str, float]]  # exact, before clipping and noise (never sent)
    messages: int


def run_evaluation(task: Task, models: list[bytes], tokenizer: DeviceTokenizer,
                   history: list[str], *, noise_stddev: float,
                   rng: np.random.Generator | None = None) -> EvalReport | None:
    """Score each model on the most recent messages of `history` (time order, all of them
    not yet used for training) within the evaluation task's word cap (`task.evaluate`, which
    `Task.from_json` checked); None if none has a word."""
    spec = task.evaluate
    messages = ev.select_messages(history, spec.max_words)
    if not messages:
        return None
    sums = [score(data, tokenizer, messages) for data in models]
    values = ev.to_wire(sums, spec.max_words, task.clip_norm, noise_stddev, rng)
    return EvalReport({"sums": values}, sums, len(messages))
