"""Secure aggregation in the server's rounds: `federated.secagg` driven over HTTP, with every
protocol message kept in the database and every masked input on disk.

A secure round (the default, `RoundConfig.secure_aggregation`) hands its tasks out like a
plain one, each with a protocol client id 1..n (n = the round's capacity, fixed when the
round opens). Devices train, then go through the phases of Bonawitz et al. (CCS 2017) with
SecAgg+ neighbourhoods (Bell et al., CCS 2020):

  advertise --keys relay--> share --shares relay--> masked --survivor list--> consistency
            --unmask request (with the neighbours' signatures)--> unmask --> done

Each device's advertised keys are checked against the Ed25519 identity key it bound when
it enrolled (`Device.identity_key`), and so is its signature of the survivor list in the
consistency phase (the malicious-server variant of the protocol: devices that see an
inconsistent view abort, and say why in an `abort` message, which the round counts).
A phase closes as soon as everyone expected has answered (key advertisement: once the
round's target of devices advertised), or at its deadline if enough did; with too few the
round is abandoned with the protocol's reason and a cause (`SecAggRound.cause`: devices
aborted, dropouts, or a sum out of range), which status, dashboard and metrics count.
The advertise phase ends `4 * secagg_phase_seconds` before the round's deadline (training
happens before it), each later phase `secagg_phase_seconds` after the previous one closed
at the latest.

No state lives only in one process's memory: a message the round takes (accepted, or
excluding its sender) is stored before it is acknowledged, and the protocol state
(`SecAggServerRound`) is rebuilt by replaying the stored messages in order, with the phase
closes in between (deterministic); each process caches the rebuilt state keyed by the
number of stored messages and the phase. Every change happens in a write transaction
holding the round's row lock (SQLite: the write lock), the discipline `rounds.py` uses to
close rounds. What a phase close relays to each device is stored too, so serving it is
one read. The sum is unmasked inside the round's aggregation lease (`RoundService.close_round`)
and divided by the number of survivors: `SecureAggregation`, which wraps the round policy
(`strategy.FedAvgPolicy`), puts that mean in place of the plain one, and the configured
server optimizer applies as usual. A round's phases are closed at their deadlines by the
round worker's tick (`should_close`), and as soon as every expected device answered by
the request that brought the last answer.

What bounds one device's influence, now that the server cannot check a masked update's
norm (the plain path's 422 norm check): the device clips its update to `clip_norm` (and
adds its noise) before masking, and the fixed-point encoding clamps every coordinate to
the encoding's bound B; a tampered device can still add an arbitrary vector modulo 2^b,
so the server checks that the unmasked sum's L2 norm is at most n times the norm a plain
upload may have (`privacy.norm_bound`) and abandons the round otherwise.

Compressed rounds (`compression = "ddg16"`, `aggregation_server.compressed`): the protocol
sums the codec's 16-bit words (`ModularIntegers`, dimension = the kept coordinates); the
unmasked modular sum is checked in integer units and decoded into the mean.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aggregation_server import compressed
from aggregation_server.config import RoundConfig
from aggregation_server.db import (Device, ModelVersion, Round, SecAggMember, SecAggMessage,
                                   SecAggRelay, SecAggRound, Task)
from aggregation_server.errors import ApiError
from aggregation_server.storage import sha256_hex
from aggregation_server.strategy import (Accepted, AggregationUnavailable, Optimizer,
                                         Refusal, RoundInputs, RoundPolicy, StateFor, Tensors,
                                         Upload, Verdict)
from aggregation_server.accounting import device_noise_stddev
from federated import identity, privacy
from federated.protocol import SecAggReceipt, SecAggTask
from federated.secagg import (ABORT_REASONS, LateMessageError, MessageError, ReplayError,
                              RoundAbandoned, SecAggError, SecAggServerRound, unflatten)
from federated.secagg import SecAggConfig

if TYPE_CHECKING:
    from aggregation_server.rounds import RoundService

log = logging.getLogger("aggregation_server.secure")
PHASES = ("advertise", "share", "masked", "consistency", "unmask")
ORDER = (*PHASES, "done")
LATER = {"advertise": 4, "share": 3, "masked": 2, "consistency": 1, "unmask": 0}  # after each
CLOSE = {"advertise": ("close_advertise", "keys", "share"),
         "share": ("close_share_keys", "shares", "masked"),
         "masked": ("close_masked_input", "consistency", "consistency"),
         "consistency": ("close_consistency", "unmask", "unmask")}
RELAY_PHASE = {"keys": "share", "shares": "masked", "consistency": "consistency",
               "unmask": "unmask"}  # served from
OPENED_BY = {phase: kind for kind, phase in RELAY_PHASE.items()}  # the relay a phase answers
CAUSES = ("device_aborts", "dropouts", "sum_out_of_range")  # why a secure round is abandoned
MAX_JSON_BYTES = 1 << 20


def masked_path(round_id: int, client_id: int, body_sha256: str) -> str:
    return f"updates/{round_id}/masked-{client_id}-{body_sha256[:16]}.safetensors"


def _text(body: bytes) -> str:
    """A JSON body as stored; bytes that are not UTF-8 (refused as not JSON) as ''."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return ""


class SecureAggregation:
    """A round policy wrapped for secure aggregation: rounds whose config says
    `secure_aggregation` run the protocol (who may join, the task's protocol part, the
    phases and their deadlines, the unmasked mean); every other decision, and all of plain
    rounds, is the wrapped policy's. Also serves the protocol's messages (`receive`,
    `relay`) for `secure_api`."""

    def __init__(self, inner: RoundPolicy, service: RoundService) -> None:
        self.inner, self.service = inner, service
        self._cache: dict[int, tuple[tuple[int, str], SecAggServerRound]] = {}
        self._cache_lock = threading.Lock()

    # ----- the round policy (`strategy.RoundPolicy`) ----------------------------------------
    makes_version = True

    def due(self, s: Session, config: RoundConfig, latest: ModelVersion) -> bool:
        return self.inner.due(s, config, latest)

    def round_config(self, config: RoundConfig) -> RoundConfig:
        return self.inner.round_config(config)

    def supports(self, config: RoundConfig) -> bool:
        return config.secure_aggregation or self.inner.supports(config)

    def plan(self, s: Session, config: RoundConfig,
             latest: ModelVersion) -> dict | None:
        return self.inner.plan(s, config, latest)

    def open(self, s: Session, r: Round, config: RoundConfig) -> None:
        if config.secure_aggregation:
            self._open(s, r, config)
        self.inner.open(s, r, config)

    def select(self, s: Session, r: Round, config: RoundConfig, device_id: str,
               now: float) -> Refusal | None:
        """Past key advertisement nobody joins (not even with a task: it missed the keys);
        before, the wrapped policy selects."""
        closed = config.secure_aggregation and self._closed_to_devices(s, r, now)
        return Refusal(closed) if closed else self.inner.select(s, r, config, device_id, now)

    def admit(self, s: Session, r: Round, config: RoundConfig, device_id: str) -> None:
        if config.secure_aggregation:
            self._add_member(s, r, device_id)
        self.inner.admit(s, r, config, device_id)

    def task_fields(self, s: Session, r: Round, config: RoundConfig, device_id: str) -> dict:
        fields = self.inner.task_fields(s, r, config, device_id)
        if config.secure_aggregation:
            fields["secagg"] = self._task_part(s, r, device_id)
        return fields

    def accept(self, upload: Upload, r: Round, config: RoundConfig) -> Accepted:
        """A secure round takes masked inputs only (`receive`), never a plain update."""
        if config.secure_aggregation and upload.via == "update":
            raise ApiError(409, "secure_aggregation",
                           f"round {r.id} uses secure aggregation: send the masked update "
                           f"through /v1/rounds/{r.id}/secagg/, not a plain update")
        return self.inner.accept(upload, r, config)

    def should_close(self, r: Round, now: float) -> Verdict | None:
        """Close the phases whose deadline passed; then close the round once its protocol
        is done, abandon it if the protocol failed (the round's own target and deadline
        do not apply: the phases' deadlines do)."""
        if not r.config.get("secure_aggregation"):
            return self.inner.should_close(r, now)
        phase, reason = self._advance(r.id, now)
        if phase not in ("done", "abandoned"):
            return None
        with self._cache_lock:
            self._cache.pop(r.id, None)
        return Verdict(phase == "done", reason or "secure aggregation failed")

    def postpone(self, s: Session, r: Round, seconds: float) -> None:
        """Move the current phase's deadline too (after an outage)."""
        row = s.get(SecAggRound, r.id, with_for_update=True, populate_existing=True)
        if row is not None and row.phase in PHASES:
            row.phase_deadline += seconds
        self.inner.postpone(s, r, seconds)

    def close(self, service: RoundService, round_id: int) -> None:
        """Make the round's model version with this policy's `aggregate`."""
        service.make_version(round_id, self)

    def aggregate(self, inputs: RoundInputs, weights: Tensors, state_for: StateFor,
                  version: int) -> tuple[Tensors, Tensors, Optimizer]:
        """A secure round's mean is the unmasked sum over the survivors (`unmask`); the
        wrapped policy's server optimizer applies as usual."""
        if not inputs.config.secure_aggregation:
            return self.inner.aggregate(inputs, weights, state_for, version)
        return self.inner.step(inputs.config, version, weights, self.unmask(inputs.round_id),
                               state_for)

    # ----- opening and check-in (called inside RoundService's transactions) ----------------
    def _open(self, s: Session, r: Round, config: RoundConfig) -> None:
        """Fix the protocol's public config for a new round (n = its capacity)."""
        _, degree, threshold = config.secagg_shape
        spec = compressed.round_spec(s, r, config, self.service.num_params)
        protocol = SecAggConfig.create(
            r.id, r.capacity, spec.kept if spec else self.service.num_params, config.clip_norm,
            device_noise_stddev(config), degree=degree, threshold=threshold,
            encoding=compressed.encoding(spec))
        protocol = replace(protocol, min_clients=min(protocol.num_clients,
                                                     max(protocol.min_clients, r.minimum)))
        s.add(SecAggRound(round_id=r.id, config=protocol.to_dict(), phase="advertise",
                          phase_deadline=self._deadline(r, config, "advertise", r.opened_at),
                          messages=0))

    @staticmethod
    def _closed_to_devices(s: Session, r: Round, now: float) -> str | None:
        """Why the round takes no (more) devices, or None while keys are being advertised."""
        row = s.get(SecAggRound, r.id)
        if row.phase != "advertise" or now >= row.phase_deadline:
            return (f"round {r.id} runs secure aggregation and is past key advertisement "
                    f"({row.phase} phase): it takes no more devices")
        return None

    @staticmethod
    def _add_member(s: Session, r: Round, device_id: str) -> None:
        """Give the device the next protocol client id (call before counting its task)."""
        s.add(SecAggMember(round_id=r.id, client_id=r.tasks_issued + 1, device_id=device_id))

    @staticmethod
    def _task_part(s: Session, r: Round, device_id: str) -> SecAggTask:
        """The task's "secagg" part: the protocol config, this device's client id, and when
        its keys must be advertised (training must end before)."""
        row = s.get(SecAggRound, r.id)
        client = s.scalar(select(SecAggMember.client_id).where(
            SecAggMember.round_id == r.id, SecAggMember.device_id == device_id))
        return SecAggTask(client, SecAggConfig.from_dict(row.config), row.phase_deadline)

    # ----- device messages -------------------------------------------------------------------
    def receive(self, device_id: str, round_id: int, phase: str,
                body: bytes) -> SecAggReceipt:
        """Take one device's message for `phase` (masked: safetensors bytes, else JSON;
        "abort": an abort notice, taken in whatever phase the round is in)."""
        with self.service.db.read() as s:
            earlier = self._earlier(s, round_id, device_id, phase, body)
            if earlier is not None:
                return earlier
            r, row, client = self._member(s, round_id, device_id)
            timed = phase != "abort"  # an abort is taken late too
            phase = row.phase if not timed and row.phase in PHASES else phase
            self._check_phase(r, row, phase, self.service.clock() if timed else None)
            limit = SecAggConfig.from_dict(row.config).max_masked_bytes \
                if phase == "masked" else MAX_JSON_BYTES
        if len(body) > limit:
            raise ApiError(413, "too_large", f"{phase} message of {len(body)} bytes is over "
                                             f"the {limit}-byte limit")
        path = masked_path(round_id, client, sha256_hex(body)) if phase == "masked" else None
        if path:  # on disk before it counts, as plain uploads are
            self.service.blobs.write(path, body)
        try:
            return self._take(device_id, round_id, phase, client, body, path, timed)
        finally:
            if path:
                self._drop_unless_stored(path)

    def _take(self, device_id: str, round_id: int, phase: str, client: int, body: bytes,
              path: str | None, timed: bool) -> SecAggReceipt:
        now = self.service.clock()
        with self.service.db.write() as s:
            r = s.get(Round, round_id, with_for_update=True, populate_existing=True)
            row = s.get(SecAggRound, round_id, with_for_update=True, populate_existing=True)
            self._check_phase(r, row, phase, now if timed else None)  # closed meanwhile?
            srv = self._state(s, row)
            if phase == "advertise":  # the key its signatures are checked with
                srv.identity_keys[client] = self._identity_key(s, device_id)
            was_out = client in srv.dropped
            try:
                if path:
                    srv.receive_masked_input(client, body)
                else:
                    srv.receive_json(client, body)
                error = None
            except SecAggError as err:
                error = err
            excluded = not was_out and client in srv.dropped
            if srv.aborts and len(srv.aborts) != sum((row.aborts or {}).values()):
                row.aborts = dict(Counter(srv.aborts.values()))
            if error is None or excluded:
                s.add(SecAggMessage(round_id=round_id, phase=phase, client_id=client,
                                    body=None if path else _text(body), path=path,
                                    received_at=now))
                row.messages += 1
            if error is None and path:
                self._count_report(s, r, device_id, path, now)
            if error is None and self._ready(srv, r, row):
                self._close(s, r, row, srv, now)
            key, outcome = (row.messages, row.phase), row.phase
        self._keep(round_id, key, srv)
        if outcome in ("done", "abandoned"):
            self.service.wake_worker()  # it unmasks and aggregates, or drops the round
        if error is not None:
            raise self._refusal(error, excluded, client, round_id)
        log.info("secagg_message", extra={"round_id": round_id, "phase": phase,
                                          "client_id": client, "device_id": device_id})
        return SecAggReceipt(round_id, phase, client)

    def _earlier(self, s: Session, round_id: int, device_id: str, phase: str,
                 body: bytes) -> SecAggReceipt | None:
        """The answer to a resend of a message the round took from this device (its first
        answer was lost): accepted again, or 409 if the round was abandoned since; None if
        there is no identical earlier message that counted."""
        client = s.scalar(select(SecAggMember.client_id).where(
            SecAggMember.round_id == round_id, SecAggMember.device_id == device_id))
        m = client and s.scalars(select(SecAggMessage).where(
            SecAggMessage.round_id == round_id, SecAggMessage.phase == phase,
            SecAggMessage.client_id == client)).first()
        same = m and (m.path == masked_path(round_id, client, sha256_hex(body)) if m.path
                      else m.body == _text(body))
        if not same:
            return None
        r, row = s.get(Round, round_id), s.get(SecAggRound, round_id)
        if r.state == "abandoned" or row.phase == "abandoned":
            raise ApiError(409, "round_abandoned", f"round {round_id} was abandoned"
                           f"{': ' + (r.reason or row.reason) if r.reason or row.reason else ''}"
                           f"; this {phase} message was taken, but the round made no model")
        if phase == "masked":
            task = s.get(Task, (round_id, device_id))
            counted = task is not None and task.state in ("submitted", "aggregated")
        elif r.state == "open":
            srv = self._state(s, row)
            self._keep(round_id, (row.messages, row.phase), srv)
            counted = client not in srv.dropped
        else:
            counted = True  # the round is aggregated or being aggregated with it
        if not counted:
            return None
        log.info("secagg_resend", extra={"round_id": round_id, "phase": phase,
                                         "client_id": client, "device_id": device_id})
        return SecAggReceipt(round_id, phase, client)

    def _drop_unless_stored(self, path: str) -> None:
        """Delete a refused masked input's file (an identical accepted copy is kept)."""
        with self.service.db.read() as s:
            kept = s.scalar(select(SecAggMessage.id).where(SecAggMessage.path == path))
        if kept is None:
            self.service.blobs.delete(path)

    def relay(self, device_id: str, round_id: int, kind: str) -> tuple[int, dict]:
        """(200, what the server relays to this device) or (202, when to ask again)."""
        with self.service.db.read() as s:
            r, row, client = self._member(s, round_id, device_id)
            if ORDER.index(row.phase) < ORDER.index(RELAY_PHASE[kind]):
                return 202, {"retry_after": self._retry_after(s, r, row), "phase": row.phase}
            found = s.get(SecAggRelay, (round_id, kind, client))
        if found is None:
            raise ApiError(409, "not_live", f"this device (client {client}) is out of round "
                                            f"{round_id}: it missed a phase or was excluded")
        return 200, json.loads(found.body)

    def _retry_after(self, s: Session, r: Round, row: SecAggRound) -> float:
        """When to ask again: when the open phase should be complete at the pace its messages
        have come in so far (the devices still expected over their arrival rate), at least
        0.2 s and at most phase_seconds / 20, often enough to answer well within a phase."""
        longest = max(0.2, min(2.0, RoundConfig.from_dict(r.config).secagg_phase_seconds / 20))
        arrivals = sorted(s.scalars(select(SecAggMessage.received_at).where(
            SecAggMessage.round_id == r.id, SecAggMessage.phase == row.phase)))
        expected = r.target if row.phase == "advertise" else s.scalar(
            select(func.count()).select_from(SecAggRelay).where(
                SecAggRelay.round_id == r.id, SecAggRelay.kind == OPENED_BY[row.phase]))
        if len(arrivals) < 2 or len(arrivals) >= expected:
            return longest
        pace = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)  # seconds per message
        due = arrivals[-1] + pace * (expected - len(arrivals)) - self.service.clock()
        return round(min(longest, max(0.2, due)), 1)

    # ----- deadlines and the end of a round ----------------------------------------------------
    def _advance(self, round_id: int, now: float) -> tuple[str, str | None]:
        """Close the phases whose deadline passed: (the phase now, the protocol's reason)."""
        with self.service.db.read() as s:
            row = s.get(SecAggRound, round_id)
        if row.phase in PHASES and now >= row.phase_deadline:
            with self.service.db.write() as s:
                r = s.get(Round, round_id, with_for_update=True, populate_existing=True)
                row = s.get(SecAggRound, round_id, with_for_update=True, populate_existing=True)
                srv = None
                if r.state == "open":
                    srv = self._state(s, row)
                    while row.phase in PHASES and now >= row.phase_deadline:
                        self._close(s, r, row, srv, now)
                key = (row.messages, row.phase)
            if srv is not None:
                self._keep(round_id, key, srv)
        return row.phase, row.reason

    def unmask(self, round_id: int) -> Tensors:
        """The sum of the round's masked inputs, recovered inside the aggregation lease,
        divided by the survivors."""
        svc = self.service
        with svc.db.read() as s:
            r, row = s.get(Round, round_id), s.get(SecAggRound, round_id)
            srv = self._rebuild(s, row)
        try:
            result = srv.finish()
        except RoundAbandoned as err:
            self._set_cause(round_id, "device_aborts" if srv.aborts else "dropouts")
            raise AggregationUnavailable(f"secure aggregation could not unmask the sum: "
                                         f"{err.reason}") from None
        config, n = RoundConfig.from_dict(r.config), len(result.survivors)
        problem, mean = self._mean(r, config, result.total, n)
        if problem:
            self._set_cause(round_id, "sum_out_of_range")
            raise AggregationUnavailable(f"{problem}: a device sent out-of-range values")
        log.info("secagg_unmasked", extra={"round_id": round_id, "survivors": n,
                                           "dropped": len(result.dropped)})
        return mean

    def _mean(self, r: Round, config: RoundConfig, total: np.ndarray,
              n: int) -> tuple[str | None, Tensors]:
        """(why the unmasked sum is out of range or None, the mean of the n updates)."""
        svc = self.service
        with svc.db.read() as s:
            spec = compressed.round_spec(s, r, config, svc.num_params)
        if spec is not None:  # the modular sum of the codec's words
            integers = spec.centred(total)
            problem = compressed.out_of_range(integers, spec, config, n)
            return problem, unflatten(compressed.decode(integers, spec, n), svc.shapes)
        limit = n * privacy.norm_bound(config.clip_norm, device_noise_stddev(config),
                                       svc.num_params)
        norm = float(np.linalg.norm(total))
        problem = None if norm <= limit else (
            f"the unmasked sum of {n} updates has L2 norm {norm:.4g}, over {n} times the "
            f"bound of one update ({limit:.4g} in all)")
        return problem, unflatten((total / n).astype(np.float32), svc.shapes)

    def _set_cause(self, round_id: int, cause: str) -> None:
        with self.service.db.write() as s:
            s.get(SecAggRound, round_id, with_for_update=True).cause = cause

    @staticmethod
    def _identity_key(s: Session, device_id: str) -> bytes:
        """The raw Ed25519 public key the device bound when it enrolled."""
        return identity.unb64(s.get(Device, device_id).identity_key, "identity_key", 32)

    @staticmethod
    def _identity_keys(s: Session, round_id: int) -> dict[int, bytes]:
        """Every member's identity key, by protocol client id."""
        rows = s.execute(select(SecAggMember.client_id, Device.identity_key)
                         .join(Device, Device.id == SecAggMember.device_id)
                         .where(SecAggMember.round_id == round_id)).all()
        return {client: identity.unb64(key, "identity_key", 32) for client, key in rows}

    @staticmethod
    def outcomes(s: Session) -> dict:
        """What the operator sees of secure rounds: how many were abandoned and why, and how
        often devices aborted, by reason (`federated.secagg.ABORT_REASONS`)."""
        rows = s.execute(select(Round.state, SecAggRound.cause, SecAggRound.aborts)
                         .join(SecAggRound, SecAggRound.round_id == Round.id)).all()
        causes = dict.fromkeys((*CAUSES, "other"), 0)
        aborts: Counter[str] = Counter()
        for state, cause, counts in rows:
            if state == "abandoned":
                causes[cause if cause in CAUSES else "other"] += 1
            aborts.update(counts or {})
        return {"rounds": len(rows), "abandoned": sum(causes.values()),
                "abandoned_by_cause": causes,
                "device_aborts": {code: aborts.get(code, 0) for code in ABORT_REASONS},
                "abort_reasons": dict(ABORT_REASONS)}

    # ----- protocol state ------------------------------------------------------------------------
    def _member(self, s: Session, round_id: int, device_id: str) -> tuple[Round, SecAggRound, int]:
        r = s.get(Round, round_id)
        if r is None:
            raise ApiError(404, "no_such_round", f"there is no round {round_id}")
        row = s.get(SecAggRound, round_id)
        if row is None:
            raise ApiError(409, "not_secure", f"round {round_id} does not use secure "
                                              "aggregation: upload with PUT .../update")
        client = s.scalar(select(SecAggMember.client_id).where(
            SecAggMember.round_id == round_id, SecAggMember.device_id == device_id))
        if client is None:
            raise ApiError(403, "not_participant", f"this device holds no task in round {round_id}")
        if r.state != "open" or row.phase == "abandoned":
            why = r.reason or row.reason
            raise ApiError(409, "round_closed", f"round {round_id} is "
                           f"{r.state if r.state != 'open' else 'abandoned'}"
                           + (f" ({why})" if why else ""))
        return r, row, client

    @staticmethod
    def _check_phase(r: Round, row: SecAggRound, phase: str, now: float | None = None) -> None:
        """409 unless the round is in `phase` (and, given `now`, before its deadline: the
        round worker closes a phase at its deadline, and nothing is taken after it)."""
        if r.state != "open" or row.phase == "abandoned":
            raise ApiError(409, "round_closed", f"round {r.id} is no longer open"
                           + (f" ({r.reason or row.reason})" if r.reason or row.reason else ""))
        have, want = ORDER.index(row.phase), ORDER.index(phase)
        if want < have:
            raise ApiError(409, "late", f"the {phase} phase of round {r.id} is closed; the "
                                        f"round is in the {row.phase} phase")
        if want > have:
            raise ApiError(409, "wrong_phase", f"round {r.id} is in the {row.phase} phase; "
                                               f"{phase} messages come later")
        if now is not None and now >= row.phase_deadline:
            raise ApiError(409, "late", f"the {phase} phase of round {r.id} is closed: its "
                                        "deadline passed")

    @staticmethod
    def _ready(srv: SecAggServerRound, r: Round, row: SecAggRound) -> bool:
        """Whether the phase can close now: the target advertised keys, or all answered."""
        if row.phase == "advertise":
            return len(srv.keys) >= r.target or srv.ready()
        return srv.ready()

    def _close(self, s: Session, r: Round, row: SecAggRound, srv: SecAggServerRound,
               now: float) -> None:
        """End the current phase: store each device's relay and the next phase's deadline."""
        phase = row.phase
        if phase == "unmask":
            row.phase = "done"
            row.reason = (f"secure aggregation: unmasked the sum of {len(srv.contributors)} "
                          f"masked updates ({len(srv.keys)} devices advertised keys)")
            return
        method, kind, following = CLOSE[phase]
        try:
            relays = getattr(srv, method)()
        except RoundAbandoned as err:
            row.phase, row.reason = "abandoned", f"secure aggregation, {phase} phase: {err.reason}"
            row.cause = "device_aborts" if srv.aborts else "dropouts"
            return
        for client, relay in relays.items():
            s.add(SecAggRelay(round_id=r.id, kind=kind, client_id=client,
                              body=json.dumps(relay.to_dict())))
        row.phase = following
        row.phase_deadline = self._deadline(r, RoundConfig.from_dict(r.config), following, now)
        log.info("secagg_phase", extra={"round_id": r.id, "phase": following,
                                        "live": len(relays)})

    @staticmethod
    def _deadline(r: Round, config: RoundConfig, phase: str, now: float) -> float:
        latest = r.deadline - config.secagg_phase_seconds * LATER[phase]
        return latest if phase == "advertise" else min(now + config.secagg_phase_seconds, latest)

    def _count_report(self, s: Session, r: Round, device_id: str, path: str,
                      now: float) -> None:
        """A masked input is accepted: the device's report counts, and its device is
        charged now (even if the round is abandoned later, after unmasking included)."""
        task = s.get(Task, (r.id, device_id), populate_existing=True)
        task.state, task.submitted_at, task.path = "submitted", now, path
        self.service.charge_task(task, RoundConfig.from_dict(r.config), now)
        task.num_examples, task.metrics = 0, {}  # not disclosed with secure aggregation
        r.reports += 1

    def _state(self, s: Session, row: SecAggRound) -> SecAggServerRound:
        """The round's protocol state: this process's cached copy if it is current, else
        rebuilt from the database. Taken out of the cache: put it back with `_keep`."""
        with self._cache_lock:
            hit = self._cache.pop(row.round_id, None)
        if hit is not None and hit[0] == (row.messages, row.phase):
            return hit[1]
        return self._rebuild(s, row)

    def _keep(self, round_id: int, key: tuple[int, str], srv: SecAggServerRound) -> None:
        with self._cache_lock:
            self._cache = {round_id: (key, srv)}  # one open round at a time

    def _rebuild(self, s: Session, row: SecAggRound) -> SecAggServerRound:
        """Replay the stored messages, phase by phase, closing each phase the round closed."""
        srv = SecAggServerRound(SecAggConfig.from_dict(row.config),
                                self._identity_keys(s, row.round_id))
        messages = s.scalars(select(SecAggMessage).where(SecAggMessage.round_id == row.round_id)
                             .order_by(SecAggMessage.id)).all()
        closed = min(ORDER.index(row.phase) if row.phase in ORDER else 0, len(CLOSE))
        for i, phase in enumerate(PHASES):
            for m in messages:
                if m.phase == phase:
                    self._replay(srv, m)
            if i < closed:
                getattr(srv, CLOSE[phase][0])()
        return srv

    def _replay(self, srv: SecAggServerRound, m: SecAggMessage) -> None:
        try:
            if m.path:
                srv.receive_masked_input(m.client_id, self.service.blobs.read(m.path))
            else:
                srv.receive_json(m.client_id, m.body.encode("utf-8"))
        except SecAggError:
            pass  # it excluded its sender then, and does again

    @staticmethod
    def _refusal(err: SecAggError, excluded: bool, client: int, round_id: int) -> ApiError:
        out = f"; this device (client {client}) is excluded from round {round_id}"
        if isinstance(err, MessageError):
            return ApiError(400, "malformed_message", f"{err}{out if excluded else ''}")
        if excluded:
            return ApiError(422, "excluded", f"{err}{out}")
        if isinstance(err, ReplayError):
            return ApiError(409, "replayed", str(err))
        if isinstance(err, LateMessageError):
            return ApiError(409, "late", str(err))
        return ApiError(400, "rejected", str(err))
