"""`SecAggServerRound`: the server's state machine for one round; no networking.

The HTTP layer authenticates a device, maps it to its client id, records the identity key
bound to that device (`identity_keys[client]`, before its first message) and passes the
body to `receive_json(sender, body)` (or `receive_masked_input(sender, bytes)`), which
parse it and call `receive(sender, message)`; at each deadline (or as soon as `ready()`
says everyone expected has answered) it calls the phase's close method and serves each
client `request_for(client_id)`:

  ADVERTISE --close_advertise()--> SHARE --close_share_keys()--> MASKED
            --close_masked_input()--> CONSISTENCY --close_consistency()--> UNMASK
            --finish()--> DONE (result) or ABANDONED

A client that misses a phase has dropped out and every later message of it is refused
(`LateMessageError`); a client whose message is malformed or breaks the protocol (keys
or a survivor list not signed by its identity key included) is excluded (treated as
dropped from that phase on) and the round carries on; a second message for the same
phase is refused (`ReplayError`) and changes nothing. A client may send an `AbortNotice`
instead of any message: it has left the round (its reason is counted in `aborts`). The
server keeps only public keys, signatures, ciphertexts it cannot read and the running
modular sum of the masked inputs (the HTTP layer may store each masked input too: alone
it is uniformly random). The norm of an update cannot be checked here: each device clips
(and the encoding clamps every coordinate) before masking, which is what bounds one
device's influence on the sum.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from federated.secagg import crypto, shamir
from federated.secagg.client import (ADVERTISE, SURVIVORS, advertise_signed_data, pairwise_mask,
                                     seed_context, survivors_data)
from federated.secagg.messages import (AbortNotice, AdvertiseKeys, ConsistencyRequest,
                                       ConsistencyResponse, KeysRelay, LateMessageError,
                                       MaskedInput, MessageError, PeerKeys, ProtocolError,
                                       ReplayError, RoundAbandoned, SecAggError, ShareKeys,
                                       SharesRelay, UnmaskRequest, UnmaskResponse,
                                       message_from_json)
from federated.secagg.params import SecAggConfig

EXPECTS = {"advertise": AdvertiseKeys, "share": ShareKeys, "masked": MaskedInput,
           "consistency": ConsistencyResponse, "unmask": UnmaskResponse}


@dataclass
class SecAggResult:
    """The unmasked sum of the survivors' updates and who contributed."""

    total: np.ndarray  # float64, the decoded sum
    survivors: list[int]  # clients whose updates are in the sum
    dropped: dict[int, str] = field(default_factory=dict)  # client -> why it is not


class SecAggServerRound:
    """The server side of one round over clients 1..config.num_clients."""

    def __init__(self, config: SecAggConfig, identity_keys: dict[int, bytes] | None = None):
        self.config = config
        self.phase = "advertise"
        self.identity_keys: dict[int, bytes] = dict(identity_keys or {})  # client -> Ed25519
        self.live: set[int] = set(range(1, config.num_clients + 1))  # expected to answer now
        self.dropped: dict[int, str] = {}
        self.aborts: dict[int, str] = {}  # client -> its AbortNotice reason code
        self.keys: dict[int, PeerKeys] = {}
        self.shares: dict[int, ShareKeys] = {}
        self.survivors: tuple[int, ...] = ()  # the list every client signs
        self.signatures: dict[int, bytes] = {}
        self.total = np.zeros(config.dimension, dtype=config.encoding.dtype)  # running sum
        self.contributors: set[int] = set()  # clients whose masked input is in `total`
        self.responses: dict[int, UnmaskResponse] = {}
        self.requests: dict[int, KeysRelay | SharesRelay | UnmaskRequest] = {}
        self.result: SecAggResult | None = None
        self.reason = ""
        self._received: set[int] = set()
        self._sharers: set[int] = set()

    # ------------------------------------------------------------ receiving

    def receive(self, sender: int, message) -> None:
        """Take one client's message for the current phase, or raise why it is refused.

        Malformed content or a protocol breach excludes the sender (a `SecAggError` is
        raised all the same); a wrong round, phase or duplicate changes nothing.
        """
        if getattr(message, "round_id", None) != self.config.round_id:
            raise ProtocolError(f"message is for round {getattr(message, 'round_id', None)}, "
                                f"this is round {self.config.round_id}")
        if getattr(message, "client_id", None) != sender:
            raise ProtocolError(f"message says client {getattr(message, 'client_id', None)}, "
                                f"sent by client {sender}")
        if isinstance(message, AbortNotice):
            return self._take_abort(sender, message)
        expected = EXPECTS.get(self.phase)
        if expected is None:
            raise LateMessageError(f"round is {self.phase}; no more messages")
        if sender in self.dropped:
            raise LateMessageError(f"client {sender} is out of this round: {self.dropped[sender]}")
        if not isinstance(message, expected):
            raise LateMessageError(f"round is in the {self.phase} phase; "
                                   f"got {type(message).__name__}")
        if sender not in self.live:
            raise ProtocolError(f"client {sender} is not a participant of this phase")
        if sender in self._received:
            raise ReplayError(f"client {sender} already sent its {self.phase} message")
        try:
            getattr(self, f"_take_{self.phase}")(sender, message)
        except SecAggError as err:
            self._drop(sender, f"excluded in {self.phase} phase: {err}")
            raise
        finally:
            self._received.add(sender)  # one message per client and phase, taken or not

    def receive_json(self, sender: int, body: str | bytes) -> None:
        """Parse a JSON message body and `receive` it; a malformed body excludes the sender."""
        try:
            message = message_from_json(body)
        except MessageError as err:
            self._exclude_malformed(sender, err)
            raise
        self.receive(sender, message)

    def receive_masked_input(self, sender: int, body: bytes) -> None:
        """Parse a masked input's safetensors bytes and `receive` it (malformed: excluded)."""
        try:
            message = MaskedInput.from_bytes(body, self.config.max_masked_bytes)
        except MessageError as err:
            self._exclude_malformed(sender, err)
            raise
        self.receive(sender, message)

    def _exclude_malformed(self, sender: int, err: MessageError) -> None:
        if self.phase in EXPECTS and sender in self.live and sender not in self._received:
            self._drop(sender, f"excluded in {self.phase} phase: {err}")
            self._received.add(sender)

    def _drop(self, client: int, why: str) -> None:
        self.dropped[client] = why
        self.live.discard(client)

    def _take_abort(self, sender: int, msg: AbortNotice) -> None:
        """A client left the round (any phase); it is out from now on, and says why."""
        if self.phase not in EXPECTS:
            raise LateMessageError(f"round is {self.phase}; no more messages")
        if sender in self.aborts:
            raise ReplayError(f"client {sender} already aborted")
        if sender in self._received:
            raise ProtocolError(f"client {sender} already sent its {self.phase} message")
        self.aborts[sender] = msg.reason
        if sender not in self.dropped:
            self._drop(sender, f"aborted in the {self.phase} phase: {msg.reason}")

    def _take_advertise(self, sender: int, msg: AdvertiseKeys) -> None:
        for key in (msg.cipher_key, msg.mask_key):
            if why := crypto.check_public_key(key):
                raise MessageError(why)
        used = {k for p in self.keys.values() for k in (p.cipher_key, p.mask_key)}
        if msg.cipher_key == msg.mask_key or {msg.cipher_key, msg.mask_key} & used:
            raise ProtocolError("public keys must be fresh and distinct")
        identity = self.identity_keys.get(sender)
        if identity is None:
            raise ProtocolError(f"no identity key is bound to client {sender}")
        if any(p.identity_key == identity for p in self.keys.values()):
            raise ProtocolError(f"client {sender}'s identity key is another client's")
        if not crypto.verify(identity, ADVERTISE, self.config.context, advertise_signed_data(
                sender, msg.cipher_key, msg.mask_key), msg.signature):
            raise ProtocolError(f"client {sender}'s keys are not signed by its identity key")
        self.keys[sender] = PeerKeys(msg.cipher_key, msg.mask_key, identity, msg.signature)

    def _take_share(self, sender: int, msg: ShareKeys) -> None:
        expected = set(self.requests[sender].keys)
        if set(msg.ciphertexts) != expected:
            raise ProtocolError(f"ciphertexts must be addressed to exactly {sorted(expected)}, "
                                f"got {sorted(msg.ciphertexts)}")
        self.shares[sender] = msg

    def _take_masked(self, sender: int, msg: MaskedInput) -> None:
        enc, d = self.config.encoding, self.config.dimension
        if msg.masked.dtype != enc.dtype or msg.masked.shape != (d,):
            raise MessageError(f"masked input must be {enc.dtype} of shape ({d},), got "
                               f"{msg.masked.dtype} of shape {msg.masked.shape}")
        self.total += msg.masked  # wraps modulo 2^bits, as the protocol needs
        self.contributors.add(sender)

    def _take_consistency(self, sender: int, msg: ConsistencyResponse) -> None:
        if not crypto.verify(self.keys[sender].identity_key, SURVIVORS, self.config.context,
                             survivors_data(self.survivors), msg.signature):
            raise ProtocolError(f"client {sender}'s signature does not verify on the "
                                "survivors")
        self.signatures[sender] = msg.signature

    def _take_unmask(self, sender: int, msg: UnmaskResponse) -> None:
        request = self.requests[sender]
        survivors = set(request.survivors) | {sender}
        extra = (set(msg.seed_shares) - survivors) | (set(msg.key_shares) - set(request.dropped))
        if extra:
            raise ProtocolError(f"shares for clients {sorted(extra)} were not asked for")
        self.responses[sender] = msg

    # ------------------------------------------------------------ closing phases

    def ready(self) -> bool:
        """Whether every client expected in this phase has answered."""
        return self.phase in EXPECTS and self.live <= self._received

    def request_for(self, client: int):
        """What to send `client` for the current phase (None if nothing)."""
        return self.requests.get(client) if client in self.live else None

    def _advance(self, phase: str, survivors: set[int]) -> None:
        for client in self.live - survivors:
            self._drop(client, f"dropped out: no valid message in the {self.phase} phase")
        self.live, self.phase, self._received, self.requests = survivors, phase, set(), {}

    def _prune(self, members: set[int]) -> set[int]:
        """Drop members with fewer than t members among themselves and their neighbours."""
        graph, t = self.config.graph, self.config.threshold
        while short := {u for u in members if len(graph[u] & members) + 1 < t}:
            for u in short:
                self._drop(u, f"too few live neighbours in the {self.phase} phase "
                              "to hold its shares")
            members = members - short
        return members

    def _check_count(self, members: set[int], what: str) -> None:
        if len(members) < self.config.min_clients:
            self.abandon(f"only {len(members)} clients {what} with enough live neighbours "
                         f"to hold their shares; at least {self.config.min_clients} needed")

    def abandon(self, reason: str) -> None:
        """End the round without a result; raises RoundAbandoned(reason), which names the
        clients' aborts if any."""
        if self.aborts:
            counts = sorted(Counter(self.aborts.values()).items())
            reason += "; devices aborted: " + ", ".join(f"{n} {code}" for code, n in counts)
        self.phase, self.reason, self.requests = "abandoned", reason, {}
        raise RoundAbandoned(reason)

    def _expect_phase(self, phase: str) -> None:
        if self.phase != phase:
            raise ProtocolError(f"cannot close the {phase} phase: round is in {self.phase}")

    def close_advertise(self) -> dict[int, KeysRelay]:
        """End phase 0; relay to each client the public keys of its live neighbours."""
        self._expect_phase("advertise")
        members = self._prune(set(self.keys) & self.live)
        self._advance("share", members)
        self._check_count(members, "advertised keys")
        graph = self.config.graph
        self.requests = {u: KeysRelay(self.config.round_id,
                                      {v: self.keys[v] for v in graph[u] & members})
                         for u in members}
        return dict(self.requests)

    def close_share_keys(self) -> dict[int, SharesRelay]:
        """End phase 1; relay to each client the encrypted shares addressed to it."""
        self._expect_phase("share")
        members = self._prune(set(self.shares) & self.live)
        self._advance("masked", members)
        self._check_count(members, "shared keys")
        graph = self.config.graph
        self.requests = {v: SharesRelay(self.config.round_id, {
                             u: self.shares[u].ciphertexts[v] for u in graph[v] & members})
                         for v in members}
        return dict(self.requests)

    def close_masked_input(self) -> dict[int, ConsistencyRequest]:
        """End phase 2; ask each survivor to sign the list of survivors."""
        self._expect_phase("masked")
        sharers = set(self.requests)  # shared keys: neighbours' masked inputs include their masks
        survivors = set(self.contributors)
        self._advance("consistency", survivors)
        self._check_count(survivors, "sent masked inputs")
        self._sharers = sharers
        self._check_holders(survivors, "survived")
        self.survivors = tuple(sorted(survivors))
        self.requests = {v: ConsistencyRequest(self.config.round_id, self.survivors)
                         for v in survivors}
        return dict(self.requests)

    def _check_holders(self, holders: set[int], what: str) -> None:
        """Abandon unless every secret the sum needs has t share holders in `holders`."""
        graph, t, survivors = self.config.graph, self.config.threshold, set(self.contributors)
        for u in sorted(self._sharers):
            have = len(graph[u] & holders) + (u in holders)
            needed = u in survivors or graph[u] & survivors
            if needed and have < t:
                self.abandon(f"client {u}'s masks cannot be removed: {have} of its share "
                             f"holders {what}, {t} needed")

    def close_consistency(self) -> dict[int, UnmaskRequest]:
        """End phase 3; ask each client that signed, and has t signatures of the survivors
        among its neighbours and itself, for the shares that remove the masks."""
        self._expect_phase("consistency")
        graph, t = self.config.graph, self.config.threshold
        signers = set(self.signatures) & self.live
        ready = {v for v in signers if len(graph[v] & signers) + 1 >= t}
        for v in signers - ready:
            self._drop(v, "too few neighbours signed the survivors for it to unmask")
        self._advance("unmask", ready)
        self._check_holders(ready, "confirmed the survivors")
        survivors = set(self.survivors)
        self.requests = {v: UnmaskRequest(
            self.config.round_id, tuple(sorted(graph[v] & survivors)),
            tuple(sorted(graph[v] & (self._sharers - survivors))),
            {u: self.signatures[u] for u in sorted(graph[v] & signers)}) for v in ready}
        return dict(self.requests)

    # ------------------------------------------------------------ unmasking

    def finish(self) -> SecAggResult:
        """End phase 3: reconstruct the secrets, remove every mask, and decode the sum."""
        self._expect_phase("unmask")
        survivors, graph = self.contributors, self.config.graph
        dropped = self._sharers - survivors
        total = self.total.copy()
        for u in sorted(survivors):
            seed = self._recover(u, "seed_shares", lambda s, u=u: crypto.commitment(
                seed_context(self.config, u), s) == self.shares[u].seed_commitment)
            total -= crypto.expand(seed, self.config.dimension, total.dtype)
        for w in sorted(dropped):
            if not graph[w] & survivors:
                continue
            key_bytes = self._recover(w, "key_shares", lambda s, w=w: crypto.public_bytes(
                crypto.X25519PrivateKey.from_private_bytes(s)) == self.keys[w].mask_key)
            key = crypto.X25519PrivateKey.from_private_bytes(key_bytes)
            for u in sorted(graph[w] & survivors):  # u added -(w's sign) * PRG(s_uw)
                mask, sign = pairwise_mask(self.config, key, w, self.keys[u].mask_key, u)
                if sign > 0:
                    total += mask
                else:
                    total -= mask
        self.phase, self.requests = "done", {}
        dropped_out = {c: why for c, why in self.dropped.items() if c not in survivors}
        self.result = SecAggResult(self.config.encoding.decode(total), sorted(survivors),
                                   dropped_out)
        return self.result

    def _recover(self, client: int, kind: str, is_valid) -> bytes:
        shares = {v: getattr(r, kind)[client] for v, r in self.responses.items()
                  if client in getattr(r, kind)}
        secret = shamir.recover(shares, self.config.threshold, is_valid)
        if secret is None:
            what = "mask seed" if kind == "seed_shares" else "mask key"
            self.abandon(f"cannot reconstruct client {client}'s {what}: {len(shares)} shares "
                         f"received, {self.config.threshold} consistent ones needed")
        return secret
