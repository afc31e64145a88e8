"""`python -m keyboard_app.simulate`: a fleet of simulated phones trains the global model.

Every device is one `federated` sender of the chitchat corpus with its own typing history
(its messages, in time order), and takes part through the real device runtime
(`keyboard_app.runtime.DeviceRuntime`: enrol, fetch the model with ETags, check in, train
at one thread, clip and noise, upload) over real HTTP to a real aggregation server: the one
at `--server URL`, or one started here as a child process with SQLite in the run folder.
Devices run in `--workers` processes so that both cores work.

Who checks in: each round, devices are taken in the order of a fresh seeded uniform random
permutation of the population until the round's target of reports is met (or all its
tasks are handed out): a uniform sample without replacement, independent of the data and
across rounds. That is what makes sampling-based (amplified) privacy accounting plausible;
the server's accountant still counts each device's real participations without
amplification unless `--assume-sampling` is given. With `--check-in by-data` the order is
drawn with probability proportional to each device's number of messages instead (a phone
that types more is eligible more often): rounds then follow where the text is, closer to
central training, where every message counts the same; heavy typers take part in most rounds.
Dropout: a dropped device is unplugged at a random batch of its local training (the
runtime stops and sends nothing), and the next device in the order checks in instead.
Heavy senders are capped on purpose: each round a device trains on a random sample of at
most `--max-examples` messages.

Writes into the run folder: rounds.jsonl (one JSON object per round), summary.json,
fleet.png (valid accuracy and epsilon against rounds), model.safetensors (the final global
model), the server's and the workers' logs.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import (FIRST_COMPLETED, Future, ProcessPoolExecutor,
                                ThreadPoolExecutor, wait)
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests

from data import Device, load_split
from federated import privacy
from federated.secagg.params import max_overcommit
from keyboard_app.privacy_policy import DevicePolicy
from model.paths import PRETRAINED_MODEL, ROOT, TOKENIZER_PATH
from model.schedule import SCHEDULES

log = logging.getLogger("keyboard_app.simulate")
logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's notes on fractional orders
SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam")
CHECK_INS = ("uniform", "by-data")
SAMPLING = {  # how the summary describes each check-in order
    "uniform": "each round, devices check in in the order of a fresh seeded uniform random "
               "permutation of the population (numpy default_rng([seed, round])) until the "
               "round's target of reports is met or all its tasks are handed out: a uniform "
               "sample without replacement, independent of the data and across rounds (what "
               "sampling-based accounting assumes; epsilon_if_sampled uses Poisson sampling at "
               "rate devices_per_round / population as an approximation). The server's "
               "epsilon counts each device's real participations, composed, with no "
               "amplification",
    "by-data": "each round, devices check in in a fresh seeded order drawn without "
               "replacement with probability proportional to their number of messages (a "
               "device that types more is eligible more often), until the round's target of "
               "reports is met: not a uniform sample, so epsilon_if_sampled does not apply. "
               "The server's epsilon counts each device's real participations, composed, "
               "with no amplification; heavy typers take part in most rounds"}
FINISHED = ("closed", "abandoned")


class FleetError(RuntimeError):
    """The simulation cannot go on (server refused, did not start, stalled...)."""


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
    eval_every: int = 5              # evaluate on `valid` every K rounds (0: never during)
    eval_senders: int = 40           # valid senders in those evaluations (0: all)
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
            "participation_cap": self.rounds, "min_examples": 1,
            "clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier,
            "delta": self.delta, "epsilon_budget": None,
            "sampling_rate": self.sampling_rate(population) if self.assume_sampling else None,
            "weighting": weighting, "server_optimizer": self.server_optimizer,
            "server_lr": self.server_lr, "server_momentum": self.server_momentum,
            "server_lr_schedule": self.server_lr_schedule, "server_lr_rounds": self.rounds,
            "train_epochs": self.local_epochs, "train_batch_size": self.batch_size,
            "train_lr": self.client_lr, "train_optimizer": self.client_optimizer,
            "train_max_examples": self.max_examples,
            "secure_aggregation": self.secure_aggregation,
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

    def sampling_rate(self, population: int) -> float:
        return min(1.0, self.devices_per_round / max(population, 1))


# --- the server: a child process, and its admin API ------------------------------------------
class ServerProcess:
    """`python -m aggregation_server` as a child process, SQLite in `data_dir`, training
    stopped until configured; logs (JSON lines) to `data_dir/server.log`."""

    def __init__(self, data_dir: Path, init_model: Path, tokenizer: Path) -> None:
        self.data_dir, self.init_model, self.tokenizer = Path(data_dir), init_model, tokenizer
        self.admin_token = secrets.token_urlsafe(24)
        self.log_path = self.data_dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "config.json"
        config.write_text(json.dumps({"start_training": False, "tick_seconds": 0.5,
                                      "log_level": "INFO",  # the whole fleet is on loopback:
                                      "enrol_rate_limit": 1_000_000}))
        args = [sys.executable, "-m", "aggregation_server", "--data-dir", str(self.data_dir),
                "--host", "127.0.0.1", "--port", "0", "--config", str(config),
                "--init-model", str(self.init_model), "--tokenizer", str(self.tokenizer)]
        env = dict(os.environ, PK_ADMIN_TOKEN=self.admin_token)  # not on the command line
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                         stderr=err)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = re.search(r'"event": "listening".*?"port": (\d+)', self.log_path.read_text())
            if found:
                self.url = f"http://127.0.0.1:{found.group(1)}"
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise FleetError(f"the server did not start; its log {self.log_path} ends with:\n"
                         + self.log_path.read_text()[-2000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerAdmin:
    """The calls the simulator makes: admin config and training, status, the global model."""

    def __init__(self, url: str, admin_token: str | None) -> None:
        self.url, self.http = url.rstrip("/"), requests.Session()
        self.headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.http.request(method, self.url + path, timeout=120, **kwargs)
        except requests.RequestException as err:
            raise FleetError(f"{method} {self.url}{path}: {err}") from None
        if response.status_code >= 400:
            raise FleetError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response

    def configure(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Stop training (abandoning an open round), apply `settings`, start training."""
        self.training("stop")
        config = self._call("PUT", "/v1/admin/config", json=settings, headers=self.headers)
        self.training("start")
        return config.json()

    def training(self, action: str) -> None:
        self._call("POST", "/v1/admin/training", json={"action": action}, headers=self.headers)

    def enrolment_code(self, uses: int) -> str:
        """An enrolment code for `uses` devices (the fleet's devices enrol with it)."""
        return self._call("POST", "/v1/admin/enrolment-codes", headers=self.headers,
                          json={"uses": uses, "label": "fleet simulation"}).json()["code"]

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/v1/status").json()

    def model(self) -> bytes:
        return self._call("GET", "/v1/model").content

    def tokenizer_json(self) -> str:
        return self._call("GET", "/v1/tokenizer").text

    def open_round(self, after: int, timeout: float = 120.0) -> dict[str, Any]:
        """The open round with an id above `after`, once there is one."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            r = status.get("round") or {}
            if r.get("state") == "open" and r["id"] > after and time.time() < r["deadline"]:
                return r
            if status.get("blocked_reason"):
                raise FleetError(f"the server opens no round: {status['blocked_reason']}")
            if time.monotonic() > deadline:
                raise FleetError(f"no round opened within {timeout:.0f} s: {r}")
            time.sleep(0.2)

    def finished_round(self, round_id: int, timeout: float) -> tuple[dict, dict]:
        """(round, status) once the round is closed or abandoned."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            found = next((r for r in status["rounds"] if r["id"] == round_id), None)
            if found and found["state"] in FINISHED:
                return found, status
            if time.monotonic() > deadline:
                raise FleetError(f"round {round_id} did not finish within {timeout:.0f} s")
            time.sleep(0.2)


# --- the devices, in worker processes ---------------------------------------------------------
@dataclass(frozen=True)
class DeviceJob:
    """One device's turn in one round (sent to a worker process)."""

    index: int          # into the population
    url: str
    data_dir: str       # the device's own folder: its token and state
    cache_dir: str      # the global model cache shared by the simulated devices
    train_seed: int
    noise_seed: int
    unplug_after: int | None  # dropout: unplugged after this many training batches
    policy: DevicePolicy  # the fleet's explicit device policy (`FleetConfig.device_policy`)
    direction_seed: int | None = None  # a privacy-audit canary: sends this direction instead
    enrolment_code: str = ""  # the operator's code the device enrols with (first round)


_WORKER: dict[str, Any] = {}


def init_worker(devices: list[Device], log_dir: str) -> None:
    """Worker process set-up: one torch thread, the population's messages, a log file."""
    import torch
    torch.set_num_threads(1)
    logging.basicConfig(filename=str(Path(log_dir) / f"worker-{os.getpid()}.log"),
                        level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _WORKER["devices"] = devices
    _WORKER["histories"] = {}


def worker_ready(pause: float) -> int:
    """Nothing (after the initializer ran): lets the pool start all workers up front."""
    time.sleep(pause)
    return os.getpid()


class UnplugProbe:
    """Battery probe: mains power, until `after` training batches are done (a dropout).

    Call 1 is the eligibility check before check-in; call b + 2 is the poll before batch b.
    """

    def __init__(self, after: int | None) -> None:
        self.after, self.calls = after, 0

    def __call__(self):
        from keyboard_app.eligibility import Battery
        self.calls += 1
        if self.after is not None and self.calls > self.after + 1:
            return Battery(40.0, plugged=False)
        return None


def _history(index: int):
    """The device's typing history (kept in memory by the worker between rounds)."""
    from keyboard_app.history import HistoryStore
    store = _WORKER["histories"].get(index)
    if store is None:
        device: Device = _WORKER["devices"][index]
        store = HistoryStore(":memory:", retention_days=None, max_messages=None)
        store.add_many(device.messages, device.timestamps)
        _WORKER["histories"][index] = store
    return store


def device_round(job: DeviceJob) -> dict[str, Any]:
    """Run one device's pass of the real runtime: check in, train, upload (or drop out)."""
    from keyboard_app.eligibility import Eligibility, EligibilitySettings
    from keyboard_app.runtime import DeviceRuntime
    started = time.perf_counter()
    eligibility = Eligibility(EligibilitySettings(idle_seconds=0, min_new_messages=0),
                              battery=UnplugProbe(job.unplug_after))
    extra = {} if job.direction_seed is None else {
        "local_update": direction_update(job.direction_seed)}
    runtime = DeviceRuntime(job.data_dir, job.url, history=_history(job.index),
                            eligibility=eligibility, cache_dir=job.cache_dir, load_model=False,
                            train_seed=job.train_seed, policy=job.policy,
                            enrolment_code=job.enrolment_code,
                            rng=np.random.default_rng(job.noise_seed), **extra)
    try:
        step = runtime.run_once()
        status = runtime.status()
    finally:
        runtime.client.close()
    return {"index": job.index, "outcome": step.outcome, "detail": step.detail,
            "round_id": status.last_round_id if step.outcome == "uploaded" else None,
            "local_loss": status.last_loss if step.outcome == "uploaded" else None,
            "upload_bytes": status.last_update_bytes if step.outcome == "uploaded" else None,
            "seconds": round(time.perf_counter() - started, 3)}


def direction_update(direction_seed: int):
    """A canary device's round for the one-run empirical epsilon (`privacy_audit.empirical`):
    instead of training, send the seed's fixed random direction of norm C, with the noise
    the device's policy sized, like any other update (same signature as `run_task`)."""
    def run(task: dict, global_bytes: bytes, tokenizer: Any, messages: list[str],
            **options: Any):
        from federated.wire import encode_update, tensors_from_bytes
        from keyboard_app.local_training import LocalUpdate, check_task, make_update
        from model.train import TrainResult
        from privacy_audit.empirical import direction
        check_task(task)
        tensors, _ = tensors_from_bytes(global_bytes)
        delta = direction(direction_seed, {k: v.shape for k, v in tensors.items()},
                          float(task["clip_norm"]))
        update, prenorm = make_update(delta, task, 1, options["noise_stddev"],
                                      options.get("rng"))
        return LocalUpdate(encode_update(update), update, prenorm,
                           TrainResult(steps=1, mean_loss=0.0))
    return run


def with_audit_devices(devices: list[Device], extra_messages: dict[str, list[str]],
                       direction_seeds: list[int], seed: int) -> list[Device]:
    """The population for a privacy audit (`benchmarks/privacy_audit_fleet.py`): canary messages
    added to chosen senders' histories at random times within them, and one extra device
    per direction seed (its history one placeholder message; it never trains)."""
    rng = np.random.default_rng([seed, 2**31 + 2])
    out = []
    for d in devices:
        extra = extra_messages.get(d.sender, [])
        if extra:
            times = rng.uniform(min(d.timestamps), max(d.timestamps), len(extra))
            merged = sorted(zip([*d.timestamps, *times], [*d.messages, *extra]))
            d = Device(d.sender, d.role, [m for _, m in merged], [t for t, _ in merged])
        out.append(d)
    missing = set(extra_messages) - {d.sender for d in devices}
    if missing:
        raise FleetError(f"canary senders not in the population: {sorted(missing)[:5]}")
    return out + [Device(f"direction-canary-{s}", "canary", ["canary"], [0.0])
                  for s in direction_seeds]


# --- evaluation and the plot --------------------------------------------------------------------
class Evaluator:
    """The offline evaluation (model.evaluate) of a global model on a set of devices."""

    KEYS = ("top1", "top3", "perplexity", "macro_top1", "top1_excl_unk", "ksr", "words")

    def __init__(self, tokenizer_json: str, devices: list[Device], threads: int) -> None:
        from model.tokenizer import WordTokenizer
        self.tokenizer = WordTokenizer.from_json(tokenizer_json)
        self.devices, self.threads = devices, threads

    def __call__(self, model_bytes: bytes) -> dict[str, float]:
        import torch
        from model.checkpoint import model_from_bytes
        from model.evaluate import evaluate_scorer
        model, meta = model_from_bytes(model_bytes, tokenizer_sha256=self.tokenizer.sha256)
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            result = evaluate_scorer(model, self.tokenizer, self.devices)
        finally:
            torch.set_num_threads(old)
        return {"model_version": meta.version, "senders": len(self.devices),
                **{k: result[k] for k in self.KEYS}}


def _evaluate_job(job: tuple[str, str, str, str, int]) -> dict[str, Any]:
    """In a worker: (name, 'ngram' or a checkpoint path, tokenizer path, split, senders)."""
    import torch
    torch.set_num_threads(1)
    from model.compress import load_any
    from model.evaluate import evaluate_scorer
    from model.ngram import KneserNey
    from model.tokenizer import WordTokenizer
    name, what, tokenizer_path, split, senders = job
    tokenizer = WordTokenizer.load(tokenizer_path)
    if what == "ngram":  # the baseline: trained on the public split only
        public = [m for d in load_split("public") for m in d.messages]
        scorer = KneserNey.from_messages(public, tokenizer)
    else:
        scorer = load_any(what, tokenizer.sha256)[0]  # float32 or the shipped int8
    devices = load_split(split)
    started = time.time()
    row = {"name": name, **evaluate_scorer(scorer, tokenizer,
                                           devices[:senders] if senders else devices)}
    row["eval_seconds"] = round(time.time() - started, 1)
    return row


def evaluate_split(models: list[tuple[str, str]], tokenizer: Path, split: str = "test",
                   senders: int = 0, workers: int = 2) -> list[dict[str, Any]]:
    """EVALUATION.md metrics on `split` (its first `senders`, 0: all) for each
    (name, 'ngram' or checkpoint path), `workers` models at a time, one thread each."""
    jobs = [(name, what, str(tokenizer), split, senders) for name, what in models]
    with ProcessPoolExecutor(min(workers, len(jobs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_evaluate_job, jobs))


def plot_rounds(records: list[dict], path: Path, title: str) -> None:
    """valid top-1 / top-3, valid perplexity and epsilon against rounds, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (acc, ppl, eps) = plt.subplots(1, 3, figsize=(14, 4))
    evaluated = [r for r in records if r.get("valid")]
    rounds = [r["round"] for r in evaluated]
    for key, label in (("top1", "top-1"), ("top3", "top-3")):
        acc.plot(rounds, [100 * r["valid"][key] for r in evaluated], marker="o", label=label)
    acc.set(xlabel="round", ylabel="accuracy (%)", title="global model on valid")
    acc.legend()
    ppl.plot(rounds, [r["valid"]["perplexity"] for r in evaluated], marker="o", color="tab:green")
    ppl.set(xlabel="round", ylabel="perplexity", title="perplexity on valid")
    points = [(r["round"], r["epsilon"]) for r in records if r.get("epsilon") is not None]
    if points:
        eps.plot(*zip(*points), marker=".", color="tab:red", label="against the server")
        users = [(r["round"], r["epsilon_model_users"]) for r in records
                 if r.get("epsilon_model_users") is not None]
        if users and users != points:
            eps.plot(*zip(*users), marker=".", color="tab:orange", label="against model users")
        eps.legend()
        delta = next((r["delta"] for r in records if r.get("delta")), None)
        eps.set(ylabel=f"epsilon (delta = {delta:g})")
    else:
        eps.text(0.5, 0.5, "no privacy guarantee\n(no noise)", ha="center",
                 va="center", transform=eps.transAxes)
        eps.set_yticks([])
    eps.set(xlabel="round", title="privacy spent (most any device spent)")
    save_figure(fig, (acc, ppl, eps), title, path)


def save_figure(fig: Any, axes: tuple, title: str, path: Path) -> None:
    """Grid, whole-number round ticks, a title; write the PNG and free the figure."""
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the fleet ----------------------------------------------------------------------------------
def check_in_order(population: list[Device], how: str, rng: np.random.Generator) -> np.ndarray:
    """The order devices check in for a round: uniform, or weighted by history size.

    "by-data" models eligibility's "enough new messages since the last round": a device
    that types ten times as much becomes eligible about ten times as often (draws without
    replacement, so one round never takes a device twice).
    """
    if how == "uniform":
        return rng.permutation(len(population))
    sizes = np.array([max(len(d.messages), 1) for d in population], dtype=float)
    return rng.choice(len(population), len(population), replace=False, p=sizes / sizes.sum())


@dataclass
class Fleet:
    """The simulation loop: rounds of check-ins dispatched to worker processes."""

    config: FleetConfig
    run_dir: Path
    admin: ServerAdmin
    url: str
    population: list[Device]
    pool: ProcessPoolExecutor
    evaluator: Evaluator | None
    progress: bool = True
    start_valid: dict | None = None
    direction_seeds: dict[int, int] = field(default_factory=dict)  # population index -> seed
    enrolment_code: str = ""
    records: list[dict] = field(default_factory=list)

    def run(self) -> list[dict]:
        """All rounds (or until `max_minutes`); one record per round, round 0 the start."""
        from tqdm import tqdm
        cfg, started = self.config, time.time()
        self._keep(self._record_start())
        current = self.admin.status().get("round") or {}
        last_id = int(current.get("id") or 0) - 1
        with tqdm(total=cfg.rounds, desc=self.run_dir.name, unit="round", file=sys.stderr,
                  disable=not self.progress, dynamic_ncols=True) as bar:
            for k in range(1, cfg.rounds + 1):
                record = self._round(k, last_id, started)
                last_id = record["round_id"]
                out_of_time = bool(cfg.max_minutes and
                                   time.time() - started > 60 * cfg.max_minutes)
                if self.evaluator and cfg.eval_every and (
                        k % cfg.eval_every == 0 or k == cfg.rounds or out_of_time):
                    record["valid"] = self.evaluator(self.admin.model())
                self._keep(record)
                bar.update(1)
                bar.set_postfix(self._postfix(record))
                if out_of_time and k < cfg.rounds:
                    log.warning("stopping after round %d: past %g minutes", k, cfg.max_minutes)
                    break
        return self.records

    def _record_start(self) -> dict:
        record = {"round": 0, "round_id": None, "state": "start", "reports": 0,
                  "wall_seconds": 0.0, "epsilon": 0.0 if self.config.noise_multiplier else None,
                  "delta": self.config.delta}
        if self.evaluator and self.config.eval_every:
            record["valid"] = self.start_valid or self.evaluator(self.admin.model())
        return record

    def _keep(self, record: dict) -> None:
        """Add a finished round's record, and append it to rounds.jsonl at once."""
        self.records.append(record)
        with open(self.run_dir / "rounds.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    @staticmethod
    def _postfix(record: dict) -> dict:
        out = {"reports": record["reports"]}
        if record.get("valid"):
            out["top1"] = f"{record['valid']['top1']:.2%}"
        if record.get("epsilon") is not None:
            out["eps"] = f"{record['epsilon']:.2f}"
        return out

    def _job(self, k: int, index: int, dropped: bool, u: float) -> DeviceJob:
        cfg = self.config
        seeds = np.random.SeedSequence([cfg.seed, k, index]).generate_state(2)
        unplug = None
        if dropped:  # at a uniformly random batch of the local training
            n = min(len(self.population[index].messages), cfg.max_examples)
            steps = max(1, round(cfg.local_epochs * math.ceil(n / cfg.batch_size)))
            unplug = int(u * steps)
        return DeviceJob(index, self.url, str(self.run_dir / "devices" / f"{index:04d}"),
                         str(self.run_dir / "devices" / "model-cache"),
                         int(seeds[0] & 0x7FFFFFFF), int(seeds[1]), unplug,
                         self.config.device_policy(), self.direction_seeds.get(index),
                         self.enrolment_code)

    def _round(self, k: int, after: int, started: float) -> dict:
        """Dispatch check-ins until the target is met; wait for the round to finish."""
        cfg = self.config
        r = self.admin.open_round(after)
        round_started = time.time()
        rng = np.random.default_rng([cfg.seed, k])
        order = check_in_order(self.population, cfg.check_in, rng)
        drops, where = rng.random(len(order)) < cfg.dropout, rng.random(len(order))
        pending: dict[Future, int] = {}
        outcomes, results, checked_in, pos = Counter(), [], [], 0
        while True:
            while (pos < len(order) and outcomes["uploaded"] + len(pending) < r["target"]
                   and len(checked_in) - outcomes["no-task"] < r["capacity"]):
                index = int(order[pos])
                job = self._job(k, index, bool(drops[pos]), float(where[pos]))
                pending[self.pool.submit(device_round, job)] = index
                checked_in.append(index)
                pos += 1
            if not pending:
                break
            done, _ = wait(pending, timeout=max(r["deadline"] - time.time(), 0) + 120,
                           return_when=FIRST_COMPLETED)
            if not done:
                raise FleetError(f"round {r['id']}: devices stalled past the deadline")
            for future in done:
                pending.pop(future)
                result = future.result()
                outcomes[result["outcome"]] += 1
                results.append(result)
                if result["outcome"] not in ("uploaded", "interrupted"):
                    log.warning("device %d: %s (%s)", result["index"], result["outcome"],
                                result["detail"])
        if outcomes["uploaded"] < r["minimum"]:  # it would be abandoned at the deadline anyway
            self.admin.training("stop")
            self.admin.training("start")
        done_round, status = self.admin.finished_round(
            r["id"], timeout=max(r["deadline"] - time.time(), 0) + 120)
        return self._round_record(k, done_round, status, results, checked_in, outcomes,
                                  round_started, started)

    def _round_record(self, k: int, r: dict, status: dict, results: list[dict],
                      checked_in: list[int], outcomes: Counter, round_started: float,
                      started: float) -> dict:
        cfg = self.config
        uploaded = [x for x in results if x["outcome"] == "uploaded"]
        losses = [x["local_loss"] for x in uploaded if x["local_loss"] is not None]
        privacy_info = status["privacy"]
        record = {
            "round": k, "round_id": r["id"], "state": r["state"], "reason": r["reason"],
            "reports": r["reports"], "tasks_issued": r["tasks_issued"],
            "new_version": r["new_version"], "checked_in": checked_in,
            "outcomes": dict(outcomes), "wall_seconds": round(time.time() - started, 2),
            "round_seconds": round(time.time() - round_started, 2),
            "server_metrics": r["metrics"],
            "train_loss": r["metrics"].get("loss"),  # what devices reported (they send none)
            "local_loss": float(np.mean(losses)) if losses else None,
            "upload_bytes": uploaded[0]["upload_bytes"] if uploaded else None,
            "device_seconds": round(sum(x["seconds"] for x in results), 2),
            # the most any device has spent, against the server and against model users
            "epsilon": privacy_info["epsilon_spent_max"] if cfg.noise_multiplier else None,
            "epsilon_model_users": (privacy_info["epsilon_spent_max_model_users"]
                                    if cfg.noise_multiplier else None),
            "delta": privacy_info["delta"],
            "participations": status["devices"]["participations"],
        }
        if cfg.noise_multiplier and cfg.check_in == "uniform":  # by-data is not a uniform sample
            record["epsilon_if_sampled"] = privacy.epsilon(
                cfg.noise_multiplier, k, cfg.delta,
                sampling_rate=cfg.sampling_rate(len(self.population)), rounds=k)
        return record


def choose_population(config: FleetConfig, senders: list[str] | None = None) -> list[Device]:
    """The federated senders that make up the fleet (all, a seeded random few, or given)."""
    devices = load_split("federated")
    if senders is not None:
        by_sender = {d.sender: d for d in devices}
        missing = [s for s in senders if s not in by_sender]
        if missing:
            raise FleetError(f"not federated senders: {missing[:5]}")
        return [by_sender[s] for s in senders]
    if config.population and config.population < len(devices):
        rng = np.random.default_rng([config.seed, 2**31])
        picked = sorted(rng.choice(len(devices), config.population, replace=False))
        devices = [devices[i] for i in picked]
    return devices


def choose_valid(config: FleetConfig) -> list[Device]:
    """The valid senders of the periodic evaluations (a seeded random subset, or all)."""
    devices = load_split("valid")
    if config.eval_senders and config.eval_senders < len(devices):
        rng = np.random.default_rng([config.seed, 2**31 + 1])
        devices = [devices[i] for i in sorted(rng.choice(len(devices), config.eval_senders,
                                                         replace=False))]
    return devices


def run_fleet(config: FleetConfig, run_dir: Path, *, server_url: str | None = None,
              admin_token: str | None = None, init_model: Path = PRETRAINED_MODEL,
              tokenizer: Path = TOKENIZER_PATH, senders: list[str] | None = None,
              progress: bool = True, title: str | None = None,
              start_valid: dict | None = None,
              extra_messages: dict[str, list[str]] | None = None,
              direction_seeds: list[int] = ()) -> dict[str, Any]:
    """Run the fleet against `server_url` (or a server started in `run_dir/server`).

    `start_valid`: the start model's valid figures when already known (same start model
    and config). A privacy audit adds `extra_messages` (sender -> canary messages) to
    histories and one random-direction canary device per `direction_seeds` entry
    (`with_audit_devices`). Returns the summary (also written to run_dir/summary.json).
    """
    from model.evaluate import machine
    run_dir = Path(run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "rounds.jsonl").unlink(missing_ok=True)
    population = choose_population(config, senders)
    if extra_messages or direction_seeds:
        population = with_audit_devices(population, extra_messages or {},
                                        list(direction_seeds), config.seed)
    (run_dir / "population.json").write_text(json.dumps([d.sender for d in population]))
    settings = config.round_settings(len(population))
    started = time.time()
    with ExitStack() as stack:
        if config.secure_aggregation:  # a round's devices go through the phases together
            init_worker(population, str(run_dir / "logs"))
            pool = stack.enter_context(ThreadPoolExecutor(
                math.ceil(settings["target_reports"] * settings["overcommit"])))
        else:
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # workers: one BLAS thread each
            pool = stack.enter_context(ProcessPoolExecutor(
                config.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker, initargs=(population, str(run_dir / "logs"))))
        warming = [pool.submit(worker_ready, 0.5) for _ in range(config.workers)]  # meanwhile:
        if server_url is None:
            for path in (init_model, tokenizer):
                if not Path(path).is_file():
                    raise FleetError(f"{path} not found: run `python -m model.pretrain` first, "
                                     "or give --init-model and --tokenizer")
            server = stack.enter_context(ServerProcess(run_dir / "server", Path(init_model),
                                                       Path(tokenizer)))
            server_url, admin_token = server.url, server.admin_token
        # on the way out, first stop handing devices out (the server must outlive their jobs)
        stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        admin = ServerAdmin(server_url, admin_token)
        applied = admin.configure(settings)
        evaluator = None
        if config.eval_every or config.final_eval:
            evaluator = Evaluator(admin.tokenizer_json(), choose_valid(config), config.workers)
        for future in warming:  # the workers' start-up is not counted in round 1
            future.result()
        fleet = Fleet(config, run_dir, admin, server_url, population, pool, evaluator, progress,
                      start_valid, {len(population) - len(direction_seeds) + i: s
                                    for i, s in enumerate(direction_seeds)},
                      admin.enrolment_code(len(population)))
        try:
            records = fleet.run()
        finally:
            with suppress(FleetError):  # keep the first error
                admin.training("stop")
        final_model = admin.model()
        (run_dir / "model.safetensors").write_bytes(final_model)
        final_valid = None
        if config.final_eval:
            final_valid = Evaluator(admin.tokenizer_json(), load_split("valid"),
                                    config.workers)(final_model)
        status = admin.status()
    summary = _summary(config, applied, population, records, final_valid, status,
                       time.time() - started, server_url, machine())
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_rounds(records, run_dir / "fleet.png", title or _title(config, len(population)))
    return summary


def _title(config: FleetConfig, population: int) -> str:
    dp = (f"DP z={config.noise_multiplier:g}, C={config.clip_norm:g}"
          if config.noise_multiplier else "no DP")
    return (f"{config.devices_per_round} of {population} devices per round, "
            f"{config.server_optimizer}, {dp}")


def _summary(config: FleetConfig, applied: dict, population: list[Device], records: list[dict],
             final_valid: dict | None, status: dict, seconds: float, url: str,
             machine: dict) -> dict[str, Any]:
    done = [r for r in records if r["round"] > 0]
    counts = np.array([len(d.messages) for d in population])
    last_eval = next((r["valid"] for r in reversed(records) if r.get("valid")), None)
    return {
        "config": asdict(config), "server": url, "round_settings": applied,
        "population": len(population), "num_params": status["model"]["num_params"],
        "rounds_run": len(done),
        "rounds_closed": sum(r["state"] == "closed" for r in done),
        "reports": sum(r["reports"] for r in done),
        "wall_seconds": round(seconds, 1),
        "round_seconds": round(sum(r.get("round_seconds", 0.0) for r in done), 1),
        "machine": machine,
        "start_valid": records[0].get("valid"), "last_valid": last_eval,
        "final_valid": final_valid,
        "epsilon": done[-1]["epsilon"] if done else None,  # against the server
        "epsilon_model_users": done[-1].get("epsilon_model_users") if done else None,
        "epsilon_if_sampled": done[-1].get("epsilon_if_sampled") if done else None,
        "delta": config.delta, "noise_multiplier": config.noise_multiplier,
        "privacy": status["privacy"],
        "sampling": (SAMPLING[config.check_in]
                     + (" (here: told to assume sampling)" if config.assume_sampling else "")),
        "heavy_senders": (f"each round a device trains on a random sample of at most "
                          f"{config.max_examples} of its messages; "
                          f"{int((counts > config.max_examples).sum())} of {len(population)} "
                          f"senders have more (the largest "
                          f"{int(counts.max()) if len(counts) else 0})"),
        "dropout": (f"a checked-in device drops out with probability {config.dropout}: it is "
                    "unplugged at a random batch of its local training and sends nothing"),
    }


# --- command line -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = FleetConfig()
    p = argparse.ArgumentParser(prog="python -m keyboard_app.simulate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--server", metavar="URL", help="use this server (needs --admin-token); "
                   "default: start one with SQLite in the run folder")
    p.add_argument("--admin-token", default=os.environ.get("PK_ADMIN_TOKEN"),
                   help="the server's admin token (default: $PK_ADMIN_TOKEN)")
    p.add_argument("--init-model", type=Path, default=PRETRAINED_MODEL,
                   help="start model of a server started here (default: %(default)s)")
    p.add_argument("--tokenizer", type=Path, default=TOKENIZER_PATH)
    p.add_argument("--run-dir", type=Path, default=None,
                   help="output folder (default: runs/fleet-<time>)")
    for name, kind, help_text in [
            ("rounds", int, None), ("devices_per_round", int, None),
            ("dropout", float, "chance a checked-in device stops before uploading"),
            ("local_epochs", float, None), ("client_lr", float, None),
            ("client_optimizer", str, "sgd | adam | adamw"), ("batch_size", int, None),
            ("max_examples", int, "each round, train on a random sample of at most M messages"),
            ("server_optimizer", str, "fedavg | fedavgm | fedadam"), ("server_lr", float, None),
            ("server_momentum", float, None), ("clip_norm", float, None),
            ("noise_multiplier", float, "0: no differential privacy"), ("delta", float, None),
            ("min_reports", int, "fewest reports a round may close with at its deadline; "
             "default: devices per round"),
            ("overcommit", float, "default: 1.3, more with dropout"),
            ("round_timeout", float, "the server's round deadline in seconds"),
            ("eval_every", int, "evaluate on valid every K rounds (0: never)"),
            ("eval_senders", int, "valid senders in those evaluations (0: all)"),
            ("workers", int, None), ("seed", int, None),
            ("population", int, "a seeded random N federated senders (default: all)"),
            ("max_minutes", float, "stop after the round that passes this many minutes")]:
        default = getattr(d, name)
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=default,
                       help=(help_text + " " if help_text else "") + f"(default: {default})")
    p.add_argument("--server-lr-schedule", choices=SCHEDULES, default=d.server_lr_schedule,
                   help="cosine: the server lr falls to 0 over --rounds model versions, counted "
                        "from the server's version 0 (default: %(default)s)")
    p.add_argument("--check-in", choices=CHECK_INS, default=d.check_in,
                   help="which devices check in first each round: a uniform random order, "
                        "or weighted by how many messages each has (default: %(default)s)")
    p.add_argument("--weighting", choices=("uniform", "examples"), default=None,
                   help="how the server weights reports (default: examples without noise; "
                        "the server uses uniform whenever there is noise)")
    p.add_argument("--assume-sampling", action="store_true",
                   help="let the server's accountant assume Poisson sampling at rate "
                        "devices per round / population (amplification)")
    p.add_argument("--secure-aggregation", action=argparse.BooleanOptionalAction,
                   default=d.secure_aggregation,
                   help="rounds with secure aggregation: the server learns only each round's "
                        "sum (a round's devices then run as threads of this process); "
                        "--no-secure-aggregation: plain rounds, where each device adds the "
                        "full noise z*C itself (default: on)")
    p.add_argument("--no-final-eval", dest="final_eval", action="store_false",
                   help="skip the evaluation on all of valid at the end")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    names = {f for f in FleetConfig.__dataclass_fields__}
    return FleetConfig(**{k: v for k, v in vars(args).items() if k in names})


def _privacy(summary: dict) -> str:
    eps, sampled = summary["epsilon"], summary["epsilon_if_sampled"]
    users = summary.get("epsilon_model_users")
    if not summary["noise_multiplier"] or eps is None:
        return "no privacy guarantee (no noise)"
    return (f"epsilon {eps:.2f} against the server, {users:.2f} against model users, at delta "
            f"{summary['delta']:g} (server accountant; assumes at most "
            f"{summary['privacy']['dishonest_share']:.0%} of a round's reports from devices "
            f"adding no noise, and an honest-but-curious server)"
            + (f"; {sampled:.2f} against the server if sampling were Poisson"
               if sampled is not None else ""))


def describe(summary: dict) -> str:
    """A few lines on how the run went."""
    def acc(valid: dict | None) -> str:
        if not valid:
            return "-"
        return (f"top-1 {valid['top1']:.2%}, top-3 {valid['top3']:.2%}, "
                f"perplexity {valid['perplexity']:.1f} ({valid['senders']} senders)")
    lines = [f"{summary['rounds_run']} rounds ({summary['rounds_closed']} closed), "
             f"{summary['reports']} reports from a population of {summary['population']}, "
             f"{summary['wall_seconds']:.0f} s",
             f"valid at the start: {acc(summary['start_valid'])}",
             f"valid at the end:   {acc(summary['final_valid'] or summary['last_valid'])}",
             "privacy: " + _privacy(summary)]
    return "\n".join(lines)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # `kill` ends a fleet as Ctrl-C does: workers and server too


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.server and not args.admin_token:
        print("error: --server needs --admin-token (or $PK_ADMIN_TOKEN)", file=sys.stderr)
        return 2
    run_dir = args.run_dir or ROOT / "runs" / f"fleet-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        summary = run_fleet(config, run_dir, server_url=args.server,
                            admin_token=args.admin_token, init_model=args.init_model,
                            tokenizer=args.tokenizer, progress=not args.quiet)
    except FleetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(describe(summary))
    print(f"wrote {run_dir}/rounds.jsonl, summary.json, fleet.png, model.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
