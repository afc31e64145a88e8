"""Settings: built-in defaults < config file (JSON or TOML) < environment `PK_*` < flags.

Server settings are flat keys (`data_dir`, `db_url`, ...). Round settings (`RoundConfig`)
sit in a `round` table of the config file, or in `PK_ROUND_<NAME>` variables; the ones
given explicitly at start are written to the database, where admins change them later.
"""
from __future__ import annotations

import json
import math
import os
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from device_model.train import OPTIMIZERS
from federated.evaluation import MAX_WORDS as EVAL_MAX_WORDS
from federated.privacy import DISHONEST_SHARE
from federated.protocol import Task, TrainParams
from federated.secagg.params import DROPOUT_RATE, MAX_CLIENTS, hiding_problem, round_shape
from federated.wire import MAX_UPDATE_BYTES
from model.schedule import SCHEDULES, lr_factor

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam")
WEIGHTINGS = ("uniform", "examples")
TRAIN_OPTIMIZERS = OPTIMIZERS  # what devices can train with
COMPRESSIONS = ("none", "ddg16", "ddg16-full")  # float32, or federated.compression's schemes


# The ranges and choices RoundConfig.validate enforces (the OpenAPI document states them):
# name -> (low, high, low included, high included), None = unbounded; null passes if allowed.
Bounds = tuple[float | None, float | None, bool, bool]
BOUNDS: dict[str, Bounds] = {
    "min_reports": (1, None, True, True), "target_reports": (1, 100_000, True, True),
    "overcommit": (1, 10, True, True), "round_seconds": (0, 30 * 86400, False, True),
    "retry_after": (0, 86400, False, True), "participation_cap": (1, None, True, True),
    "min_examples": (1, None, True, True), "clip_norm": (0, 1e6, False, False),
    "noise_multiplier": (0, 1000, True, True), "dishonest_share": (0, 0.9, True, True),
    "delta": (0, 1, False, False),
    "epsilon_budget": (0, 1e6, False, False), "sampling_rate": (0, 1, False, True),
    "server_lr": (0, 100, False, True), "server_momentum": (0, 1, True, False),
    "server_lr_rounds": (1, 10_000_000, True, True), "adam_beta1": (0, 1, True, False),
    "adam_beta2": (0, 1, True, False), "adam_tau": (0, 10, False, True),
    "train_epochs": (0, 100, False, True), "train_batch_size": (1, 4096, True, True),
    "train_lr": (0, 100, False, True), "train_max_examples": (1, None, True, True),
    "secagg_phase_seconds": (0, 86400, False, True),
    "secagg_dropout_rate": (0, 0.5, True, False), "secagg_corrupt_rate": (0, 0.5, True, False),
    "evaluate_every": (0, 100_000, True, True), "eval_max_words": (1, EVAL_MAX_WORDS, True, True),
}
ENUMS: dict[str, tuple[str, ...]] = {
    "weighting": WEIGHTINGS, "server_optimizer": SERVER_OPTIMIZERS,
    "server_lr_schedule": SCHEDULES, "train_optimizer": TRAIN_OPTIMIZERS,
    "compression": COMPRESSIONS}


def in_bounds(value: float | None, bounds: Bounds) -> bool:
    """Whether `value` lies in `bounds` (None, for an optional setting, always does)."""
    low, high, low_in, high_in = bounds
    if value is None:
        return True
    above = low is None or value > low or (low_in and value == low)
    below = high is None or value < high or (high_in and value == high)
    return above and below


def bounds_message(name: str, bounds: Bounds) -> str:
    low, high, low_in, high_in = bounds
    text = (lambda v: str(int(v)) if float(v).is_integer() else str(v))  # noqa: E731
    if high is None:
        return f"{name} must be at least {text(low)}" if low_in else \
            f"{name} must be above {text(low)}"
    return (f"{name} must be in {'[' if low_in else '('}{text(low)}, {text(high)}"
            f"{']' if high_in else ')'}")


class ConfigError(ValueError):
    """A setting is unknown or has a value the server cannot run with."""


@dataclass(frozen=True)
class RoundConfig:
    """How rounds run; each round keeps a copy of the config it was opened with."""

    target_reports: int = 10          # close as soon as this many updates arrived
    min_reports: int = 5              # at the deadline, aggregate only with at least this many
    overcommit: float = 1.3           # hand out ceil(target * overcommit) tasks (dropouts)
    round_seconds: float = 300.0      # deadline, counted from the round's opening
    retry_after: float = 60.0         # pace steering: the longest "come back after" asked
    participation_cap: int = 4        # rounds a device may contribute to, ever
    min_examples: int = 1             # devices with fewer examples get no task
    clip_norm: float = 1.0            # C: L2 bound of one device's update
    noise_multiplier: float = 1.0     # z: the honest reports' sum carries N(0, (zC)^2) noise
    dishonest_share: float = DISHONEST_SHARE  # reports assumed from devices adding no noise
    delta: float = 1e-6               # the delta epsilon is reported at
    epsilon_budget: float | None = 12.0  # refuse rounds that could push a device past it
    sampling_rate: float | None = None   # assume Poisson sampling at this rate (not enforced)
    weighting: str = "uniform"        # or "examples"; uniform whenever noise_multiplier > 0
    server_optimizer: str = "fedavg"  # fedavg | fedavgm | fedadam (Reddi et al. 2021)
    server_lr: float = 1.0
    server_momentum: float = 0.9      # FedAvgM
    server_lr_schedule: str = "constant"  # or "cosine": server_lr falls to 0 over ...
    server_lr_rounds: int = 1000      # ... this many model versions (counted from version 0)
    adam_beta1: float = 0.9           # FedAdam
    adam_beta2: float = 0.99
    adam_tau: float = 1e-3
    train_epochs: float = 1.0         # what devices are asked to do locally
    train_batch_size: int = 16
    train_lr: float = 0.5
    train_optimizer: str = "sgd"
    train_max_examples: int = 1000
    secure_aggregation: bool = True   # devices mask updates; the server learns only the sum
    secagg_phase_seconds: float = 30.0  # each protocol phase after key advertisement
    secagg_dropout_rate: float = DROPOUT_RATE  # expected dropouts, sets the SecAgg+ degree k
    secagg_corrupt_rate: float = 0.0  # devices assumed to collude with the server
    compression: str = "none"         # "ddg16": <= 4 bits per parameter, integer noise
    #                                   (plain rounds: every coordinate, requantized)
    evaluate_every: int = 0           # federated evaluation of every N-th model version (0: off)
    eval_max_words: int = 200         # words a device scores at most (its contribution bound)
    eval_previous: bool = True        # evaluate the previous version too (paired comparison)

    @property
    def capacity(self) -> int:
        """How many tasks a round hands out."""
        return max(self.target_reports, math.ceil(self.target_reports * self.overcommit - 1e-9))

    @property
    def uniform(self) -> bool:
        """Whether the round's mean weights every report equally."""
        return self.weighting == "uniform" or self.noise_multiplier > 0

    @property
    def secagg_shape(self) -> tuple[int, int, int]:
        """(n, k, t) of a secure round: n = capacity clients, each masking with k neighbours
        and sharing its secrets so that t of them (itself among them) rebuild them."""
        return round_shape(self.target_reports, self.capacity, self.secagg_dropout_rate,
                           self.secagg_corrupt_rate)

    def server_lr_at(self, version: int) -> float:
        """The server learning rate of the step that makes model `version` (1, 2, ...)."""
        return self.server_lr * lr_factor(self.server_lr_schedule, version - 1,
                                          self.server_lr_rounds)

    def task(self, round_id: int, model_version: int, model_sha256: str, deadline: float,
             **parts: Any) -> Task:
        """The training task a device gets in a round run on this config; `parts`: the
        task's further (or other) fields (`secagg` in a secure round, `compression` and
        `model_compact_sha256` in a compressed one, `kind`, `evaluate` and no `train` in an
        evaluation round)."""
        train = TrainParams(self.train_epochs, self.train_batch_size, self.train_lr,
                            self.train_optimizer, self.train_max_examples)
        return Task(**{**dict(
            round_id=round_id, model_version=model_version, model_sha256=model_sha256,
            deadline=deadline, train=train, min_examples=self.min_examples,
            clip_norm=self.clip_norm, noise_multiplier=self.noise_multiplier,
            min_reports=self.min_reports, dishonest_share=self.dishonest_share,
            secure_aggregation=self.secure_aggregation), **parts})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: RoundConfig | None = None) -> RoundConfig:
        """`base` (or the defaults) with `data` applied, type-checked and validated."""
        if not isinstance(data, dict):
            raise ConfigError("round config must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown round setting(s) {unknown}; known: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        values = {k: _check_type(k, v, hints[k]) for k, v in data.items()}
        config = replace(base or cls(), **values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that makes no sense."""
        hints = typing.get_type_hints(type(self))
        checks = [
            *((in_bounds(getattr(self, name), bounds), bounds_message(name, bounds)
               + (" or null" if type(None) in typing.get_args(hints[name]) else ""))
              for name, bounds in BOUNDS.items()),
            *((getattr(self, name) in allowed, f"{name} must be one of {allowed}")
              for name, allowed in ENUMS.items()),
            (self.target_reports >= self.min_reports,
             "target_reports must be at least min_reports"),
            *self._secure_checks(),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


    def _secure_checks(self) -> list[tuple[bool, str]]:
        """What secure aggregation needs (nothing when it is off): a round that can finish,
        with (n, k, t) that devices accept (`federated.secagg.params.hiding_problem`)."""
        if not self.secure_aggregation:
            return []
        if not 2 <= self.capacity <= MAX_CLIENTS:
            return [(False, f"secure_aggregation needs 2..{MAX_CLIENTS} tasks per round "
                            f"(target_reports * overcommit), got {self.capacity}")]
        n, k, t = self.secagg_shape
        problem = hiding_problem(n, k, t)
        return [
            (problem is None, f"secure_aggregation settings refused: {problem}"),
            (t <= self.target_reports,
             f"secure_aggregation cannot finish: with secagg_corrupt_rate "
             f"{self.secagg_corrupt_rate:g} and secagg_dropout_rate {self.secagg_dropout_rate:g} "
             f"over {n} tasks, each device's masks need t = {t} share holders that stay to the "
             f"end, more than the target_reports = {self.target_reports} devices a round waits "
             "for; "
             "raise target_reports or lower secagg_corrupt_rate, secagg_dropout_rate or "
             "overcommit"),
            (self.round_seconds > 4 * self.secagg_phase_seconds,
             "round_seconds must be more than 4 x secagg_phase_seconds with secure_aggregation "
             "(the rest is for training and key advertisement)"),
            (self.uniform, "weighting 'examples' needs secure_aggregation false: the server "
                           "learns only the sum of the updates, so it averages uniformly"),
        ]


def _check_type(name: str, value: Any, hint: Any) -> Any:
    """`value` if it fits `hint` (int, float, str, bool or Optional of one); ints pass as floats."""
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if value is None and optional:
        return None
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number")
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base in (str, bool) and type(value) is base:
        return value
    raise ConfigError(f"{name} must be {'null or ' if optional else ''}{base.__name__}, "
                      f"not {json.dumps(value)[:40]}")


@dataclass
class Settings:
    """How one server process runs (not shared through the database)."""

    data_dir: Path = Path("server-data")
    db_url: str | None = None         # default: SQLite file <data_dir>/server.sqlite3 (WAL)
    host: str = "127.0.0.1"
    port: int = 8080
    admin_token: str | None = None    # default: generated once into <data_dir>/admin_token
    init_model: Path | None = None    # checkpoint stored as version 0 if there is none
    tokenizer: Path | None = None     # its tokenizer.json
    max_update_bytes: int = MAX_UPDATE_BYTES
    tick_seconds: float = 1.0         # round worker's period; 0 = only when woken (tests)
    lease_seconds: float = 120.0      # after this, another process may redo an aggregation
    aggregation_retry_seconds: float = 3600.0  # a failing aggregation is retried this long,
    aggregation_backoff_seconds: float = 1.0   # first after this, doubling up to 60 s, then
                                               # the round is abandoned (its updates dropped)
    keep_versions: int = 0            # model files kept: the latest N (and version 0); 0 = all
    restart_grace_seconds: float = 30.0  # after an outage, the open round's deadlines move
                                         # by its length plus this (devices resend)
    log_level: str = "INFO"
    start_training: bool = True       # rounds run from the first start until an admin stops them
    enrol_rate_limit: int = 20        # enrolment / token-recovery calls per client address ...
    enrol_rate_seconds: float = 60.0  # ... per window of this many seconds (429 beyond)
    blob_store: str = "files"         # or "database": models and updates in PostgreSQL, so
                                      # processes on several hosts serve one deployment
    clock_offset_file: Path | None = None  # tests of real processes: seconds added to the
                                           # wall clock, read from this file (OffsetClock)
    round: dict[str, Any] = field(default_factory=dict)  # explicit RoundConfig settings

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{Path(self.data_dir).resolve() / 'server.sqlite3'}"


_SETTING_TYPES = {"data_dir": Path, "db_url": str, "host": str, "port": int,
                  "admin_token": str, "init_model": Path, "tokenizer": Path,
                  "max_update_bytes": int, "tick_seconds": float, "lease_seconds": float,
                  "aggregation_retry_seconds": float, "aggregation_backoff_seconds": float,
                  "restart_grace_seconds": float, "keep_versions": int,
                  "log_level": str, "start_training": bool, "enrol_rate_limit": int,
                  "enrol_rate_seconds": float, "blob_store": str, "clock_offset_file": Path}
BLOB_STORES = ("files", "database")


def _parse(name: str, text: str, kind: Any) -> Any:
    """A value of `kind` from environment text."""
    if text.strip().lower() in ("", "none", "null"):
        return None
    try:
        if kind is bool:
            if text.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(text)
            return text.strip().lower() in ("1", "true", "yes", "on")
        return kind(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a valid {kind.__name__}") from None


def _round_kind(name: str) -> Any:
    hint = typing.get_type_hints(RoundConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a `.json` or `.toml` file."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected an object / table")
    return data


def _from_env(env: typing.Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, kind in _SETTING_TYPES.items():
        if f"PK_{name.upper()}" in env:
            out[name] = _parse(f"PK_{name.upper()}", env[f"PK_{name.upper()}"], kind)
    rounds = {}
    for f in fields(RoundConfig):
        key = f"PK_ROUND_{f.name.upper()}"
        if key in env:
            rounds[f.name] = _parse(key, env[key], _round_kind(f.name))
    if rounds:
        out["round"] = rounds
    return out


def _merge(settings: dict[str, Any], layer: dict[str, Any], source: str) -> None:
    unknown = sorted(set(layer) - set(_SETTING_TYPES) - {"round", "config"})
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {unknown}")
    for key, value in layer.items():
        if key == "round":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: 'round' must be a table of round settings")
            settings.setdefault("round", {}).update(value)
        elif key != "config":
            settings[key] = value


def _check_blob_store(merged: dict[str, Any]) -> None:
    kind = merged.get("blob_store", "files")
    if kind not in BLOB_STORES:
        raise ConfigError(f"setting blob_store must be one of {list(BLOB_STORES)}, "
                          f"not {kind!r}")
    if kind == "database" and not str(merged.get("db_url") or "").startswith("postgresql"):
        raise ConfigError("blob_store = 'database' keeps models and updates in a shared "
                          "PostgreSQL database: set db_url to a postgresql+psycopg:// URL too")


def load_settings(flags: dict[str, Any] | None = None,
                  env: typing.Mapping[str, str] | None = None) -> Settings:
    """Settings from defaults < config file < `PK_*` environment < flags (None = not given)."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env_layer = _from_env(env)
    config_path = flags.get("config") or env.get("PK_CONFIG")
    merged: dict[str, Any] = {}
    if config_path:
        _merge(merged, read_config_file(Path(config_path)), str(config_path))
    _merge(merged, env_layer, "environment")
    _merge(merged, flags, "flags")
    for key in ("data_dir", "init_model", "tokenizer"):
        if merged.get(key) is not None:
            merged[key] = Path(merged[key])
    for key, kind in _SETTING_TYPES.items():
        value = merged.get(key)
        if value is not None and kind in (int, float) and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"setting {key} must be a number, not {value!r}")
    for key in ("lease_seconds", "aggregation_retry_seconds", "aggregation_backoff_seconds",
                "restart_grace_seconds"):
        if key in merged and not 0 < merged[key] <= 30 * 86400:
            raise ConfigError(f"setting {key} must be in (0, 2592000] seconds")
    if merged.get("keep_versions", 0) < 0:
        raise ConfigError("setting keep_versions must be 0 (keep all) or more")
    _check_blob_store(merged)
    RoundConfig.from_dict(merged.get("round", {}))  # fail early on a bad round setting
    return Settings(**merged)
