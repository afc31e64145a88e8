"""Local fine-tuning of part of the global model on one person's history (issue 14's
optional part: "while idle and charging"), measured by the personalised evaluation
(`model.personal_eval`, which runs this code).

A copy of the global model is trained by the device's training loop (`device_model.train`,
step for step `model.train`'s) on the person's history messages, only the weights of
`FineTune.part` trained:

- "bias": the output bias (10k numbers: which words this person uses, in every context);
- "proj": the output bias and the LSTM's output projection W_hr (a full-rank adapter on
  what the LSTM hands to the tied output layer, 64k numbers);
- "lstm": the output bias and the whole LSTM layer (the embedding, tied with the output
  layer, stays the global one);
- "all": every parameter.

The person's most recent history messages (`holdout`, a fraction, at least `min_holdout`
messages) are held out: after each epoch the held-out loss is measured, training stops when it
no longer falls, and the best epoch is kept. When the best held-out loss does not beat the
global model's by `min_gain` nats per word, the device keeps the global model unchanged (a
person the fine-tuning does not help loses nothing). With `refit`, the model is then trained
again from the global one on all of the history for the chosen number of epochs (the most
recent messages included). The adapted model has the global model's architecture: a
keystroke costs what it would cost with the global model.

Measured, not shipped: the best setting on `valid` (the LSTM layer and output bias, lr 3e-4)
raised macro top-1 there but not on `test` (BENCHMARKS.md, "Local fine-tuning"), so the app
does not fine-tune (the issue's "only if measured to help").
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from device_model.lstm import NumpyLSTM
from device_model.train import TrainConfig, mean_loss, train

PARTS = {"bias": ("output_bias",),
         "proj": ("output_bias", "lstm.weight_hr_l0"),
         "lstm": ("output_bias", "lstm."),
         "all": ("",)}


@dataclass(frozen=True)
class FineTune:
    """How the device fine-tunes the global model on its person's history."""

    part: str = "lstm"  # a key of PARTS (lstm, lr 3e-4: the best on `valid`; it did not
    lr: float = 3e-4  # hold on `test`, so the app does not fine-tune: BENCHMARKS.md)
    max_epochs: int = 5
    batch_size: int = 16
    holdout: float = 0.1  # the most recent fraction of the history, held out
    min_holdout: int = 2  # messages
    min_gain: float = 0.0  # nats per held-out word the adapted model must win by
    refit: bool = False  # train again on the whole history for the chosen epochs
    min_history: int = 10  # fewer history messages: no fine-tuning
    every: int = 0  # in the evaluation: fine-tune again after every `every` typed messages
    # (on the history and the messages typed so far; 0: only once, after the history)
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.part not in PARTS or not self.lr > 0 or self.max_epochs < 1
                or self.batch_size < 1 or not 0 < self.holdout < 1 or self.min_holdout < 1
                or self.min_gain < 0 or self.min_history < self.min_holdout + 1
                or self.every < 0):
            raise ValueError(f"fine-tuning settings out of range: {self}")

    def label(self) -> str:
        return (f"{self.part} lr {self.lr:g} <= {self.max_epochs} ep"
                + (" refit" if self.refit else "")
                + (f" min gain {self.min_gain:g}" if self.min_gain else "")
                + (f" every {self.every}" if self.every else ""))


@dataclass
class FineTuneResult:
    """What one fine-tuning did: the adapted model (None: the global model is kept)."""

    model: NumpyLSTM | None
    epochs: int = 0  # the chosen epoch (0: none improved the held-out loss)
    base_loss: float = float("nan")  # held-out loss of the global model (nats per word)
    best_loss: float = float("nan")  # ... of the chosen epoch
    seconds: float = 0.0
    steps: int = 0


def trainable(model: NumpyLSTM, part: str) -> list[str]:
    """The names of `part`'s weights."""
    return [name for name in model.weights if any(name.startswith(p) for p in PARTS[part])]


def _copy(model: NumpyLSTM) -> NumpyLSTM:
    return NumpyLSTM({k: v.copy() for k, v in model.weights.items()}, model.config)


def fine_tune(model: NumpyLSTM, sequences: list[list[int]], settings: FineTune,
              pad_id: int = 0, should_stop: Callable[[], bool] | None = None
              ) -> FineTuneResult:
    """Fine-tune a copy of `model` on one person's history `sequences` (token ids, oldest
    first) as the module's docstring says; `model` itself is not changed. When
    `should_stop` ends training early, the global model is kept (nothing half-trained)."""
    start = time.perf_counter()
    sequences = [s for s in sequences if len(s) >= 2]
    if len(sequences) < settings.min_history:
        return FineTuneResult(None, seconds=time.perf_counter() - start)
    n_out = max(settings.min_holdout, round(settings.holdout * len(sequences)))
    fit, held = sequences[:-n_out], sequences[-n_out:]
    tuned = _copy(model)
    names = trainable(tuned, settings.part)
    base = mean_loss(tuned, held, pad_id)
    best: dict = {"loss": base, "epoch": 0, "weights": None}
    stop = [False]

    def check(epoch: int, m: NumpyLSTM) -> None:
        loss = mean_loss(m, held, pad_id)
        if loss < best["loss"]:
            best.update(loss=loss, epoch=epoch, weights={k: m.weights[k].copy() for k in names})
        else:
            stop[0] = True  # the held-out loss no longer falls

    def stopping() -> bool:
        return stop[0] or bool(should_stop and should_stop())

    config = TrainConfig(epochs=settings.max_epochs, batch_size=settings.batch_size,
                         lr=settings.lr, optimizer="adam", seed=settings.seed)
    result = train(tuned, fit, config, pad_id, should_stop=stopping, on_epoch=check,
                   trainable=names)
    found = FineTuneResult(None, best["epoch"], base, best["loss"], steps=result.steps)
    interrupted = bool(should_stop and should_stop())
    if (best["weights"] is not None and best["loss"] < base - settings.min_gain
            and not interrupted):
        if settings.refit:
            tuned = _copy(model)
            config = TrainConfig(epochs=best["epoch"], batch_size=settings.batch_size,
                                 lr=settings.lr, optimizer="adam", seed=settings.seed)
            again = train(tuned, sequences, config, pad_id, should_stop=should_stop,
                          trainable=names)
            found.steps += again.steps
            found.model = None if again.stopped else tuned
        else:
            tuned.weights.update(best["weights"])
            tuned.refresh()
            found.model = tuned
    found.seconds = time.perf_counter() - start
    return found
