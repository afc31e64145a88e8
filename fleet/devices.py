"""One simulated phone's turn in a round, as it runs in a worker (a process or a thread):
the real device runtime with the phone's history, its seeds, and its dropout."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data import Device
from federated.protocol import Task
from keyboard_app.privacy_policy import DevicePolicy


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
    kinds: tuple[str, ...] = ("train",)  # a `valid` sender's phone only evaluates
    compact_downloads: bool = False  # int8 model downloads (with compressed uploads)


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
    from keyboard_app.local_training import run_task
    from keyboard_app.runtime import DeviceRuntime
    started = time.perf_counter()
    eligibility = Eligibility(EligibilitySettings(idle_seconds=0, min_new_messages=0),
                              battery=UnplugProbe(job.unplug_after))
    train = Timed(run_task if job.direction_seed is None else direction_update(job.direction_seed))
    runtime = DeviceRuntime(job.data_dir, job.url, history=_history(job.index),
                            eligibility=eligibility, cache_dir=job.cache_dir, load_model=False,
                            train_seed=job.train_seed, policy=job.policy,
                            enrolment_code=job.enrolment_code, kinds=job.kinds,
                            rng=np.random.default_rng(job.noise_seed),
                            compact_downloads=job.compact_downloads, local_update=train)
    try:
        step = runtime.run_once()
        status = runtime.status()
    finally:
        runtime.client.close()
    return {"index": job.index, "outcome": step.outcome, "detail": step.detail,
            "round_id": status.last_round_id if step.outcome == "uploaded" else None,
            "local_loss": status.last_loss if step.outcome == "uploaded" else None,
            "upload_bytes": status.last_update_bytes if step.outcome == "uploaded" else None,
            "seconds": round(time.perf_counter() - started, 3),
            "train_seconds": round(train.seconds, 3)}


class Timed:
    """A device's local update (`run_task` or a canary's), timed: `seconds` it took."""

    def __init__(self, local_update: Any) -> None:
        self.local_update, self.seconds = local_update, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.local_update(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def direction_update(direction_seed: int):
    """A canary device's round for the one-run empirical epsilon (`privacy_audit.empirical`):
    instead of training, send the seed's fixed random direction of norm C, with the noise
    the device's policy sized, like any other update (same signature as `run_task`)."""
    def run(task: Task, global_bytes: bytes, tokenizer: Any, messages: list[str],
            **options: Any):
        from federated.wire import tensors_from_bytes
        from keyboard_app.local_training import LocalUpdate, make_update
        from model.train import TrainResult
        from privacy_audit.empirical import direction
        tensors, _ = tensors_from_bytes(global_bytes)
        delta = direction(direction_seed, {k: v.shape for k, v in tensors.items()},
                          task.clip_norm)
        update, prenorm = make_update(delta, task, 1, options["noise_stddev"],
                                      options.get("rng"))
        return LocalUpdate(update, prenorm, TrainResult(steps=1, mean_loss=0.0))
    return run

