"""A round's policy, read like a Flower strategy: one class per round kind decides whether
it runs the next round (`due`), who gets a task (`select`), what the task says
(`task_fields`), what a round accepts (`accept`), when it ends (`should_close`) and how its
reports become its result (`close`). `FedAvgPolicy` runs training rounds (its result: the
next model, via `aggregate`); `evaluation.EvaluationPolicy` runs evaluation rounds (its
result: published figures). `RoundService` (rounds.py) holds one policy per kind, dispatches
on the round's kind and only orchestrates the database and the files; secure aggregation
wraps the training policy (`secure.SecureAggregation`) and changes what it must: who may
still join, the task's protocol part, the phases' deadlines and the mean (unmasked, not read
update by update).

Aggregation is two steps: a *mean* of the round's updates, formed by streaming them one at
a time into a running sum (memory O(model size), not O(reports)), uniform whenever DP is on;
then a *server optimizer* that takes the mean as a pseudo-gradient: FedAvg with a server
learning rate, FedAvgM, or FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization",
Algorithm 2).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from federated.compression import Compression
from federated.wire import encode_update

from aggregation_server import accounting
from aggregation_server.config import RoundConfig
from aggregation_server.db import ModelVersion, Round, Task
from aggregation_server.errors import ApiError
from aggregation_server.uploads import check_update

if TYPE_CHECKING:
    from aggregation_server.rounds import RoundService

Tensors = dict[str, np.ndarray]
Shapes = dict[str, tuple[int, ...]]


CHARGED = Task.charged_at.is_not(None)  # tasks whose report the server accepted: they count


class AggregationUnavailable(RuntimeError):
    """The round's reports cannot become a model, and waiting will not change that."""


@dataclass(frozen=True)
class Refusal:
    """Why a device gets no task now, and when to ask again (None: around the round's end)."""

    reason: str
    retry_after: float | None = None


@dataclass(frozen=True)
class Verdict:
    """How an open round ends: aggregated (`close`) or abandoned, and why. `expired`: an
    abandonment by the deadline rule, which the service checks again under the row lock."""

    close: bool
    reason: str
    expired: bool = False


def rounds_done(s: Session) -> int:
    """How many rounds made a model version."""
    return s.scalar(select(func.count()).select_from(Round).where(Round.state == "closed"))


@dataclass(frozen=True)
class Upload:
    """One report as it arrived: its bytes, the endpoint it came through ("update" or
    "evaluation"), and what an update is checked against (the model's shapes, the byte
    limit, the round's compression)."""

    body: bytes
    via: str
    shapes: Shapes
    max_bytes: int
    spec: Compression | None


@dataclass(frozen=True)
class Accepted:
    """A report a round takes: the bytes to keep on disk (None: nothing) and what its task
    row records until the round closes."""

    blob: bytes | None
    num_examples: int | None
    metrics: dict[str, Any] | None


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


Optimizer = FedAvg | FedAvgM | FedAdam
StateFor = Callable[[str], Tensors]  # the server optimizer's state after the latest version


class RoundPolicy(Protocol):
    """What a round's policy decides (called by `RoundService`, inside its transactions
    where a session `s` is passed); `FedAvgPolicy` documents each method."""

    makes_version: bool

    def due(self, s: Session, config: RoundConfig, latest: ModelVersion) -> bool: ...
    def round_config(self, config: RoundConfig) -> RoundConfig: ...
    def supports(self, config: RoundConfig) -> bool: ...
    def plan(self, s: Session, config: RoundConfig,
             latest: ModelVersion) -> dict[str, Any] | None: ...
    def open(self, s: Session, r: Round, config: RoundConfig) -> None: ...
    def select(self, s: Session, r: Round, config: RoundConfig, device_id: str,
               now: float) -> Refusal | None: ...
    def admit(self, s: Session, r: Round, config: RoundConfig, device_id: str) -> None: ...
    def task_fields(self, s: Session, r: Round, config: RoundConfig,
                    device_id: str) -> dict[str, Any]: ...
    def accept(self, upload: Upload, r: Round, config: RoundConfig) -> Accepted: ...
    def should_close(self, r: Round, now: float) -> Verdict | None: ...
    def postpone(self, s: Session, r: Round, seconds: float) -> None: ...
    def close(self, service: RoundService, round_id: int) -> None: ...
    def aggregate(self, inputs: RoundInputs, weights: Tensors, state_for: StateFor,
                  version: int) -> tuple[Tensors, Tensors, Optimizer]: ...


class FedAvgPolicy(RoundPolicy):
    """Training rounds, plain: every device's clipped, noised update is read by the server."""

    makes_version = True  # a closed round makes the next model version

    # ----- which round runs next ----------------------------------------------------------
    def due(self, s: Session, config: RoundConfig, latest: ModelVersion) -> bool:
        """Whether the next round is this kind's (training: whenever no other kind is)."""
        return True

    def round_config(self, config: RoundConfig) -> RoundConfig:
        """The config a round of this kind runs with (training: the live one)."""
        return config

    def supports(self, config: RoundConfig) -> bool:
        """Whether this server can run rounds with `config` (plain only: no protocol)."""
        return not config.secure_aggregation

    def plan(self, s: Session, config: RoundConfig,
             latest: ModelVersion) -> dict[str, Any] | None:
        """What the round row records beyond its config (`Round.evaluation`): nothing."""
        return None

    # ----- who gets a task --------------------------------------------------------------
    def open(self, s: Session, r: Round, config: RoundConfig) -> None:
        """A round was opened (in session `s`): nothing to set up for plain rounds."""

    def select(self, s: Session, r: Round, config: RoundConfig, device_id: str,
               now: float) -> Refusal | None:
        """None if this device gets a task in the open round `r` (its own again if it holds
        one), else why not: it reported already, its participation cap or privacy budget is
        reached, or the round is full."""
        task = s.get(Task, (r.id, device_id))
        if task is not None:
            return None if task.state == "issued" else \
                Refusal(f"this device already reported in round {r.id}")
        history = list(s.scalars(select(Task.z_server).where(Task.device_id == device_id,
                                                             CHARGED)))
        if len(history) >= config.participation_cap:
            return Refusal(f"participation cap reached: this device took part in "
                           f"{len(history)} rounds, the cap is {config.participation_cap}",
                           86400.0)
        refusal = accounting.device_refusal(history, config, rounds_done(s))
        if refusal:
            return Refusal(refusal, 86400.0)
        if r.tasks_issued >= r.capacity:
            return Refusal(f"round {r.id} is full: all {r.capacity} tasks handed out")
        return None

    def admit(self, s: Session, r: Round, config: RoundConfig, device_id: str) -> None:
        """The device got a new task (before `r.tasks_issued` counts it)."""

    def task_fields(self, s: Session, r: Round, config: RoundConfig,
                    device_id: str) -> dict[str, Any]:
        """What the task says beyond the round's training settings and compression, as
        keyword arguments of `RoundConfig.task` (plain: nothing; secure: its "secagg"
        part)."""
        return {}

    # ----- what a round accepts -----------------------------------------------------------
    def accept(self, upload: Upload, r: Round, config: RoundConfig) -> Accepted:
        """The update to keep if the round takes it (`uploads.check_update`; a compressed
        one kept decoded, as float32), else ApiError."""
        if upload.via != "update":
            raise ApiError(409, "not_an_evaluation_round",
                           f"round {r.id} trains a model: send an update to "
                           f"/v1/rounds/{r.id}/update")
        upd = check_update(upload.body, r, config, upload.shapes, upload.max_bytes, upload.spec)
        blob = upload.body if upload.spec is None else encode_update(upd)
        return Accepted(blob, upd.num_examples, upd.metrics)

    # ----- when it ends -------------------------------------------------------------------
    def should_close(self, r: Round, now: float) -> Verdict | None:
        """At its target, or at its deadline with the minimum: close; at its deadline with
        fewer: abandon; else None (it stays open)."""
        if r.reports >= r.target:
            return Verdict(True, f"reached the target of {r.target} reports")
        if now < r.deadline:
            return None
        if r.reports >= r.minimum:
            return Verdict(True, f"deadline reached with {r.reports} reports "
                                 f"(minimum {r.minimum})")
        return Verdict(False, f"deadline passed with {r.reports} of the minimum {r.minimum} "
                              f"reports ({r.tasks_issued} tasks handed out)", expired=True)

    def postpone(self, s: Session, r: Round, seconds: float) -> None:
        """The round's deadline moved by `seconds` (an outage): nothing else moves."""

    # ----- how reports become the next model ------------------------------------------------
    def close(self, service: RoundService, round_id: int) -> None:
        """Make and record the round's model version (`RoundService.make_version`), with
        this policy's `aggregate`."""
        service.make_version(round_id, self)

    def mean(self, inputs: RoundInputs) -> Tensors:
        """The mean of the stored updates: uniform, or by examples when DP is off and the
        round's `weighting` says so."""
        uniform = inputs.config.uniform
        pairs = ((inputs.load(u), 1.0 if uniform else float(u.num_examples))
                 for u in inputs.updates)
        return streaming_mean(pairs, inputs.shapes)

    def aggregate(self, inputs: RoundInputs, weights: Tensors, state_for: StateFor,
                  version: int) -> tuple[Tensors, Tensors, Optimizer]:
        """The next model from the round's reports: (weights, optimizer state, optimizer)."""
        return self.step(inputs.config, version, weights, self.mean(inputs), state_for)

    @staticmethod
    def step(config: RoundConfig, version: int, weights: Tensors, delta: Tensors,
             state_for: StateFor) -> tuple[Tensors, Tensors, Optimizer]:
        """The configured server optimizer applied to the mean update `delta`."""
        optimizer = server_optimizer(config, version)
        weights, state = optimizer.step(weights, delta, state_for(optimizer.name))
        return weights, state, optimizer
