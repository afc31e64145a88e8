"""`SecAggClient`: one device's side of a round (Bonawitz et al. 2017, with SecAgg+ neighbours
and the consistency round of the paper's malicious-server variant).

Call the five methods in order, each with what the server relayed, and send back what
they return. Every check that protects this device's update is here. The client signs its
advertised keys with its identity key and accepts only neighbours' keys signed by theirs;
it masks only with neighbours whose shares it got; it signs the round's list of survivors
only if that list agrees with what it saw (no neighbour it was told had dropped out comes
back, itself included, enough survivors); and it answers exactly one unmasking request,
only after checking t signatures of the same list by its neighbours (its own among them),
never revealing both shares of any peer. On any inconsistency it raises `RoundAborted`
and from then on reveals nothing in this round.
"""
from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federated.secagg import crypto, shamir
from federated.secagg.graph import neighbours
from federated.secagg.messages import (AdvertiseKeys, ConsistencyRequest, ConsistencyResponse,
                                       KeysRelay, MaskedInput, PeerKeys, ProtocolError,
                                       RefusedRequest, RoundAborted, ShareKeys, SharesRelay,
                                       UnmaskRequest, UnmaskResponse)
from federated.secagg.params import SecAggConfig, hiding_problem

ENCRYPT, MASK = b"encrypt", b"mask"
ADVERTISE, SURVIVORS = b"advertise", b"survivors"


def share_context(config: SecAggConfig, sender: int, receiver: int) -> bytes:
    """Associated data of the share ciphertext from `sender` to `receiver` in this round."""
    return config.context + b"/share/" + sender.to_bytes(4, "big") + receiver.to_bytes(4, "big")


def seed_context(config: SecAggConfig, client: int) -> bytes:
    """What a client's seed commitment is bound to."""
    return config.context + b"/seed/" + client.to_bytes(4, "big")


def advertise_signed_data(client: int, cipher_key: bytes, mask_key: bytes) -> bytes:
    """What a client signs (purpose ADVERTISE, the round's context) when it advertises keys."""
    return client.to_bytes(4, "big") + cipher_key + mask_key


def survivors_data(survivors: tuple[int, ...] | list[int]) -> bytes:
    """What a client signs (purpose SURVIVORS, the round's context) in the consistency round:
    the sorted survivor ids, 4 bytes each."""
    return b"".join(v.to_bytes(4, "big") for v in sorted(survivors))


def pairwise_mask(config: SecAggConfig, own_key, own_id: int, peer_key: bytes,
                  peer_id: int) -> tuple[np.ndarray, int]:
    """The PRG expansion of the key agreed with `peer_id`, and its sign (+1 if own_id < peer_id)."""
    seed = crypto.agree(own_key, peer_key, MASK, config.context)
    mask = crypto.expand(seed, config.dimension, config.encoding.dtype)
    return mask, 1 if own_id < peer_id else -1


def _randbelow(randbytes: crypto.RandomBytes):
    def draw(bound: int) -> int:  # rejection sampling: uniform below `bound`
        nbytes = (bound.bit_length() + 7) // 8
        while True:
            value = int.from_bytes(randbytes(nbytes), "big") >> (8 * nbytes - bound.bit_length())
            if value < bound:
                return value
    return draw


class SecAggClient:
    """A device in one secure-aggregation round, identified by `client_id` in 1..n, holding
    its long-lived `identity` key (the one bound to it when it enrolled)."""

    def __init__(self, config: SecAggConfig, client_id: int,
                 randbytes: crypto.RandomBytes = os.urandom, *,
                 identity: Ed25519PrivateKey):
        if not 1 <= client_id <= config.num_clients:
            raise ValueError(f"client_id must be in 1..{config.num_clients}, got {client_id}")
        if problem := hiding_problem(config.num_clients, config.degree, config.threshold):
            raise RefusedRequest(f"this device will not take part: {problem}")
        self.config, self.id, self.identity = config, client_id, identity
        self.neighbours = neighbours(config.num_clients, config.degree, config.graph_seed,
                                     client_id)
        self._randbytes = randbytes
        self._cipher_key = crypto.new_private_key(randbytes)
        self._mask_key = crypto.new_private_key(randbytes)
        self._stage = "advertise"
        self._peers: dict[int, PeerKeys] = {}
        self._seed = b""
        self._own_shares: tuple[bytes, bytes] = (b"", b"")
        self._shares: dict[int, tuple[bytes, bytes]] = {}
        self._senders: frozenset[int] = frozenset()
        self._survivors: tuple[int, ...] = ()
        self._answer: tuple[UnmaskRequest, UnmaskResponse] | None = None
        self.aborted: RoundAborted | None = None

    def _expect(self, stage: str, round_id: int) -> None:
        if self.aborted is not None:
            raise self.aborted
        if round_id != self.config.round_id:
            raise ProtocolError(f"message is for round {round_id}, this is round "
                                f"{self.config.round_id}")
        if self._stage != stage:
            raise ProtocolError(f"expected the {self._stage} step, got a {stage} request")

    def _abort(self, code: str, detail: str) -> RoundAborted:
        """Leave the round for good: every later call raises the same error."""
        self.aborted, self._stage = RoundAborted(code, detail), "aborted"
        return self.aborted

    def advertise_keys(self) -> AdvertiseKeys:
        """Phase 0: the two public keys, signed with the identity key."""
        self._expect("advertise", self.config.round_id)
        self._stage = "share"
        cipher, mask = crypto.public_bytes(self._cipher_key), crypto.public_bytes(self._mask_key)
        signature = crypto.sign(self.identity, ADVERTISE, self.config.context,
                                advertise_signed_data(self.id, cipher, mask))
        return AdvertiseKeys(self.config.round_id, self.id, cipher, mask, signature)

    def share_keys(self, relay: KeysRelay) -> ShareKeys:
        """Phase 1: share the new mask seed and the mask key among the advertised neighbours."""
        self._expect("share", relay.round_id)
        peers, t = relay.keys, self.config.threshold
        if not set(peers) <= self.neighbours:
            raise self._abort("wrong_neighbours", "relayed keys of non-neighbours "
                                                  f"{sorted(set(peers) - self.neighbours)}")
        self._check_signed(peers)
        if len(peers) + 1 < t:
            raise ProtocolError(f"only {len(peers)} neighbours advertised keys; {t - 1} needed")
        keys = [k for p in peers.values() for k in (p.cipher_key, p.mask_key)]
        keys += [crypto.public_bytes(self._cipher_key), crypto.public_bytes(self._mask_key)]
        if len(set(keys)) != len(keys):
            raise ProtocolError("relayed public keys are not all distinct")
        bad = {v: why for v, p in peers.items() for k in (p.cipher_key, p.mask_key)
               if (why := crypto.check_public_key(k))}
        if bad:
            raise ProtocolError(f"relayed unusable public keys: {bad}")
        self._seed = self._randbytes(shamir.SECRET_BYTES)
        holders, draw = sorted([*peers, self.id]), _randbelow(self._randbytes)
        seed_shares = shamir.split(self._seed, t, holders, draw)
        key_shares = shamir.split(crypto.private_bytes(self._mask_key), t, holders, draw)
        ciphertexts = {}
        for v, peer in peers.items():
            key = crypto.agree(self._cipher_key, peer.cipher_key, ENCRYPT, self.config.context)
            ciphertexts[v] = crypto.encrypt(key, seed_shares[v] + key_shares[v],
                                            share_context(self.config, self.id, v), self._randbytes)
        self._peers, self._own_shares = dict(peers), (seed_shares[self.id], key_shares[self.id])
        self._stage = "mask"
        return ShareKeys(self.config.round_id, self.id,
                         crypto.commitment(seed_context(self.config, self.id), self._seed),
                         ciphertexts)

    def _check_signed(self, peers: dict[int, PeerKeys]) -> None:
        """Each neighbour's keys signed by its own identity key; no identity twice or ours."""
        identities = [p.identity_key for p in peers.values()]
        identities.append(crypto.identity_bytes(self.identity))
        if len(set(identities)) != len(identities):
            raise self._abort("impersonation", "one identity key is relayed for two devices")
        for v, p in sorted(peers.items()):
            if crypto.check_identity_key(p.identity_key) or not crypto.verify(
                    p.identity_key, ADVERTISE, self.config.context,
                    advertise_signed_data(v, p.cipher_key, p.mask_key), p.signature):
                raise self._abort("impersonation", f"client {v}'s keys are not signed by "
                                                   "its identity key")

    def masked_input(self, relay: SharesRelay, update: np.ndarray) -> MaskedInput:
        """Phase 2: the fixed-point update plus the self mask and the pairwise masks.

        `update` is the flat float vector (see `encoding.flatten`), already clipped and
        noised; it is clamped to the encoding's bound here.
        """
        self._expect("mask", relay.round_id)
        if np.shape(update) != (self.config.dimension,):
            raise ValueError(f"update must have shape ({self.config.dimension},), "
                             f"got {np.shape(update)}")
        senders, t = frozenset(relay.ciphertexts), self.config.threshold
        if not senders <= set(self._peers):
            raise self._abort("dropout_revived", f"relayed shares from clients "
                              f"{sorted(senders - set(self._peers))} that advertised no keys")
        if len(senders) + 1 < t:
            raise ProtocolError(f"only {len(senders)} neighbours shared keys; {t - 1} needed")
        masked = self.config.encoding.encode(update)
        for u, blob in relay.ciphertexts.items():
            key = crypto.agree(self._cipher_key, self._peers[u].cipher_key, ENCRYPT,
                               self.config.context)
            plain = crypto.decrypt(key, blob, share_context(self.config, u, self.id))
            if plain is not None:  # an undecryptable share is simply not revealed later
                seed_share, key_share = plain[:shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES:]
                if shamir.is_share(seed_share) and shamir.is_share(key_share):
                    self._shares[u] = (seed_share, key_share)
        masked += crypto.expand(self._seed, self.config.dimension, masked.dtype)
        for v in sorted(senders):
            mask, sign = pairwise_mask(self.config, self._mask_key, self.id,
                                       self._peers[v].mask_key, v)
            if sign > 0:
                masked += mask
            else:
                masked -= mask
        self._senders, self._stage = senders, "consistency"
        return MaskedInput(self.config.round_id, self.id, masked)

    def consistency(self, request: ConsistencyRequest) -> ConsistencyResponse:
        """Phase 3: sign the list of survivors, if it agrees with what this client saw."""
        self._expect("consistency", request.round_id)
        survivors, t = set(request.survivors), self.config.threshold
        if self.id not in survivors:
            raise self._abort("not_a_survivor", f"client {self.id} missing from the survivors")
        if max(survivors) > self.config.num_clients:
            raise self._abort("wrong_neighbours", f"survivors name clients above "
                                                  f"{self.config.num_clients}")
        revived = (survivors & self.neighbours) - self._senders
        if revived:
            raise self._abort("dropout_revived", f"clients {sorted(revived)} sent this client "
                                                 "no shares, yet are listed as survivors")
        mine = survivors & self._senders
        if len(mine) + 1 < t:
            raise self._abort("too_few_survivors", f"{len(mine)} neighbours survived; at least "
                                                   f"{t - 1} needed")
        self._survivors, self._stage = tuple(sorted(survivors)), "unmask"
        return ConsistencyResponse(self.config.round_id, self.id, self._sign_survivors())

    def _sign_survivors(self) -> bytes:
        return crypto.sign(self.identity, SURVIVORS, self.config.context,
                           survivors_data(self._survivors))

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Phase 4: check the neighbours' signatures of the survivors this client signed,
        then give the seed share of each surviving neighbour (and its own) and the key
        share of each dropped one. Refuses a second, different request."""
        if self._answer is not None and request.round_id == self.config.round_id:
            if request == self._answer[0]:
                return self._answer[1]  # the same request again (a retry): the same answer
            raise RefusedRequest("already answered a different unmasking request this round")
        self._expect("unmask", request.round_id)
        survivors = set(self._survivors)
        want_survivors = tuple(sorted(self._senders & survivors))
        want_dropped = tuple(sorted(self._senders - survivors))
        if (tuple(sorted(request.survivors)), tuple(sorted(request.dropped))) != (
                want_survivors, want_dropped):
            raise self._abort("request_mismatch", f"asked about survivors "
                              f"{sorted(request.survivors)} and dropped {sorted(request.dropped)}"
                              f", expected {list(want_survivors)} and {list(want_dropped)}")
        self._check_signatures(request.signatures)
        seeds = {v: self._shares[v][0] for v in want_survivors if v in self._shares}
        seeds[self.id] = self._own_shares[0]
        keys = {w: self._shares[w][1] for w in want_dropped if w in self._shares}
        response = UnmaskResponse(self.config.round_id, self.id, seeds, keys)
        self._answer, self._stage = (request, response), "done"
        return response

    def _check_signatures(self, signatures: dict[int, bytes]) -> None:
        """t signatures of this client's survivor list: its own and its neighbours' (every
        relayed one must verify: a bad one means someone saw a different list)."""
        signers = set(signatures)
        strangers = signers - (self.neighbours & set(self._survivors))
        if strangers:
            raise self._abort("wrong_neighbours", f"signatures of clients {sorted(strangers)}, "
                                                  "which are not surviving neighbours")
        data = survivors_data(self._survivors)
        for v in sorted(signers):
            peer = self._peers.get(v)
            if peer is None or not crypto.verify(peer.identity_key, SURVIVORS,
                                                 self.config.context, data, signatures[v]):
                raise self._abort("inconsistent_survivors", f"client {v}'s signature does not "
                                  "verify on the survivors this client signed")
        if len(signers) + 1 < self.config.threshold:
            raise self._abort("too_few_signatures", f"{len(signers) + 1} of the "
                              f"{self.config.threshold} signatures needed")
