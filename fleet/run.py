"""A fleet's run: the server, the worker pool and the evaluator set up, then the loop of
rounds (each round's check-ins dispatched to the pool until its target is met)."""
from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import sys
import time
from collections import Counter
from concurrent.futures import (FIRST_COMPLETED, Future, ProcessPoolExecutor,
                                ThreadPoolExecutor, wait)
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from data import Device, load_split
from federated import privacy
from fleet import FleetError, report
from fleet.admin import ServerAdmin
from fleet.config import FleetConfig
from fleet.devices import DeviceJob, device_round, init_worker, worker_ready
from fleet.evaluation import Evaluator, agreement, federated_figures, held_out
from fleet.plots import plot_rounds
from fleet.population import (check_in_order, choose_population, choose_valid,
                              with_audit_devices)
from fleet.server_process import ServerProcess
from model.paths import SHIPPED_MODEL, SHIPPED_TOKENIZER

log = logging.getLogger(__name__)
logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's notes on fractional orders


@dataclass
class Fleet:
    """The simulation loop: rounds of check-ins dispatched to worker processes.

    The learning curve is federated evaluation: every `eval_every`-th model version the
    server opens an evaluation round, and the phones of `valid` senders (`evaluators`,
    workers' devices after the population) score it on their own messages and send noised
    sums; the server never reads `valid` text. Each such record also holds the central
    evaluation (`model.evaluate`, by the simulation, not the server) of the same version on
    the same words, and their agreement.
    """

    config: FleetConfig
    run_dir: Path
    admin: ServerAdmin
    url: str
    population: list[Device]
    pool: ProcessPoolExecutor
    evaluator: Evaluator | None
    progress: bool = True
    evaluators: list[Device] = field(default_factory=list)  # valid senders' phones
    direction_seeds: dict[int, int] = field(default_factory=dict)  # population index -> seed
    enrolment_code: str = ""
    records: list[dict] = field(default_factory=list)

    def run(self) -> list[dict]:
        """All rounds (or until `max_minutes`); one record per round, round 0 the start."""
        from tqdm import tqdm
        cfg, started = self.config, time.time()
        current = self.admin.status().get("round") or {}
        last_id = int(current.get("id") or 0) - 1
        start = self._record_start()
        last_id = self._evaluate_into(start, 0, last_id)
        self._keep(start)
        with tqdm(total=cfg.rounds, desc=self.run_dir.name, unit="round", file=sys.stderr,
                  disable=not self.progress, dynamic_ncols=True) as bar:
            for k in range(1, cfg.rounds + 1):
                record = self._round(k, last_id, started)
                last_id = record["round_id"]
                if record["new_version"] is not None and cfg.eval_every and \
                        record["new_version"] % cfg.eval_every == 0:  # the server's rule
                    last_id = self._evaluate_into(record, k, last_id)
                self._keep(record)
                bar.update(1)
                bar.set_postfix(self._postfix(record))
                if cfg.max_minutes and time.time() - started > 60 * cfg.max_minutes \
                        and k < cfg.rounds:
                    log.warning("stopping after round %d: past %g minutes", k, cfg.max_minutes)
                    break
        self._evaluate_final(last_id)
        return self.records

    def _evaluate_final(self, last_id: int) -> None:
        """Have the valid phones score the final version too when the server's rule (every
        `eval_every`-th version) skipped it: the operator's way, by setting evaluate_every
        to 1 for one round (the server then opens an evaluation of the latest version)."""
        last = next((r for r in reversed(self.records) if r.get("new_version") is not None),
                    None)
        if not self.config.eval_every or not self.evaluators or last is None or \
                "valid" in last or last["new_version"] % self.config.eval_every == 0:
            return
        self.admin.configure({"evaluate_every": 1})
        self._evaluate_into(last, last["round"], last_id)  # `last` is in self.records
        lines = "".join(json.dumps(record) + "\n" for record in self.records)
        (self.run_dir / "rounds.jsonl").write_text(lines)  # with the final version's figures

    def _record_start(self) -> dict:
        return {"round": 0, "round_id": None, "state": "start", "reports": 0,
                "wall_seconds": 0.0, "epsilon": 0.0 if self.config.noise_multiplier else None,
                "delta": self.config.delta}

    def _keep(self, record: dict) -> None:
        """Add a finished round's record, and append it to rounds.jsonl at once."""
        self.records.append(record)
        with open(self.run_dir / "rounds.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    @staticmethod
    def _postfix(record: dict) -> dict:
        out = {"reports": record["reports"]}
        if (record.get("valid") or {}).get("top1") is not None:
            out["top1"] = f"{record['valid']['top1']:.2%}"
        if record.get("epsilon") is not None:
            out["eps"] = f"{record['epsilon']:.2f}"
        return out

    def _job(self, k: int, index: int, dropped: bool, u: float,
             kinds: tuple[str, ...] = ("train",)) -> DeviceJob:
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
                         self.enrolment_code, kinds, cfg.compression != "none")

    def _dispatch(self, r: dict, jobs: list[DeviceJob], success: str
                  ) -> tuple[list[dict], list[int], Counter]:
        """Hand `jobs` to the pool in order until the round's target of `success` outcomes
        is met (or its tasks are all handed out); (results, indices checked in, outcomes)."""
        pending: dict[Future, int] = {}
        outcomes, results, checked_in, pos = Counter(), [], [], 0
        while True:
            while (pos < len(jobs) and outcomes[success] + len(pending) < r["target"]
                   and len(checked_in) - outcomes["no-task"] < r["capacity"]):
                pending[self.pool.submit(device_round, jobs[pos])] = jobs[pos].index
                checked_in.append(jobs[pos].index)
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
                if result["outcome"] not in (success, "interrupted"):
                    log.warning("device %d: %s (%s)", result["index"], result["outcome"],
                                result["detail"])
        if outcomes[success] < r["minimum"]:  # it would be abandoned at the deadline anyway
            self.admin.training("stop")
            self.admin.training("start")
        return results, checked_in, outcomes

    def _round(self, k: int, after: int, started: float) -> dict:
        """Dispatch check-ins until the target is met; wait for the round to finish."""
        cfg = self.config
        r = self.admin.open_round(after)
        if r.get("kind", "train") != "train":
            raise FleetError(f"round {r['id']} is a {r['kind']} round, a training one was due")
        round_started = time.time()
        rng = np.random.default_rng([cfg.seed, k])
        order = check_in_order(self.population, cfg.check_in, rng)
        drops, where = rng.random(len(order)) < cfg.dropout, rng.random(len(order))
        jobs = [self._job(k, int(index), bool(drops[i]), float(where[i]))
                for i, index in enumerate(order)]
        results, checked_in, outcomes = self._dispatch(r, jobs, "uploaded")
        done_round, status = self.admin.finished_round(
            r["id"], timeout=max(r["deadline"] - time.time(), 0) + 120)
        return self._round_record(k, done_round, status, results, checked_in, outcomes,
                                  round_started, started)

    def _evaluate_into(self, record: dict, k: int, after: int) -> int:
        """Run the evaluation round the server opened after round `after` (if evaluation
        is on): the record gets its federated figures ("valid"), the central evaluation of
        the same version on the same words ("valid_central") and their agreement. Returns
        the last round id."""
        if not self.config.eval_every or not self.evaluators:
            return after
        r = self.admin.open_round(after)
        if r.get("kind") != "evaluate":
            raise FleetError(f"round {r['id']} is a training round; an evaluation was due")
        offset, started = len(self.population), time.time()
        # the same order every time: the same phones score every version, on the same words
        order = np.random.default_rng([self.config.seed, 2**20]).permutation(
            len(self.evaluators))
        jobs = [self._job(k, offset + int(i), False, 0.0, ("evaluate",)) for i in order]
        results, _, outcomes = self._dispatch(r, jobs, "evaluated")
        done_round, _ = self.admin.finished_round(
            r["id"], timeout=max(r["deadline"] - time.time(), 0) + 120)
        result = (done_round.get("evaluation") or {}).get("result")
        record["evaluation_round"] = {"round_id": r["id"], "state": done_round["state"],
                                      "outcomes": dict(outcomes),
                                      "seconds": round(time.time() - started, 2)}
        if result is None:
            return r["id"]
        record["valid"] = federated_figures(result)
        reported = [self.evaluators[x["index"] - offset] for x in results
                    if x["outcome"] == "evaluated"]
        if self.evaluator is not None:
            words = held_out(reported, self.config.eval_max_words)
            record["valid_central"] = self.evaluator.on(
                self.admin.model(record["valid"]["model_version"]), words)
            record["valid_agreement"] = agreement(record["valid"], record["valid_central"])
        return r["id"]

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
            "train_seconds": round(sum(x["train_seconds"] for x in results), 2),
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



def run_fleet(config: FleetConfig, run_dir: Path, *, server_url: str | None = None,
              admin_token: str | None = None, init_model: Path = SHIPPED_MODEL,
              tokenizer: Path = SHIPPED_TOKENIZER, senders: list[str] | None = None,
              progress: bool = True, title: str | None = None,
              extra_messages: dict[str, list[str]] | None = None,
              direction_seeds: list[int] = ()) -> dict[str, Any]:
    """Run the fleet against `server_url` (or a server started in `run_dir/server`).

    The learning curve is federated evaluation by `valid` senders' phones (`Fleet`). A
    privacy audit adds `extra_messages` (sender -> canary messages) to
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
    evaluators = choose_valid(config) if config.eval_every else []
    phones = population + evaluators  # the workers' devices: trainers, then evaluators
    started = time.time()
    with ExitStack() as stack:
        if config.secure_aggregation:  # a round's devices go through the phases together
            # one BLAS thread per device, as on a phone (keyboard_app/__main__.py): threads
            # that each call a 2-thread OpenBLAS at once trained several times slower
            stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
            init_worker(phones, str(run_dir / "logs"))
            pool = stack.enter_context(ThreadPoolExecutor(
                math.ceil(settings["target_reports"] * settings["overcommit"])))
        else:
            os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # workers: one BLAS thread each
            pool = stack.enter_context(ProcessPoolExecutor(
                config.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker, initargs=(phones, str(run_dir / "logs"))))
        warming = [pool.submit(worker_ready, 0.5) for _ in range(config.workers)]  # meanwhile:
        if server_url is None:
            for path in (init_model, tokenizer):
                if not Path(path).is_file():
                    raise FleetError(f"The start model {path} was not found. Give an existing "
                                     "checkpoint and its tokenizer with --init-model and "
                                     "--tokenizer.")
            server = stack.enter_context(ServerProcess(run_dir / "server", {
                "start_training": False, "tick_seconds": 0.5, "log_level": "INFO",
                "enrol_rate_limit": 1_000_000,  # the whole fleet is on loopback
                "init_model": str(init_model), "tokenizer": str(tokenizer)}))
            server_url, admin_token = server.url, server.admin_token
        # on the way out, first stop handing devices out (the server must outlive their jobs)
        stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        admin = ServerAdmin(server_url, admin_token)
        applied = admin.configure(settings)
        evaluator = None
        if config.eval_every or config.final_eval:
            evaluator = Evaluator(admin.tokenizer_json(), evaluators, config.workers)
        for future in warming:  # the workers' start-up is not counted in round 1
            future.result()
        fleet = Fleet(config, run_dir, admin, server_url, population, pool, evaluator, progress,
                      evaluators, {len(population) - len(direction_seeds) + i: s
                                   for i, s in enumerate(direction_seeds)},
                      admin.enrolment_code(len(phones)))
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
    summary = report.summarise(config, applied, population, records, final_valid, status,
                               time.time() - started, server_url, machine())
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_rounds(records, run_dir / "fleet.png",
                title or report.title(config, len(population)))
    return summary

