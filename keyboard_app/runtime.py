"""The device loop shared by the keyboard app, the headless device and the fleet simulator.

enrol once -> fetch the global model (ETag) -> when eligible, check in -> on a task: check
it against the device's privacy policy and its privacy ledger (refused: nothing trained,
nothing sent) -> train locally, clip, add the noise the device sizes itself, record it in
the ledger, upload -> otherwise wait as long as the server asks. Without a
server the device keeps predicting with its cached model and tries again with back-off.
In a secure-aggregation round the update is sent only masked, through the protocol's phases
(`keyboard_app.secure_upload`): that pass blocks, polling, until the round is done.

`run_once()` does one pass and says how long to wait before the next; `start()` runs
passes in a background thread until `stop()`. Nothing here imports Kivy.
"""
from __future__ import annotations

import json
import logging
import random
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from device_model.checkpoint import CheckpointError, checkpoint_meta, weights_from_bytes
from device_model.files import write_atomic
from device_model.lstm import NumpyLSTM
from device_model.tokenizer import DeviceTokenizer, TokenizerError
from federated import evaluation as fed_eval
from federated.clock import Clock, SystemClock
from federated.compression import CompressionError
from federated.privacy import composed_epsilon
from federated.protocol import TASK_KINDS, NoTask, PrivacyStatus, Receipt, Task
from federated.secagg import flatten
from federated.wire import Update, WireError, encode_compressed_update
from keyboard_app.client import ModelBlob, ServerRejected, ServerUnavailable, SyncClient
from keyboard_app.eligibility import Eligibility
from keyboard_app.evaluation_task import run_evaluation
from keyboard_app.history import HistoryStore
from keyboard_app.ledger import FILE_NAME as LEDGER_FILE
from keyboard_app.ledger import PrivacyLedger
from keyboard_app.local_training import example_limit, run_task
from keyboard_app.privacy_policy import REASONS, DevicePolicy, PolicyRefusal, RoundTerms
from keyboard_app.secure_upload import SecureRoundError, SecureUpload

log = logging.getLogger(__name__)
ModelListener = Callable[[NumpyLSTM, DeviceTokenizer, int], None]


@dataclass
class Step:
    """What one pass of the loop did, and how many seconds to wait before the next."""

    outcome: str  # offline | paused | not-eligible | no-task | uploaded | interrupted | ...
    wait: float
    detail: str = ""


@dataclass
class PendingReport:
    """A report (an update, or an evaluation report) sent until the server answers: after a
    failure the same bytes under the same Idempotency-Key (a freshly noised report of the
    same data would be a second release). Past its deadline, once the bytes may have left
    (`entry` set: the ledger counts the spend), the server's stored answer is still asked
    for ASK_AFTER_DEADLINE seconds: it may have taken them and lost its answer."""

    round_id: int
    deadline: float
    send: Callable[[str], Receipt]  # the request, given the Idempotency-Key
    record: Callable[[], int]  # the ledger entry of the spend, made when the bytes first leave
    accepted: Callable[[Receipt], Step]  # what follows the server's yes
    missed: str  # why the step is "missed" when the deadline passed
    sending: str | None = None  # the status detail while it is sent (None: unchanged)
    wait_for_idle: bool = False  # resent only while the device may train (updates)
    key: str = field(default_factory=lambda: str(uuid.uuid4()))
    entry: int | None = None


@dataclass
class DeviceStatus:
    """What the privacy panel shows."""

    state: str = "starting"
    detail: str = ""
    device_id: str | None = None
    model_version: int | None = None
    server_reachable: bool | None = None
    last_participation: float | None = None  # unix time
    last_round_id: int | None = None
    rounds_joined: int = 0
    last_update_bytes: int | None = None
    clip_norm: float | None = None
    noise_stddev: float | None = None
    epsilon: float | None = None  # the server's /v1/status: the most any device has spent
    epsilon_budget: float | None = None
    delta: float | None = None
    paused: bool = False
    last_loss: float | None = None  # local training loss (never sent)
    secure_aggregation: bool | None = None  # whether the last round it took part in used it
    refusal: str | None = None  # why the last task was refused, in plain words
    refused_round: int | None = None
    ledger_rounds: int = 0  # rounds whose server accepted this device's update (any server)
    ledger_sent: int = 0  # updates sent (an answer may never have come): all count in epsilon
    ledger_epsilon: float = 0.0  # this device's own epsilon, from its ledger
    epsilon_limit: float | None = None  # the policy's lifetime budget
    ledger_delta: float | None = None
    policy: dict | None = None  # the device policy's settings


ASK_AFTER_DEADLINE = 3600.0  # seconds a sent update's fate is still asked for after its deadline
_PERSISTED = ("last_participation", "last_round_id", "rounds_joined", "last_update_bytes",
              "clip_norm", "noise_stddev", "epsilon", "epsilon_budget", "delta",
              "secure_aggregation")


class DeviceRuntime:
    """One device: its history, eligibility, sync client, current model and the loop.

    Injectable for tests and simulations: `history` (anything with messages/count/clock),
    `eligibility`, `client`, `rng` (noise), `train_seed`, `cache_dir` (a model cache many
    devices share), `load_model=False` (don't build the model for prediction: saves memory
    when one process runs many devices), `policy` (default: the safe `DevicePolicy()`),
    `ledger` (default: the ledger file in `data_dir`), `local_update` (what a round
    computes, by default `run_task`; the privacy audit's canary devices send a fixed
    direction instead), `enrolment_code` (the operator's code, needed to enrol the first
    time), `kinds` (the round kinds it takes tasks in: training and federated evaluation;
    a simulation's held-out senders only evaluate), `clock` (the unix time round deadlines
    are compared with; tests pass a `federated.clock.ManualClock` and advance it).
    """

    def __init__(self, data_dir: str | Path, server_url: str, *,
                 history: HistoryStore | None = None, eligibility: Eligibility | None = None,
                 client: SyncClient | None = None, cache_dir: str | Path | None = None,
                 rng: np.random.Generator | None = None, train_seed: int | None = None,
                 poll_seconds: float = 30.0, max_backoff: float = 300.0,
                 load_model: bool = True, policy: DevicePolicy | None = None,
                 ledger: PrivacyLedger | None = None,
                 local_update: Callable = run_task,
                 enrolment_code: str | None = None,
                 kinds: tuple[str, ...] = TASK_KINDS,
                 compact_downloads: bool = False, clock: Clock = SystemClock()) -> None:
        self.data_dir = Path(data_dir)
        self.policy = policy or DevicePolicy()
        self.ledger = ledger or PrivacyLedger(self.data_dir / LEDGER_FILE)
        self.load_model = load_model
        self.client = client or SyncClient(server_url, self.data_dir, cache_dir=cache_dir,
                                           enrolment_code=enrolment_code)
        self.history = history or HistoryStore(self.data_dir / "history.sqlite")
        self.eligibility = eligibility or Eligibility()
        self.rng, self.train_seed = rng, train_seed
        self.local_update = local_update  # run_task; privacy audits' canary devices differ
        self.kinds = kinds
        self.compact_downloads = compact_downloads  # int8 models, where the server offers them
        self.clock = clock  # round deadlines
        self.poll_seconds, self.max_backoff = poll_seconds, max_backoff
        self.model: NumpyLSTM | None = None
        self.tokenizer: DeviceTokenizer | None = None
        self.blob: ModelBlob | None = None
        self._status = DeviceStatus(device_id=self.client.device_id)
        self._state_path = self.data_dir / "state.json"
        self._listeners: list[ModelListener] = []
        self._lock = threading.Lock()
        self._load_state()
        self._refresh_ledger()
        self._refused: tuple[str, int] | None = None  # (server, round) last refused
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._pending: PendingReport | None = None  # sent until answered, or its deadline
        self._load_cached_model()

    # --- public API --------------------------------------------------------------
    def status(self) -> DeviceStatus:
        """A snapshot of the device's state for the privacy panel."""
        with self._lock:
            snapshot = DeviceStatus(**asdict(self._status))
        snapshot.paused = self.eligibility.paused
        return snapshot

    def add_model_listener(self, listener: ModelListener) -> None:
        """Call `listener(model, tokenizer, version)` (on the loop's thread) on a new model."""
        self._listeners.append(listener)
        if self.model is not None and self.tokenizer is not None and self.blob is not None:
            listener(self.model, self.tokenizer, self.blob.version)

    def set_policy(self, policy: DevicePolicy) -> None:
        """Use a new privacy policy (the user tightened it) from the next task on."""
        self.policy = policy
        self._refresh_ledger()

    def note_typing(self) -> None:
        """The user is typing: the device is busy, and training in progress stops."""
        self.eligibility.note_activity()

    def pause(self) -> None:
        """Stop taking part in learning (training in progress stops) until resume()."""
        self.eligibility.pause()
        self._set(state="paused", detail="learning paused by the user")

    def resume(self) -> None:
        self.eligibility.resume()
        self._wake.set()

    def start(self) -> None:
        """Run the loop in a background thread."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="device-runtime", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the loop (training in progress stops at the next batch) and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
            self._thread = None

    def run_once(self) -> Step:
        """One pass: sync, and take part in a round if there is one and the device may."""
        if self.eligibility.paused:
            return self._step("paused", self.poll_seconds, "learning paused by the user")
        try:
            self._set(device_id=self.client.enrol())
            if self._pending:  # its sending failed: the same bytes, never a new report
                if self._pending.wait_for_idle and self.eligibility.should_stop():
                    return self._step("not-eligible", self.poll_seconds, "; ".join(
                        self.eligibility.check(10**9).reasons))
                return self._send_pending()
            self._refresh_model()
            return self._maybe_participate()
        except ServerUnavailable as err:
            return self._offline(err)
        except (ServerRejected, WireError, CompressionError, CheckpointError,
                TokenizerError) as err:
            log.warning("round skipped: %s", err)
            self._set(server_reachable=True)
            return self._step("rejected", self.poll_seconds, str(err))

    # --- the pass ----------------------------------------------------------------
    def _maybe_participate(self) -> Step:
        if self._budget_spent():
            return self._step("budget-spent", self.max_backoff, REASONS["budget_spent"])
        new = self.history.count(since=self._status.last_participation)
        verdict = self.eligibility.check(new)
        if not verdict.eligible:
            return self._step("not-eligible", max(verdict.wait, self.poll_seconds),
                              "; ".join(verdict.reasons))
        task = self.client.checkin(self._status.model_version, self.kinds)
        if isinstance(task, NoTask):
            return self._step("no-task", task.retry_after or self.poll_seconds, task.reason)
        if task.round_id == self._status.last_round_id:
            return self._step("no-task", self.poll_seconds, "no round open")
        if self._refused == (self.client.base, task.round_id):  # said once already
            return self._step("refused", self.poll_seconds, self._status.refusal or "")
        have, need = self.history.count(), task.min_examples
        if have < need:  # decided here: the server never learns it
            return self._step("not-eligible", self.poll_seconds,
                              f"{have} messages on this device; the round needs {need}")
        if task.kind not in self.kinds:  # e.g. a trainer told to evaluate
            return self._step("rejected", self.poll_seconds, f"round {task.round_id} "
                              f"is a {task.kind!r} task; this device takes only "
                              f"{' or '.join(self.kinds)} tasks")
        if task.kind == "evaluate":
            return self._evaluate(task)
        return self._participate(task)

    def _budget_spent(self) -> bool:
        """Whether one more round at the policy's least noise could pass its budget."""
        policy = self.policy
        if policy.epsilon_budget is None or policy.min_noise_multiplier <= 0:
            return False
        after = composed_epsilon([*self.ledger.multipliers(), policy.min_noise_multiplier],
                                 policy.delta)
        return after > policy.epsilon_budget

    def _accept(self, task: Task) -> RoundTerms | Step:
        """The round's terms under this device's policy and ledger, or the refusal's Step
        (recorded in the ledger; the panel shows its reason)."""
        try:
            terms = self.policy.terms(task)
            self.policy.check_budget(self.ledger.multipliers(), terms)
            return terms
        except PolicyRefusal as refusal:
            round_id = task.round_id
            log.warning("round %s refused by the device's privacy policy: %s", round_id,
                        refusal.detail)
            self.ledger.record_refusal(self.client.base, round_id, refusal)
            self._refused = (self.client.base, round_id)
            self._set(refusal=refusal.reason, refused_round=round_id)
            return self._step("refused", self.poll_seconds, refusal.reason)

    def _participate(self, task: Task) -> Step:
        terms = self._accept(task)  # before anything is downloaded or trained
        if isinstance(terms, Step):
            return terms
        compact = task.model_compact_sha256 if self.compact_downloads else None
        expected, blob = compact or task.model_sha256, self.blob
        if blob is None or blob.version != task.model_version or blob.sha256 != expected:
            blob = self.client.model(task.model_version, compact=bool(compact))
        if blob.sha256 != expected:
            raise ServerRejected(200, "model_mismatch", "the round's model sha256 differs "
                                                        "from the downloaded model")
        tokenizer = self._tokenizer_for(blob)
        train_by = task.secagg.advertise_by if task.secagg else task.deadline
        started = self.history.clock()
        messages = self.history.messages()  # run_task samples at most max_examples of them
        n = example_limit(task.train, len(messages))
        self._set(state="training", detail=f"round {task.round_id}: training on {n} of "
                                           f"{len(messages)} messages")
        log.info("round %s: training on %d of %d messages", task.round_id, n, len(messages))
        float_noise = 0.0 if terms.compression else terms.noise_stddev  # else integer noise
        local = self.local_update(task, blob.data, tokenizer, messages,
                                  noise_stddev=float_noise, seed=self.train_seed,
                                  rng=self.rng, should_stop=lambda: self._interrupted(train_by))
        if local is None:
            why = "; ".join(self.eligibility.check(10**9).reasons) or "stopped or past deadline"
            return self._step("interrupted", self.poll_seconds, f"training stopped: {why}")
        self._set(last_loss=local.result.mean_loss, clip_norm=terms.sent_clip_norm,
                  noise_stddev=terms.noise_stddev)
        if task.secagg:
            return self._secure_upload(task, local.update, started, terms,
                                       self._compress(local.update, terms))
        body = local.body if terms.compression is None else self._plain_body(local.update, terms)
        round_id = task.round_id

        def uploaded(receipt: Receipt) -> Step:
            self._set(last_participation=started, last_round_id=round_id,
                      rounds_joined=self._status.rounds_joined + 1,
                      last_update_bytes=len(body), secure_aggregation=False)
            self._refresh_privacy()
            self._save_state()
            log.info("round %s: uploaded %d bytes (reports now %s)", round_id, len(body),
                     receipt.reports)
            return self._step("uploaded", 0.0, f"round {round_id}")
        self._pending = PendingReport(
            round_id, task.deadline, lambda key: self.client.upload(round_id, body, key),
            lambda: self.ledger.record_sent(self.client.base, round_id, terms), uploaded,
            "update not delivered before deadline",
            sending=f"round {round_id}: sending {len(body)} bytes", wait_for_idle=True)
        return self._send_pending()

    def _send_pending(self) -> Step:
        """Send the pending report (`PendingReport`): the server's answer decides the ledger
        entry; a refusal is final, an unreachable server leaves it pending."""
        pending = self._pending
        late = self.clock() - pending.deadline
        if late > 0 and (pending.entry is None or late > ASK_AFTER_DEADLINE):
            self._pending = None
            return self._step("missed", self.poll_seconds, pending.missed)
        if pending.sending is not None:
            self._set(state="uploading", detail=pending.sending)
        if pending.entry is None:  # spent once the bytes leave, whatever the answer
            pending.entry = pending.record()
            self._refresh_ledger()
        try:
            receipt = pending.send(pending.key)
        except ServerRejected:
            self._pending = None
            self.ledger.mark(pending.entry, accepted=False)
            raise
        self._pending = None
        self.ledger.mark(pending.entry, accepted=True)
        self._refresh_ledger()
        return pending.accepted(receipt)

    def _compress(self, update: Update, terms: RoundTerms) -> np.ndarray | None:
        """A compressed secure round's words: the clipped update through the codec, with
        this device's discrete Gaussian noise (None in float32 rounds)."""
        if terms.compression is None:
            return None
        return terms.compression.encode(_flat(update), terms.noise_sigma, self._noise_rng())

    def _plain_body(self, update: Update, terms: RoundTerms) -> bytes:
        """A compressed plain round's upload: the clipped update with this device's full
        discrete Gaussian noise, requantized after the noise and deflated."""
        spec = terms.compression
        step, values = spec.encode_plain(_flat(update), terms.noise_sigma, self._noise_rng())
        return encode_compressed_update(update, step, values, spec.seed, spec.levels)

    def _noise_rng(self) -> np.random.Generator:
        return self.rng or np.random.default_rng(secrets.randbits(128))

    def _secure_upload(self, task: Task, update: Update, started: float,
                       terms: RoundTerms, words: np.ndarray | None = None) -> Step:
        """Run the secure-aggregation phases (blocking, polling until the round's deadline)."""
        round_id = task.round_id
        entry: list[int] = []

        def sending(_nbytes: int) -> None:  # spent once the masked bytes leave
            entry.append(self.ledger.record_sent(self.client.base, round_id, terms))
            self._refresh_ledger()

        def masked(nbytes: int) -> None:  # the update is in the round's sum from here on
            self.ledger.mark(entry[0], accepted=True)
            self._refresh_ledger()
            self._set(last_participation=started, last_round_id=round_id,
                      rounds_joined=self._status.rounds_joined + 1, last_update_bytes=nbytes,
                      secure_aggregation=True)
            self._save_state()

        upload = SecureUpload(self.client, task, wait=self._stop.wait, clock=self.clock,
                              on_masked=masked,
                              on_sending_masked=sending, min_survivors=terms.min_reports,
                              on_phase=lambda step: self._set(
                                  state="uploading",
                                  detail=f"round {round_id}: secure aggregation, {step}"))
        try:
            nbytes = upload.run(update, words)
        except SecureRoundError as err:
            log.warning("secure aggregation: %s", err)
            return self._step("missed", self.poll_seconds, str(err))
        self._refresh_privacy()
        log.info("round %s: masked update of %d bytes in the secure sum", round_id, nbytes)
        return self._step("uploaded", 0.0, f"round {round_id} (secure aggregation)")

    def _evaluate(self, task: Task) -> Step:
        """Score the task's model versions on the messages training has not used yet
        (newer than the last training round) and send the noised sums."""
        spec = task.evaluate
        terms = self._accept(task)  # the same policy and ledger as training
        if isinstance(terms, Step):
            return terms
        held_out = self.history.messages(since=self._status.last_participation)
        if not fed_eval.select_messages(held_out, spec.max_words):
            return self._step("not-eligible", self.poll_seconds, "no message that training "
                                                                 "has not used yet")
        models = []
        for version, sha256 in spec.versions:
            blob = self.blob if self.blob and self.blob.sha256 == sha256 else \
                self.client.model(version, keep=False)  # the task's own (not an int8 copy)
            if blob.sha256 != sha256:
                raise ServerRejected(200, "model_mismatch", f"model version {version}'s sha256 "
                                                            "differs from the task's")
            models.append(blob)
        tokenizer = self._tokenizer_for(models[0])
        self._set(state="evaluating", detail=f"round {task.round_id}: scoring "
                                             f"{len(models)} model version(s)")
        report = run_evaluation(task, [m.data for m in models], tokenizer, held_out,
                                noise_stddev=terms.noise_stddev, rng=self.rng)
        seen = (f"this phone's evaluation report itself (no secure aggregation): "
                f"{len(fed_eval.FIELDS) * len(models)} sums over at most {spec.max_words} of "
                f"its words, clipped to {terms.clip_norm:g} with noise of std "
                f"{terms.noise_stddev:.3g} added on the phone")
        round_id, detail = task.round_id, (f"round {task.round_id}: {len(models)} model "
                                           f"version(s) scored on {report.messages} messages")

        def evaluated(_receipt: Receipt) -> Step:
            log.info("%s; evaluation report sent", detail)
            return self._step("evaluated", 0.0, detail)
        self._pending = PendingReport(
            round_id, task.deadline,
            lambda key: self.client.report_evaluation(round_id, report.body, key),
            lambda: self.ledger.record_sent(self.client.base, round_id, terms, seen=seen),
            evaluated, "evaluation report not delivered")
        self._pending.entry = self._pending.record()  # spent: the report is made
        self._refresh_ledger()
        return self._send_pending()

    def _interrupted(self, deadline: float) -> bool:
        return self._stop.is_set() or self.eligibility.should_stop() or self.clock() > deadline

    # --- model and tokenizer ---------------------------------------------------------
    def _refresh_model(self) -> None:
        blob = self.client.model(compact=self.compact_downloads)
        if self.blob is None or blob.sha256 != self.blob.sha256:
            self._install(blob, self._tokenizer_for(blob))
        self._set(server_reachable=True)

    def _tokenizer_for(self, blob: ModelBlob) -> DeviceTokenizer:
        """The tokenizer the model was trained with, fetched again if it changed."""
        wanted = checkpoint_meta(blob.data).tokenizer_sha256
        if self.tokenizer is None or self.tokenizer.sha256 != wanted:
            tokenizer = DeviceTokenizer.from_json(self.client.tokenizer_json())
            if tokenizer.sha256 != wanted:
                raise TokenizerError(f"server tokenizer {tokenizer.sha256[:12]} is not the "
                                     f"model's {wanted[:12]}")
            self.tokenizer = tokenizer
        return self.tokenizer

    def _install(self, blob: ModelBlob, tokenizer: DeviceTokenizer) -> None:
        """Make `blob` the current global model; build it for prediction unless told not to."""
        if self.load_model:
            weights, meta = weights_from_bytes(blob.data, tokenizer_sha256=tokenizer.sha256)
            model = NumpyLSTM(weights, meta.config)
        else:  # simulations: train from the bytes, never predict
            model, meta = None, checkpoint_meta(blob.data)
        self.model, self.blob = model, blob
        self._set(model_version=meta.version)
        log.info("model version %d (sha256 %s)", meta.version, blob.sha256[:12])
        for listener in list(self._listeners) if model is not None else []:
            try:
                listener(model, tokenizer, meta.version)
            except Exception:  # a UI bug must not stop learning
                log.exception("model listener failed")

    def _load_cached_model(self) -> None:
        blob, text = self.client.cached_model(), self.client.cached_tokenizer_json()
        if blob is None or text is None:
            return
        try:
            self.tokenizer = DeviceTokenizer.from_json(text)
            self._install(blob, self.tokenizer)
        except (CheckpointError, TokenizerError) as err:
            log.warning("cached model unusable: %s", err)

    def _refresh_privacy(self) -> None:
        """Epsilon as the server accounts it (best effort: a failure keeps the old figure)."""
        try:
            privacy = PrivacyStatus.from_json(self.client.status())
        except (ServerUnavailable, ServerRejected, WireError) as err:
            log.info("server's privacy figures not read: %s", err)
            return
        self._set(epsilon=privacy.epsilon_spent_max, epsilon_budget=privacy.epsilon_budget,
                  delta=privacy.delta)

    # --- bookkeeping -----------------------------------------------------------------
    def _refresh_ledger(self) -> None:
        """The ledger's figures and the policy, for the privacy panel."""
        summary = self.ledger.summary(self.policy.delta)
        self._set(ledger_rounds=summary["rounds"], ledger_sent=summary["sent"],
                  ledger_epsilon=summary["epsilon"], epsilon_limit=self.policy.epsilon_budget,
                  ledger_delta=self.policy.delta, policy=self.policy.settings())

    def _step(self, outcome: str, wait: float, detail: str = "") -> Step:
        if outcome != "offline":
            self._failures = 0
        self._set(state=outcome, detail=detail)
        return Step(outcome, wait, detail)

    def _offline(self, err: Exception) -> Step:
        self._failures += 1
        wait = min(self.max_backoff, 5.0 * 2 ** (self._failures - 1)) * random.uniform(0.5, 1.5)
        log.warning("server unavailable (%s); using the cached model, retry in %.0f s", err, wait)
        self._set(server_reachable=False, state="offline", detail=str(err))
        return Step("offline", wait, str(err))

    def _set(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._status, key, value)

    def _load_state(self) -> None:
        """What the device remembers about its participation with this server."""
        try:
            saved = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(saved, dict) and saved.get("server") == self.client.base:
            self._set(**{k: saved[k] for k in _PERSISTED if k in saved})

    def _save_state(self) -> None:
        with self._lock:
            saved = {k: getattr(self._status, k) for k in _PERSISTED}
        saved["server"] = self.client.base
        write_atomic(self._state_path, json.dumps(saved).encode())

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                step = self.run_once()
            except Exception as err:  # keep the keyboard working whatever happens here
                log.exception("device loop error")
                step = self._step("error", self.poll_seconds, str(err))
            self._wake.wait(step.wait)
            self._wake.clear()
        self._set(state="stopped", detail="")


def _flat(update: Update) -> np.ndarray:
    """The update's tensors as one flat vector, in their order (what the codec takes)."""
    shapes = {name: tuple(t.shape) for name, t in update.tensors.items()}
    return flatten(update.tensors, shapes)
