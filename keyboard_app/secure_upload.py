"""The device's secure-aggregation path: after local training has produced the clipped and
noised update, take part in the round's protocol (`federated.secagg.SecAggClient`) so that
the server learns only the sum of the round's updates, never this one.

advertise keys (signed with the device's identity key) -> (wait) keys relay -> send
encrypted shares -> (wait) shares relay -> send the masked update -> (wait) the list of
survivors -> sign it -> (wait) unmask request with the neighbours' signatures -> send the
shares that remove the masks. If what the server relays is inconsistent (a neighbour's keys
not signed by it, a device reported dropped coming back, signatures of a different list),
the device stops without revealing anything more, tells the server why, and raises
`SecureRoundError` with that reason in plain words (what the app shows).

Each wait polls the server with the `retry_after` it gives, until the round's deadline;
the whole exchange blocks the caller (a device restarted mid-round has lost its keys and
counts as dropped out, which the protocol tolerates). The device's update is only ever sent
masked: clamped to the encoding's bound, plus masks that cancel only in the sum.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from federated.protocol import Task
from federated.secagg import (AbortNotice, ConsistencyRequest, KeysRelay, RoundAborted,
                              SecAggClient, SecAggError, SharesRelay, UnmaskRequest, flatten)
from federated.wire import Update
from keyboard_app.client import ServerRejected, ServerUnavailable, SyncClient

log = logging.getLogger(__name__)


class SecureRoundError(Exception):
    """This device left the secure round: deadline, stop, refusal or a protocol breach."""


class SecureUpload:
    """One device's run through a secure round (`task.secagg`) over `client`, polling until
    the round's deadline at most.

    `wait(seconds)` sleeps and returns True if the device must stop; `on_phase(name)` is
    told each step; `on_sending_masked(nbytes)` just before the masked update is sent,
    `on_masked(nbytes)` once it is accepted (from then on the update is part of the round's
    sum). `min_survivors`: the fewest inputs the device lets the server unmask a sum of,
    where it can see them all (the complete graph); its noise was sized for that many.
    """

    def __init__(self, client: SyncClient, task: Task, *,
                 wait: Callable[[float], bool] = lambda s: bool(time.sleep(s)),
                 on_phase: Callable[[str], None] = lambda phase: None,
                 on_masked: Callable[[int], None] = lambda nbytes: None,
                 on_sending_masked: Callable[[int], None] = lambda nbytes: None,
                 min_survivors: int = 1, clock: Callable[[], float] = time.time) -> None:
        if task.secagg is None:
            raise ValueError(f"round {task.round_id} does not use secure aggregation")
        self.client, self.clock = client, clock
        self.part, self.deadline = task.secagg, task.deadline
        self.unreachable = 0.0  # seconds spent waiting for an unreachable server
        self.round_id = task.round_id
        self.wait, self.on_phase, self.on_masked = wait, on_phase, on_masked
        self.on_sending_masked = on_sending_masked
        self.min_survivors = min_survivors

    def run(self, update: Update, words: np.ndarray | None = None) -> int:
        """Go through all phases with this (clipped, noised) update, or in a compressed
        round with its `words` (`federated.compression`); the masked bytes sent."""
        shapes = {name: tuple(t.shape) for name, t in update.tensors.items()}
        flat = flatten(update.tensors, shapes) if words is None else words
        if flat.size != self.part.config.dimension:
            raise SecureRoundError(f"update has {flat.size} values, the round expects "
                                   f"{self.part.config.dimension}")
        try:
            device = SecAggClient(self.part.config, self.part.client_id,
                                  identity=self.client.identity_key)
            self._send("advertise", device.advertise_keys().to_dict())
            keys = KeysRelay.from_dict(self._fetch("keys"))
            self._send("shares", device.share_keys(keys).to_dict())
            shares = SharesRelay.from_dict(self._fetch("shares"))
            masked = device.masked_input(shares, flat).to_bytes()
            self.on_sending_masked(len(masked))
            self._send("masked", masked=masked)
            self.on_masked(len(masked))
            survivors = ConsistencyRequest.from_dict(self._fetch("consistency"))
            self._send("consistency", device.consistency(survivors).to_dict())
            request = UnmaskRequest.from_dict(self._fetch("unmask"))
            self._check_survivors(request)
            self._send("unmask", device.unmask(request).to_dict())
        except RoundAborted as err:  # an inconsistent view: the round fails, nothing revealed
            self._tell_abort(err.code)
            raise SecureRoundError(f"round {self.round_id}: this device stopped secure "
                                   f"aggregation and revealed nothing more: {err.reason}.") \
                from None
        except SecAggError as err:  # a relay this device will not act on, or a refusal
            raise SecureRoundError(f"round {self.round_id}: {type(err).__name__}: {err}") from None
        return len(masked)

    def _check_survivors(self, request: UnmaskRequest) -> None:
        """Refuse to unmask a sum of fewer inputs than the noise was sized for (checkable
        when every client is a neighbour; with SecAgg+ each device sees only its own)."""
        config = self.part.config
        if config.degree == config.num_clients - 1 and \
                len(request.survivors) + 1 < self.min_survivors:
            raise SecureRoundError(
                f"round {self.round_id}: the server asked to unmask a sum of "
                f"{len(request.survivors) + 1} inputs; this device's noise needs at least "
                f"{self.min_survivors}")

    def _tell_abort(self, code: str) -> None:
        """Tell the server why this device left (once; the operator counts the reasons)."""
        notice = AbortNotice(self.round_id, self.part.client_id, code).to_dict()
        try:
            self.client.secagg_send(self.round_id, "abort", message=notice)
        except (ServerUnavailable, ServerRejected) as err:
            log.info("round %s: abort notice not delivered: %s", self.round_id, err)

    def _send(self, step: str, message: dict | None = None, masked: bytes | None = None) -> None:
        """Deliver one message, retrying while the server is unreachable. The server answers
        a resend of a message it took as accepted; "replayed" (it holds another message of
        this device for the step, which it sends once) also means an earlier attempt arrived,
        perhaps resent by the HTTP layer after a lost response."""
        self.on_phase(step)
        while True:
            try:
                self.client.secagg_send(self.round_id, step, message=message, masked=masked)
                return
            except ServerUnavailable as err:
                self._pause(2.0, f"sending {step}: {err}", unreachable=True)
            except ServerRejected as err:
                if err.code == "replayed":
                    log.info("round %s: %s arrived earlier (%s)", self.round_id, step, err)
                    return
                raise

    def _fetch(self, step: str) -> dict:
        """Poll for the relay of `step` until the server has it (or the deadline)."""
        self.on_phase(f"waiting for {step}")
        while True:
            try:
                relay, retry_after = self.client.secagg_fetch(self.round_id, step)
                unreachable = False
            except ServerUnavailable as err:
                relay, retry_after, unreachable = None, 2.0, True
                log.info("round %s: %s", self.round_id, err)
            if relay is not None:
                return relay
            self._pause(retry_after, f"waiting for {step}", unreachable)

    def _pause(self, seconds: float, what: str, unreachable: bool = False) -> None:
        """Wait before the next try, until the round's deadline; time the server could not
        be reached moves it, as the server moves its deadlines by its outages."""
        left = self.deadline + self.unreachable - self.clock()
        if left <= 0:
            raise SecureRoundError(f"round {self.round_id}: deadline passed while {what}")
        if unreachable:
            self.unreachable += min(seconds, left)
        if self.wait(min(seconds, left)):
            raise SecureRoundError(f"round {self.round_id}: stopped while {what}")
