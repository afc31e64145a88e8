"""How a round's updates become the next global model (Flower's "strategy" part).

Two steps: a *mean* of the round's updates, formed by streaming them one at a time into a
running sum (memory O(model size), not O(reports)); then a *server optimizer* that takes
the mean as a pseudo-gradient: FedAvg with a server learning rate, FedAvgM, or FedAdam
(Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2).

The mean is looked up in `MEANS` by the round's `secure_aggregation` flag: a secure
aggregation protocol replaces the plain mean by registering its own with `register_mean`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from aggregation_server.config import RoundConfig

Tensors = dict[str, np.ndarray]
Shapes = dict[str, tuple[int, ...]]


class AggregationUnavailable(RuntimeError):
    """The round asks for a mean this server has no implementation of."""


@dataclass(frozen=True)
class StoredUpdate:
    """One accepted update, still on disk."""

    device_id: str
    path: str
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundInputs:
    """What a mean function gets: the round, its config, the model shapes and its updates."""

    round_id: int
    config: RoundConfig
    shapes: Shapes
    updates: list[StoredUpdate]
    load: Callable[[StoredUpdate], Tensors]


def streaming_mean(tensors: Iterable[tuple[Tensors, float]], shapes: Shapes) -> Tensors:
    """The weighted mean of (tensors, weight) pairs, consumed one pair at a time."""
    total = {name: np.zeros(shape, np.float64) for name, shape in shapes.items()}
    weight_sum = 0.0
    for update, weight in tensors:
        for name, acc in total.items():
            acc += update[name] if weight == 1.0 else update[name] * np.float32(weight)
        weight_sum += weight
        del update
    if weight_sum <= 0:
        raise ValueError("no updates to average")
    return {name: (acc / weight_sum).astype(np.float32) for name, acc in total.items()}


def plain_mean(inputs: RoundInputs) -> Tensors:
    """Uniform or example-weighted mean of the stored updates (uniform whenever DP is on)."""
    uniform = inputs.config.uniform
    pairs = ((inputs.load(u), 1.0 if uniform else float(u.num_examples)) for u in inputs.updates)
    return streaming_mean(pairs, inputs.shapes)


MeanFn = Callable[[RoundInputs], Tensors]
MEANS: dict[bool, MeanFn] = {False: plain_mean}


def register_mean(secure: bool, fn: MeanFn) -> None:
    """Install the mean used by rounds whose `secure_aggregation` flag equals `secure`."""
    MEANS[secure] = fn


def mean_for(config: RoundConfig) -> MeanFn:
    try:
        return MEANS[config.secure_aggregation]
    except KeyError:
        raise AggregationUnavailable("secure aggregation is not available on this server") \
            from None


def weighted_metrics(updates: list[StoredUpdate]) -> dict[str, float]:
    """Example-weighted means of the metrics devices reported (a fixed list of names,
    `federated.wire.DEVICE_METRICS`), and the number of reports."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for u in updates:
        for key, value in u.metrics.items():
            sums[key] = sums.get(key, 0.0) + value * u.num_examples
            weights[key] = weights.get(key, 0.0) + u.num_examples
    out = {key: sums[key] / weights[key] for key in sorted(sums) if weights[key] > 0}
    out["reports"] = float(len(updates))
    return out  # no num_examples: with few reports the total says what one device holds


@dataclass(frozen=True)
class FedAvg:
    """x <- x + lr * mean_delta."""

    lr: float = 1.0
    name = "fedavg"

    def step(self, weights: Tensors, delta: Tensors, state: Tensors) -> tuple[Tensors, Tensors]:
        lr = np.float32(self.lr)
        return {k: (w + lr * delta[k]).astype(np.float32) for k, w in weights.items()}, {}


@dataclass(frozen=True)
class FedAvgM:
    """m <- beta * m + delta;  x <- x + lr * m  (server momentum)."""

    lr: float = 1.0
    momentum: float = 0.9
    name = "fedavgm"

    def step(self, weights: Tensors, delta: Tensors, state: Tensors) -> tuple[Tensors, Tensors]:
        new_w, new_s = {}, {}
        for k, w in weights.items():
            m = np.float32(self.momentum) * state.get(f"m.{k}", np.zeros_like(w)) + delta[k]
            new_s[f"m.{k}"] = m.astype(np.float32)
            new_w[k] = (w + np.float32(self.lr) * m).astype(np.float32)
        return new_w, new_s


@dataclass(frozen=True)
class FedAdam:
    """Reddi et al. 2021: m <- b1 m + (1-b1) d; v <- b2 v + (1-b2) d^2; x <- x + lr m/(sqrt(v)+tau).

    m starts at 0 and v at tau^2, as in the paper (no bias correction).
    """

    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    name = "fedadam"

    def step(self, weights: Tensors, delta: Tensors, state: Tensors) -> tuple[Tensors, Tensors]:
        b1, b2, tau = np.float32(self.beta1), np.float32(self.beta2), np.float32(self.tau)
        new_w, new_s = {}, {}
        for k, w in weights.items():
            d = delta[k]
            m = b1 * state.get(f"m.{k}", np.zeros_like(w)) + (1 - b1) * d
            v = b2 * state.get(f"v.{k}", np.full_like(w, tau * tau)) + (1 - b2) * d * d
            new_s[f"m.{k}"], new_s[f"v.{k}"] = m.astype(np.float32), v.astype(np.float32)
            new_w[k] = (w + np.float32(self.lr) * m / (np.sqrt(v) + tau)).astype(np.float32)
        return new_w, new_s


def server_optimizer(config: RoundConfig, version: int) -> FedAvg | FedAvgM | FedAdam:
    """The server optimizer a round's config names, at its learning rate for making `version`."""
    lr = config.server_lr_at(version)
    if config.server_optimizer == "fedavgm":
        return FedAvgM(lr, config.server_momentum)
    if config.server_optimizer == "fedadam":
        return FedAdam(lr, config.adam_beta1, config.adam_beta2, config.adam_tau)
    return FedAvg(lr)
