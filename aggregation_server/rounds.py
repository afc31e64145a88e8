"""The round life cycle (Bonawitz et al. 2019), with all state in the database.

open -> (target reached, or deadline with >= minimum reports) -> closing -> closed
open -> (deadline with < minimum reports, or training stopped)  -> abandoned

A check-in gets a task while the open round has capacity (target * overcommit), or
"come back after N seconds" (pace steering). An upload is checked completely before
anything is stored, then written to disk (fsync) and committed; only then acknowledged.
Exactly one process closes a round: the switch open -> closing is a compare-and-set under
a row lock (SQLite: the write lock), and it carries a lease so that another process
redoes the aggregation if the closer dies. Requests only store and read: deadlines,
closing, aggregation and opening the next round happen in `tick`, which each process's
round worker runs (`aggregation_server.worker`); time is the injected `clock`. What differs
between round kinds (training, evaluation) is the kind's policy (`strategy.RoundPolicy`):
this module asks the round's policy and never branches on the kind.
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from federated import protocol
from federated.clock import Clock, SystemClock

from aggregation_server import accounting, compressed
from aggregation_server.config import RoundConfig, Settings
from aggregation_server.db import Database, Device, ModelVersion, Round, ServerState, Task
from aggregation_server.enrolment import Enrolment
from aggregation_server.errors import ApiError
from aggregation_server.evaluation import EvaluationPolicy
from aggregation_server.liveness import Liveness
from aggregation_server.metrics import ServerMetrics
from aggregation_server.storage import BlobStore, sha256_hex
from aggregation_server.strategy import (CHARGED, AggregationUnavailable, FedAvgPolicy,
                                         RoundPolicy, StoredUpdate, Upload, rounds_done)
from aggregation_server.uploads import check_open, replay, target_reached
from aggregation_server.versions import build_version, initial_version

log = logging.getLogger("aggregation_server.rounds")
BACKOFF_MAX = 60.0  # seconds between retries of a failing aggregation, at most
HEARTBEAT_SECONDS = 5.0  # each process notes in the database that it is up, this often
OUTAGE_SECONDS = 15.0  # no process up for longer than this: an outage (deadlines move)


def backoff(settings: Settings, attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed aggregation: doubling, at most 60."""
    return min(BACKOFF_MAX, settings.aggregation_backoff_seconds * 2.0 ** (attempts - 1))


class RoundService:
    """Device enrolment, check-ins, uploads and the round life cycle."""

    def __init__(self, db: Database, blobs: BlobStore, settings: Settings,
                 metrics: ServerMetrics | None = None, clock: Clock | None = None,
                 policy: Callable[[RoundService], RoundPolicy] | None = None) -> None:
        """`policy` makes the training rounds' policy for this service (default: plain
        rounds only; the app wraps it in `secure.SecureAggregation`); evaluation rounds run
        `evaluation.EvaluationPolicy`."""
        self.db, self.blobs, self.settings = db, blobs, settings
        self.metrics = metrics or ServerMetrics()
        self.clock: Clock = clock or SystemClock()  # deadlines, leases, retries, timestamps
        self.policy: RoundPolicy = policy(self) if policy else FedAvgPolicy()  # training
        self.policies: dict[str, RoundPolicy] = {  # by kind; the first one due runs next
            "evaluate": EvaluationPolicy(self), "train": self.policy}
        self.liveness = Liveness(db, self.clock)
        self.enrolment = Enrolment(db, settings.enrol_rate_limit, settings.enrol_rate_seconds,
                                   self.clock)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.num_params = 0
        self.tokenizer_sha256 = ""
        self.wake_worker: Callable[[], None] = lambda: None  # set by the process's RoundWorker
        self._beat = -math.inf

    # ----- start-up -------------------------------------------------------------------
    def initialize(self) -> None:
        """Create the schema, the state row and model version 0 (from --init-model)."""
        self.db.create_schema()
        with self.db.write() as s:
            if not self.db.is_sqlite:
                s.execute(text("SELECT pg_advisory_xact_lock(7405342)"))
            state = s.get(ServerState, 1)
            explicit = self.settings.round
            if state is None:
                config = RoundConfig.from_dict(explicit)
                s.add(ServerState(id=1, training=self.settings.start_training,
                                  config=config.to_dict()))
            elif explicit:
                base = RoundConfig.from_dict(state.config)
                state.config = RoundConfig.from_dict(explicit, base).to_dict()
            if s.get(ModelVersion, 0) is None:
                s.add(initial_version(self.blobs, self.settings, self.clock()))
            elif self.settings.init_model:
                log.info("init_model_ignored", extra={"reason": "data dir has a model already"})
            latest = self._latest(s)
        self.shapes = self.blobs.shapes(latest.path)
        self.num_params = int(sum(math.prod(shape) for shape in self.shapes.values()))
        self.tokenizer_sha256 = sha256_hex(self.blobs.tokenizer_path().read_bytes())

    # ----- small queries --------------------------------------------------------------
    @staticmethod
    def _latest(s: Session) -> ModelVersion:
        return s.scalars(select(ModelVersion).order_by(ModelVersion.version.desc())
                         .limit(1)).one()

    def model_version(self, version: int | None = None) -> ModelVersion | None:
        """A stored model version (the latest if None)."""
        with self.db.read() as s:
            return self._latest(s) if version is None else s.get(ModelVersion, version)

    @staticmethod
    def _current(s: Session, lock: bool = False) -> Round | None:
        query = (select(Round).where(Round.state.in_(("open", "closing")))
                 .order_by(Round.id.desc()).limit(1))
        return s.scalars(query.with_for_update() if lock else query).first()

    @staticmethod
    def live_config(s: Session) -> RoundConfig:
        return RoundConfig.from_dict(s.get(ServerState, 1).config)

    def epsilon_max(self, s: Session, config: RoundConfig) -> dict[str, float]:
        """The largest epsilon any device has spent, against the server and against model
        users, at `config`'s delta."""
        charges: dict[str, list[tuple[float, float]]] = {}
        for device, z_server, z_users in s.execute(
                select(Task.device_id, Task.z_server, Task.z_model_users).where(CHARGED)):
            charges.setdefault(device, []).append((z_server, z_users))
        done = rounds_done(s)
        return {against: max((accounting.device_epsilon([c[i] for c in found], config, done)
                              for found in charges.values()), default=0.0)
                for i, against in enumerate(accounting.AGAINST)}

    def charge_task(self, task: Task, config: RoundConfig, now: float) -> None:
        """The server accepted this task's report: charge its device (kept if abandoned)."""
        cost = accounting.charge(config)
        task.charged_at, task.z_server, task.z_model_users = now, cost.server, cost.model_users

    def _round_epsilon(self, s: Session, r: Round) -> None:
        """Record the largest spend after round `r` ended (closed or abandoned)."""
        s.flush()
        spent = self.epsilon_max(s, RoundConfig.from_dict(r.config))
        r.epsilon_max, r.epsilon_max_model_users = spent["server"], spent["model_users"]

    def policy_of(self, r: Round) -> RoundPolicy:
        """The policy that runs round `r` (by its kind)."""
        return self.policies[r.kind]

    # ----- devices --------------------------------------------------------------------
    def device_for_token(self, token: str) -> str | None:
        with self.db.read() as s:
            return s.scalar(select(Device.id).where(
                Device.token_sha256 == sha256_hex(token.encode())))

    def checkin(self, device_id: str, kinds: tuple[str, ...] = ("train",)
                ) -> protocol.Checkin:
        """A task in the open round for this device, or when to come back and why not;
        `kinds`: the round kinds the device takes tasks in (training, evaluation)."""
        now = self.clock()
        with self.db.write() as s:
            r = self._current(s, lock=True)
            if r is None or r.state != "open" or now >= r.deadline or target_reached(r):
                return self._no_round(s, r, now)
            config = RoundConfig.from_dict(r.config)
            if r.kind not in kinds:
                return self._no_task(f"round {r.id} is a {r.kind} round; this device asked "
                                     f"only for {' or '.join(kinds)} tasks",
                                     self._pace(config, r, now))
            policy = self.policy_of(r)
            refusal = policy.select(s, r, config, device_id, now)
            if refusal:
                return self._no_task(refusal.reason, refusal.retry_after
                                     or self._pace(config, r, now))
            if s.get(Task, (r.id, device_id)) is None:
                s.add(Task(round_id=r.id, device_id=device_id, state="issued", issued_at=now,
                           noise_multiplier=config.noise_multiplier))
                policy.admit(s, r, config, device_id)
                r.tasks_issued += 1
            return self._task(s, r, config, device_id)

    def _no_round(self, s: Session, r: Round | None, now: float) -> protocol.NoTask:
        state = s.get(ServerState, 1)
        config = RoundConfig.from_dict(state.config)
        if r is not None and (r.state == "closing" or target_reached(r)):
            failing = f" (retrying after: {r.last_error})" if r.last_error else ""
            return self._no_task(f"round {r.id} is being aggregated{failing}",
                                 min(5.0, config.retry_after))
        if r is not None:
            return self._no_task(f"round {r.id} passed its deadline and is closing",
                                 min(5.0, config.retry_after))
        if not state.training:
            return self._no_task("training is stopped", config.retry_after)
        if state.blocked_reason:
            return self._no_task(f"no round can start: {state.blocked_reason}",
                                 config.retry_after)
        return self._no_task("no round is open yet", min(5.0, config.retry_after))

    @staticmethod
    def _no_task(reason: str, retry_after: float) -> protocol.NoTask:
        return protocol.NoTask(reason, retry_after)

    @staticmethod
    def _pace(config: RoundConfig, r: Round, now: float) -> float:
        """Come back around the round's end (at most `retry_after`), jittered to spread load."""
        left = max(r.deadline - now, 1.0)
        return min(left, config.retry_after) * random.uniform(0.8, 1.2)

    def _task(self, s: Session, r: Round, config: RoundConfig, device_id: str
              ) -> protocol.Task:
        model = s.get(ModelVersion, r.model_version)
        spec = compressed.spec_for(config, r.id, model.sha256, self.num_params)
        compact = compressed.compact_model(self.blobs, model)[1] if spec is not None else None
        return config.task(r.id, r.model_version, model.sha256, r.deadline, compression=spec,
                           model_compact_sha256=compact,
                           **self.policy_of(r).task_fields(s, r, config, device_id))

    # ----- uploads --------------------------------------------------------------------
    def submit(self, device_id: str, round_id: int, key: str, body: bytes,
               via: str = "update") -> protocol.Receipt:
        """Accept one report (`via`: the endpoint it came through, "update" or
        "evaluation"): the round's policy checks everything, then it is stored durably and
        committed; the round worker closes the round once it reached its target."""
        digest = sha256_hex(body)
        r, config, earlier = self.report_round(device_id, round_id, key, digest)
        if earlier is not None:
            return earlier
        with self.db.read() as s:
            spec = compressed.round_spec(s, r, config, self.num_params)
        taken = self.policy_of(r).accept(
            Upload(body, via, self.shapes, self.settings.max_update_bytes, spec), r, config)
        path = None if taken.blob is None else self.blobs.update_path(round_id, device_id,
                                                                       digest)
        if path is not None:
            self.blobs.write(path, taken.blob)

        def fill(task: Task) -> None:
            task.path, task.num_examples, task.metrics = path, taken.num_examples, taken.metrics
        try:
            response, reached = self.record_report(device_id, round_id, key, digest, config,
                                                   fill)
        except ApiError:
            with self.db.read() as s:
                winner = s.get(Task, (round_id, device_id))
                if path is not None and (winner is None or winner.path != path):
                    self.blobs.delete(path)
            raise
        log.info(f"{via}_accepted", extra={"round_id": round_id, "device_id": device_id,
                                           "reports": response.reports})
        if reached:
            self.wake_worker()
        return response

    def report_round(self, device_id: str, round_id: int, key: str, digest: str
                     ) -> tuple[Round, RoundConfig, protocol.Receipt | None]:
        """The round a device reports to and its config, and the stored answer if this is a
        retry of an accepted report; a 4xx if the round takes no report from it."""
        with self.db.read() as s:
            r, task = s.get(Round, round_id), s.get(Task, (round_id, device_id))
            if r is None:
                raise ApiError(404, "no_such_round", f"there is no round {round_id}")
            earlier = replay(task, key, digest, r)
            if earlier is None:
                check_open(r, task, self.clock())
            return r, RoundConfig.from_dict(r.config), earlier

    def record_report(self, device_id: str, round_id: int, key: str, digest: str,
                      config: RoundConfig, fill: Callable[[Task], None]
                      ) -> tuple[protocol.Receipt, bool]:
        """In one transaction: check again, count the report, charge its device and let
        `fill` store it in the task; (the answer, whether the round reached its target)."""
        with self.db.write() as s:
            r = s.get(Round, round_id, with_for_update=True, populate_existing=True)
            task = s.get(Task, (round_id, device_id), populate_existing=True)
            earlier = replay(task, key, digest, r)
            if earlier is not None:
                return earlier, False
            check_open(r, task, self.clock())
            r.reports += 1
            response = protocol.Receipt(round_id, r.reports)
            task.state, task.submitted_at = "submitted", self.clock()
            self.charge_task(task, config, task.submitted_at)
            task.idempotency_key, task.body_sha256 = key, digest
            task.response = response.to_json()  # a resend under the key gets it again
            fill(task)
            return response, r.reports >= r.target

    # ----- life cycle -----------------------------------------------------------------
    def tick(self) -> None:
        """Apply target, deadline and lease expiry; open the next round when none is. The
        round worker's job (`aggregation_server.worker`): no request calls it."""
        now = self.clock()
        self._heartbeat(now)
        with self.db.read() as s:
            r = self._current(s)
            training = s.get(ServerState, 1).training
        ended = r is None
        if r is not None and r.state == "open":
            verdict = self.policy_of(r).should_close(r, now)
            if verdict is not None and verdict.close:
                ended = self.close_round(r.id, verdict.reason)
            elif verdict is not None:
                ended = self.abandon_round(r.id, verdict.reason, expired_only=verdict.expired)
        elif r is not None and ((r.lease_until or 0.0) < now
                                or not self.liveness.alive(r.lease_owner)):
            ended = self.close_round(r.id)
        if training and ended:
            self.open_round()

    def _heartbeat(self, now: float) -> None:
        """Note that a process is up; after an outage (no process up for OUTAGE_SECONDS),
        move the open round's deadlines by the outage plus `restart_grace_seconds`, so that
        downtime does not eat protocol time and devices can resend. Only a process's first
        beat can see an outage: while it runs, the server was up (however long its ticks)."""
        if now - self._beat < HEARTBEAT_SECONDS:
            return
        first, self._beat = self._beat == -math.inf, now
        with self.db.write() as s:
            state = s.get(ServerState, 1, with_for_update=True, populate_existing=True)
            gap = now - (state.heartbeat or now)
            state.heartbeat = max(state.heartbeat or now, now)
            r = self._current(s, lock=True) if first and gap >= OUTAGE_SECONDS else None
            if r is None or r.state != "open":
                return
            extra = gap + self.settings.restart_grace_seconds
            r.deadline += extra
            self.policy_of(r).postpone(s, r, extra)
        log.warning("outage_bridged", extra={"round_id": r.id, "outage_seconds": round(gap, 1),
                                             "deadlines_moved_by": round(extra, 1)})

    def open_round(self) -> int | None:
        """Open a round if training runs, none is open and the privacy budget allows one."""
        now = self.clock()
        with self.db.write() as s:
            state = s.get(ServerState, 1, with_for_update=True, populate_existing=True)
            if not state.training or self._current(s) is not None:
                return None
            config = RoundConfig.from_dict(state.config)
            latest = self._latest(s)
            kind, policy = next((kind, policy) for kind, policy in self.policies.items()
                                if policy.due(s, config, latest))
            config = policy.round_config(config)
            reason = accounting.round_refusal(config, rounds_done(s)) or \
                compressed.refusal(config, self.num_params)
            if reason is None and not policy.supports(config):
                reason = "secure aggregation is configured but not available on this server"
            if reason:
                if state.blocked_reason != reason:
                    state.blocked_reason = reason
                    log.warning("round_refused", extra={"reason": reason})
                return None
            state.blocked_reason = None
            r = Round(state="open", model_version=latest.version, kind=kind,
                      config=config.to_dict(), opened_at=now, deadline=now + config.round_seconds,
                      target=config.target_reports, minimum=config.min_reports,
                      capacity=config.capacity, tasks_issued=0, reports=0, attempts=0,
                      evaluation=policy.plan(s, config, latest))
            s.add(r)
            s.flush()
            policy.open(s, r, config)
            round_id = r.id
        if config.compression != "none":  # the int8 download tasks name, made outside the lock
            compressed.compact_model(self.blobs, latest)
        log.info("round_opened", extra={"round_id": round_id, "target": config.target_reports,
                                        "kind": kind})
        return round_id

    def close_round(self, round_id: int, reason: str | None = None) -> bool:
        """Aggregate the round if this process wins the open -> closing switch (or takes over
        a lapsed lease); a failure is retried with backoff (`_aggregation_failed`)."""
        now = self.clock()
        with self.db.write() as s:
            r = s.get(Round, round_id, with_for_update=True, populate_existing=True)
            dead = r.state == "closing" and not self.liveness.alive(r.lease_owner, s)
            lapsed = r.state == "closing" and ((r.lease_until or 0.0) < now or dead)
            if not (r.state == "open" or lapsed):
                return False
            if dead:
                log.warning("lease_takeover", extra={"round_id": round_id,
                                                     "dead_owner": r.lease_owner})
            policy = self.policy_of(r)
            if r.state == "open":
                r.new_version = self._latest(s).version + 1 if policy.makes_version else None
                r.reason = reason
            r.state, r.lease_until = "closing", now + self.settings.lease_seconds
            r.lease_owner = self.liveness.owner
            r.attempts += 1
            attempts = r.attempts
        try:
            with self.metrics.aggregation.time():
                policy.close(self, round_id)
            return True
        except Exception as err:  # noqa: BLE001 - logged, retried with backoff, or abandoned
            log.exception("aggregation_failed", extra={"round_id": round_id,
                                                       "attempt": attempts})
            self._aggregation_failed(round_id, err)
            return False

    def _aggregation_failed(self, round_id: int, err: Exception) -> None:
        """Keep the round's inputs and retry after a backoff, within the configured window;
        abandon it only when the window is over or the failure cannot go away by waiting."""
        now, window = self.clock(), self.settings.aggregation_retry_seconds
        why = f"{type(err).__name__}: {err}"
        with self.db.write() as s:
            r = s.get(Round, round_id, with_for_update=True, populate_existing=True)
            if r.state != "closing":
                return
            since = now if r.failing_since is None else r.failing_since
            permanent = isinstance(err, AggregationUnavailable)
            if not permanent and now - since < window:
                wait = backoff(self.settings, r.attempts)
                r.failing_since, r.last_error, r.lease_until = since, why, now + wait
                r.lease_owner = None  # nobody works on it until the backoff is over
                log.warning("aggregation_retry", extra={
                    "round_id": round_id, "attempt": r.attempts, "retry_in": wait,
                    "error": why, "gives_up_at": since + window})
                return
        reason = (f"aggregation failed: {err}" if permanent else
                  f"aggregation failed for {now - since:.0f} s, over the "
                  f"{window:.0f} s retry window (aggregation_retry_seconds): {why}")
        self.abandon_round(round_id, reason, states=("closing",))

    def make_version(self, round_id: int, policy: RoundPolicy) -> None:
        """Close a training round: `policy`'s next model from its updates, recorded as the
        round's new version (`FedAvgPolicy.close`)."""
        started = time.perf_counter()
        with self.db.read() as s:
            r = s.get(Round, round_id)
            tasks = s.scalars(select(Task).where(Task.round_id == round_id,
                                                 Task.state == "submitted")
                              .order_by(Task.device_id)).all()
            base, prev_optimizer = s.get(ModelVersion, r.model_version), \
                self._latest(s).optimizer_path
        config = RoundConfig.from_dict(r.config)
        updates = [StoredUpdate(t.device_id, t.path, t.num_examples, t.metrics or {})
                   for t in tasks]
        new = build_version(self.blobs, self.shapes, round_id, config, updates, base,
                            r.new_version, prev_optimizer, policy)
        with self.db.write() as s:
            r = s.get(Round, round_id, with_for_update=True, populate_existing=True)
            if r.state != "closing":
                return  # another process finished it first
            if s.get(ModelVersion, new.version) is None:
                s.add(new.row(round_id, self.clock()))
            r.metrics = new.metrics
            self.finish(s, r)
        self.blobs.delete_round_updates(round_id)
        self._retain(new.version)
        log.info("round_closed", extra={"round_id": round_id, "version": new.version,
                                        "reports": len(updates), "sha256": new.sha256,
                                        "seconds": round(time.perf_counter() - started, 3)})

    def finish(self, s: Session, r: Round) -> None:
        """Mark the closing round `r` closed (its result recorded by its policy): its reports
        aggregated and forgotten, its lease released, the spend after it recorded."""
        s.execute(update(Task).where(Task.round_id == r.id, Task.state == "submitted")
                  .values(state="aggregated", path=None, metrics=None, num_examples=None))
        r.state, r.closed_at, r.lease_until = "closed", self.clock(), None
        r.failing_since = r.last_error = r.lease_owner = None
        self._round_epsilon(s, r)

    def _retain(self, latest: int) -> None:
        """Delete the model files (their int8 forms and optimizer state too) of versions
        older than the latest `keep_versions`, keeping version 0; their rows (sha256,
        provenance) stay."""
        keep = self.settings.keep_versions
        if keep <= 0:
            return
        with self.db.read() as s:
            old = list(s.scalars(select(ModelVersion).where(
                ModelVersion.version > 0, ModelVersion.version <= latest - keep)))
            paths = [p for v in old for p in (v.path, v.optimizer_path) if p]
        for path in paths:
            self.blobs.delete(path)
        for version in old:
            compressed.delete_compact(self.blobs, version)

    def abandon_round(self, round_id: int, reason: str, expired_only: bool = False,
                      states: tuple[str, ...] = ("open",)) -> bool:
        """Drop the round and its updates; `expired_only` re-checks the deadline rule."""
        now = self.clock()
        with self.db.write() as s:
            r = s.get(Round, round_id, with_for_update=True, populate_existing=True)
            if r.state not in states:
                return False
            if expired_only and (now < r.deadline or r.reports >= r.minimum):
                return False
            r.state, r.reason, r.closed_at, r.lease_until = "abandoned", reason, now, None
            s.execute(update(Task).where(Task.round_id == round_id,
                                         Task.state.in_(("issued", "submitted")))
                      .values(state="discarded", path=None, metrics=None, num_examples=None))
            self._round_epsilon(s, r)  # accepted reports stay charged
        self.blobs.delete_round_updates(round_id)
        log.warning("round_abandoned", extra={"round_id": round_id, "reason": reason})
        return True

    # ----- admin ----------------------------------------------------------------------
    def set_training(self, running: bool) -> None:
        """Start rounds, or stop: no new rounds, and the open one is abandoned."""
        with self.db.write() as s:
            state = s.get(ServerState, 1, with_for_update=True, populate_existing=True)
            state.training = running
            r = self._current(s)
        log.info("training_" + ("started" if running else "stopped"))
        if running:
            self.open_round()
        elif r is not None:
            self.abandon_round(r.id, "training stopped by an administrator")

    def set_config(self, changes: dict) -> RoundConfig:
        """Apply changes to the live round config (used from the next round on)."""
        with self.db.write() as s:
            state = s.get(ServerState, 1, with_for_update=True, populate_existing=True)
            config = RoundConfig.from_dict(changes, RoundConfig.from_dict(state.config))
            if not self.policy.supports(config):
                raise ApiError(400, "unavailable",
                               "secure_aggregation: not available on this server yet")
            state.config = config.to_dict()
            state.blocked_reason = None
        log.info("config_changed", extra={"changes": changes})
        return config
