"""`SecAggClient`: one device's side of a round (Bonawitz et al. 2017, with SecAgg+ neighbours).

Call the four methods in order, each with what the server relayed, and send back what
they return. Every check that protects this device's update is here: the client refuses
keys of non-neighbours or repeated keys, masks only with neighbours whose shares it got,
and answers exactly one unmasking request, which must not ask for both shares of any peer.
"""
from __future__ import annotations

import os

import numpy as np

from federated.secagg import crypto, shamir
from federated.secagg.graph import neighbours
from federated.secagg.messages import (AdvertiseKeys, KeysRelay, MaskedInput, ProtocolError,
                                       RefusedRequest, ShareKeys, SharesRelay, UnmaskRequest,
                                       UnmaskResponse)
from federated.secagg.params import RoundConfig, hiding_problem

ENCRYPT, MASK = b"encrypt", b"mask"


def share_context(config: RoundConfig, sender: int, receiver: int) -> bytes:
    """Associated data of the share ciphertext from `sender` to `receiver` in this round."""
    return config.context + b"/share/" + sender.to_bytes(4, "big") + receiver.to_bytes(4, "big")


def seed_context(config: RoundConfig, client: int) -> bytes:
    """What a client's seed commitment is bound to."""
    return config.context + b"/seed/" + client.to_bytes(4, "big")


def pairwise_mask(config: RoundConfig, own_key, own_id: int, peer_key: bytes,
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
    """A device in one secure-aggregation round, identified by `client_id` in 1..n."""

    def __init__(self, config: RoundConfig, client_id: int,
                 randbytes: crypto.RandomBytes = os.urandom):
        if not 1 <= client_id <= config.num_clients:
            raise ValueError(f"client_id must be in 1..{config.num_clients}, got {client_id}")
        if problem := hiding_problem(config.num_clients, config.degree, config.threshold):
            raise RefusedRequest(f"this device will not take part: {problem}")
        self.config, self.id = config, client_id
        self.neighbours = neighbours(config.num_clients, config.degree, config.graph_seed,
                                     client_id)
        self._randbytes = randbytes
        self._cipher_key = crypto.new_private_key(randbytes)
        self._mask_key = crypto.new_private_key(randbytes)
        self._stage = "advertise"
        self._peers: dict[int, tuple[bytes, bytes]] = {}
        self._seed = b""
        self._own_shares: tuple[bytes, bytes] = (b"", b"")
        self._shares: dict[int, tuple[bytes, bytes]] = {}
        self._senders: frozenset[int] = frozenset()
        self._answer: tuple[UnmaskRequest, UnmaskResponse] | None = None

    def _expect(self, stage: str, round_id: int) -> None:
        if round_id != self.config.round_id:
            raise ProtocolError(f"message is for round {round_id}, this is round "
                                f"{self.config.round_id}")
        if self._stage != stage:
            raise ProtocolError(f"expected the {self._stage} step, got a {stage} request")

    def advertise_keys(self) -> AdvertiseKeys:
        """Phase 0: the two public keys."""
        self._expect("advertise", self.config.round_id)
        self._stage = "share"
        return AdvertiseKeys(self.config.round_id, self.id, crypto.public_bytes(self._cipher_key),
                             crypto.public_bytes(self._mask_key))

    def share_keys(self, relay: KeysRelay) -> ShareKeys:
        """Phase 1: share the new mask seed and the mask key among the advertised neighbours."""
        self._expect("share", relay.round_id)
        peers, t = relay.keys, self.config.threshold
        if not set(peers) <= self.neighbours:
            raise ProtocolError("relayed keys of non-neighbours "
                                f"{sorted(set(peers) - self.neighbours)}")
        if len(peers) + 1 < t:
            raise ProtocolError(f"only {len(peers)} neighbours advertised keys; {t - 1} needed")
        keys = [k for pair in peers.values() for k in pair]
        keys += [crypto.public_bytes(self._cipher_key), crypto.public_bytes(self._mask_key)]
        if len(set(keys)) != len(keys):
            raise ProtocolError("relayed public keys are not all distinct")
        bad = {v: why for v, pair in peers.items() for k in pair
               if (why := crypto.check_public_key(k))}
        if bad:
            raise ProtocolError(f"relayed unusable public keys: {bad}")
        self._seed = self._randbytes(shamir.SECRET_BYTES)
        holders, draw = sorted([*peers, self.id]), _randbelow(self._randbytes)
        seed_shares = shamir.split(self._seed, t, holders, draw)
        key_shares = shamir.split(crypto.private_bytes(self._mask_key), t, holders, draw)
        ciphertexts = {}
        for v, (cipher_key, _) in peers.items():
            key = crypto.agree(self._cipher_key, cipher_key, ENCRYPT, self.config.context)
            ciphertexts[v] = crypto.encrypt(key, seed_shares[v] + key_shares[v],
                                            share_context(self.config, self.id, v), self._randbytes)
        self._peers, self._own_shares = dict(peers), (seed_shares[self.id], key_shares[self.id])
        self._stage = "mask"
        return ShareKeys(self.config.round_id, self.id,
                         crypto.commitment(seed_context(self.config, self.id), self._seed),
                         ciphertexts)

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
            raise ProtocolError(f"relayed shares from clients {sorted(senders - set(self._peers))} "
                                "this client did not share keys with")
        if len(senders) + 1 < t:
            raise ProtocolError(f"only {len(senders)} neighbours shared keys; {t - 1} needed")
        masked = self.config.encoding.encode(update)
        for u, blob in relay.ciphertexts.items():
            key = crypto.agree(self._cipher_key, self._peers[u][0], ENCRYPT, self.config.context)
            plain = crypto.decrypt(key, blob, share_context(self.config, u, self.id))
            if plain is not None:  # an undecryptable share is simply not revealed later
                seed_share, key_share = plain[:shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES:]
                if shamir.is_share(seed_share) and shamir.is_share(key_share):
                    self._shares[u] = (seed_share, key_share)
        masked += crypto.expand(self._seed, self.config.dimension, masked.dtype)
        for v in sorted(senders):
            mask, sign = pairwise_mask(self.config, self._mask_key, self.id, self._peers[v][1], v)
            if sign > 0:
                masked += mask
            else:
                masked -= mask
        self._senders, self._stage = senders, "unmask"
        return MaskedInput(self.config.round_id, self.id, masked)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Phase 3: the seed share of each surviving neighbour (and its own), the key share
        of each dropped one. Refuses any request that could reveal both shares of a peer."""
        if self._answer is not None and request.round_id == self.config.round_id:
            if request == self._answer[0]:
                return self._answer[1]  # the same request again (a retry): the same answer
            raise RefusedRequest("already answered a different unmasking request this round")
        self._expect("unmask", request.round_id)
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            raise RefusedRequest(f"clients {sorted(survivors & dropped)} are listed both as "
                                 "survivors and as dropped: that would reveal both their shares")
        if self.id in survivors | dropped:
            raise RefusedRequest(f"the request lists this client ({self.id}) itself, "
                                 "which sent its masked input")
        if survivors | dropped != self._senders:
            raise RefusedRequest(
                f"the request must partition the neighbours that shared keys, "
                f"{sorted(self._senders)}; it names {sorted(survivors | dropped)}")
        if len(survivors) + 1 < self.config.threshold:
            raise RefusedRequest(f"only {len(survivors)} neighbours survived; at least "
                                 f"{self.config.threshold - 1} needed")
        seeds = {v: self._shares[v][0] for v in survivors if v in self._shares}
        seeds[self.id] = self._own_shares[0]
        keys = {w: self._shares[w][1] for w in dropped if w in self._shares}
        response = UnmaskResponse(self.config.round_id, self.id, seeds, keys)
        self._answer, self._stage = (request, response), "done"
        return response
