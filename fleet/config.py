"""What a simulated fleet runs: rounds, who takes part, what devices and server do, and the
server's round settings and the devices' privacy policy that follow from it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from federated.secagg.params import max_overcommit
from fleet import FleetError
from keyboard_app.privacy_policy import DevicePolicy
from model.schedule import SCHEDULES

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam")
CHECK_INS = ("uniform", "by-data")


@dataclass
class FleetConfig:
    """A simulated fleet: rounds, who takes part, what devices and server do."""

    rounds: int = 20
    devices_per_round: int = 20
    dropout: float = 0.0             # chance a checked-in device stops before uploading
    local_epochs: float = 1.0
    client_lr: float = 0.5
    client_optimizer: str = "sgd"
    batch_size: int = 16
    max_examples: int = 1000         # each round, a device trains on a sample of <= M messages
    server_optimizer: str = "fedavgm"
    server_lr: float = 1.0
    server_momentum: float = 0.9
    server_lr_schedule: str = "constant"  # or "cosine": the server lr falls to 0 over `rounds`
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    weighting: str | None = None     # None: by examples without noise (uniform with noise)
    min_reports: int | None = None   # None: devices_per_round (noise is scaled for this many)
    overcommit: float | None = None  # None: 1.3, more with dropout
    round_timeout: float = 900.0     # the server's round deadline, seconds
    assume_sampling: bool = False    # let the server's accountant assume Poisson sampling
    secure_aggregation: bool = True  # rounds with secure aggregation (devices run in threads)
    compression: str = "none"        # "ddg16": compressed uploads (federated.compression)
    eval_every: int = 5              # evaluate every K-th version and the last (0: never)
    eval_senders: int = 40           # valid senders whose phones evaluate (0: all)
    eval_max_words: int = 200        # words each of them scores at most per evaluation
    final_eval: bool = True          # evaluate on all of `valid` at the end
    workers: int = 2
    seed: int = 0
    population: int | None = None    # None: every federated sender; N: a seeded random N
    max_minutes: float | None = None  # stop after the round that passes this wall time
    check_in: str = "uniform"        # or "by-data": a device checks in as often as it types

    def __post_init__(self) -> None:
        checks = [(self.rounds >= 1, "rounds must be at least 1"),
                  (self.devices_per_round >= 1, "devices per round must be at least 1"),
                  (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
                  (self.workers >= 1, "workers must be at least 1"),
                  (self.eval_every >= 0 and self.eval_senders >= 0,
                   "eval-every and eval-senders must not be negative"),
                  (not self.eval_every or not self.eval_senders
                   or self.eval_senders >= self.devices_per_round,
                   "eval-senders must be at least devices-per-round: an evaluation round "
                   "waits for as many reports as a training round"),
                  (self.check_in in CHECK_INS, f"check-in must be one of {CHECK_INS}"),
                  (self.check_in == "uniform" or not self.assume_sampling,
                   "assume-sampling needs check-in uniform (by-data is not a uniform sample)"),
                  (self.server_optimizer in SERVER_OPTIMIZERS,
                   f"server optimizer must be one of {SERVER_OPTIMIZERS}"),
                  (self.server_lr_schedule in SCHEDULES,
                   f"server lr schedule must be one of {SCHEDULES}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def reports_needed(self) -> int:
        return self.min_reports or self.devices_per_round

    def round_settings(self, population: int) -> dict[str, Any]:
        """The server's round config (admin API) for this fleet."""
        overcommit = self.overcommit or (1.3 if self.dropout == 0 else
                                         min(10.0, max(1.3, 2.0 / (1.0 - self.dropout))))
        if self.secure_aggregation and self.overcommit is None:  # else t above the target
            overcommit = max_overcommit(self.devices_per_round, overcommit)
            if overcommit * (1.0 - self.dropout) < 1.0:
                raise FleetError(
                    f"secure rounds of {self.devices_per_round} devices can hand out only "
                    f"{overcommit:g} times as many tasks (SecAgg's threshold), too few to "
                    f"cover a dropout of {self.dropout:g}: use more devices per round, less "
                    "dropout, or --overcommit with plain rounds")
        weighting = self.weighting or ("examples" if self.noise_multiplier == 0
                                       and not self.secure_aggregation else "uniform")
        return {
            "target_reports": self.devices_per_round,
            "min_reports": min(self.reports_needed, self.devices_per_round),
            "overcommit": overcommit, "round_seconds": self.round_timeout, "retry_after": 5.0,
            "participation_cap": self.rounds + self.evaluations, "min_examples": 1,
            "evaluate_every": self.eval_every, "eval_max_words": self.eval_max_words,
            "eval_previous": False,  # a learning curve, not paired comparisons: less noise
            "clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier,
            "delta": self.delta, "epsilon_budget": None,
            "sampling_rate": self.sampling_rate(population) if self.assume_sampling else None,
            "weighting": weighting, "server_optimizer": self.server_optimizer,
            "server_lr": self.server_lr, "server_momentum": self.server_momentum,
            "server_lr_schedule": self.server_lr_schedule, "server_lr_rounds": self.rounds,
            "train_epochs": self.local_epochs, "train_batch_size": self.batch_size,
            "train_lr": self.client_lr, "train_optimizer": self.client_optimizer,
            "train_max_examples": self.max_examples,
            "secure_aggregation": self.secure_aggregation, "compression": self.compression,
            **({"secagg_phase_seconds": min(30.0, self.round_timeout / 10)}
               if self.secure_aggregation else {})}

    def device_policy(self) -> DevicePolicy:
        """The simulated phones' privacy policy: exactly this fleet's round settings, set in
        code (a small cohort, or no noise for the comparison fleet, is looser than a real
        phone's defaults), without a lifetime limit (the server's accountant reports it)."""
        return DevicePolicy.relaxed(
            min_noise_multiplier=self.noise_multiplier, max_clip_norm=self.clip_norm,
            min_reports=min(self.reports_needed, self.devices_per_round),
            epsilon_budget=None, delta=self.delta)

    @property
    def evaluations(self) -> int:
        """Evaluation rounds at most: version 0 and every `eval_every`-th after it."""
        return self.rounds // self.eval_every + 1 if self.eval_every else 0

    def sampling_rate(self, population: int) -> float:
        return min(1.0, self.devices_per_round / max(population, 1))
