"""Secure aggregation: protocol rounds with dropouts, refusals, malformed input, encoding edges."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from safetensors.numpy import save as st_save
from scipy import stats

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federated.secagg import (AbortNotice, AdvertiseKeys, ConsistencyRequest, FixedPoint,
                              KeysRelay, LateMessageError, MaskedInput, MessageError,
                              ProtocolError, RefusedRequest, ReplayError, RoundAbandoned,
                              RoundAborted, SecAggConfig, SecAggClient, SecAggServerRound,
                              ShareKeys, UnmaskRequest, UnmaskResponse, choose_degree, flatten,
                              message_from_dict, message_from_json, neighbourhoods, unflatten)
from federated.secagg import crypto, shamir
from federated.secagg.encoding import EncodingError
from federated.secagg.graph import neighbours
from federated.secagg.params import hiding_problem, max_overcommit, round_shape

MAX_BYTES = 1 << 24
PHASES = ("advertise", "share", "masked", "consistency", "unmask")


def det_bytes(seed: int):
    """Deterministic randomness, so statistical tests cannot flake."""
    return random.Random(seed).randbytes


def identity(seed: int) -> Ed25519PrivateKey:
    """A device's identity key (deterministic, as `det_bytes`)."""
    return Ed25519PrivateKey.from_private_bytes(random.Random(-seed).randbytes(32))


class Sim:
    """A round driven the way the HTTP layer will: every message through its wire form."""

    def __init__(self, n: int, d: int = 64, degree: int | None = None, seed: int = 0,
                 updates: dict[int, np.ndarray] | None = None, clip: float = 1.0,
                 noise: float = 0.05):
        self.config = SecAggConfig.create(3, n, d, clip_norm=clip, noise_stddev=noise,
                                         degree=degree, graph_seed=bytes([seed]) * 32)
        self.identities = {i: identity(1000 * seed + i) for i in range(1, n + 1)}
        self.server = SecAggServerRound(self.config, {
            i: crypto.identity_bytes(key) for i, key in self.identities.items()})
        self.clients = {i: SecAggClient(self.config, i, det_bytes(1000 * seed + i), identity=key)
                        for i, key in self.identities.items()}
        rng = np.random.default_rng(seed)
        self.updates = updates or {i: rng.normal(0, 0.05, d).astype(np.float32)
                                   for i in self.clients}
        self.requests: dict = {}
        self.stored: dict[int, np.ndarray] = {}  # the masked inputs, as a server would store them

    def send(self, client: int, message) -> None:
        if isinstance(message, MaskedInput):
            self.stored[client] = message.masked
            self.server.receive_masked_input(client, message.to_bytes())
        else:
            self.server.receive_json(client, json.dumps(message.to_dict()))

    def phase(self, name: str, drop=(), close: bool = True):
        for i, client in self.clients.items():
            if i in drop or i in self.server.dropped or (name != "advertise"
                                                         and i not in self.requests):
                continue
            if name == "advertise":
                self.send(i, client.advertise_keys())
            elif name == "share":
                self.send(i, client.share_keys(KeysRelay.from_dict(self.requests[i].to_dict())))
            elif name == "masked":
                self.send(i, client.masked_input(self.requests[i], self.updates[i]))
            elif name == "consistency":
                self.send(i, client.consistency(
                    ConsistencyRequest.from_dict(self.requests[i].to_dict())))
            else:
                self.send(i, client.unmask(UnmaskRequest.from_dict(self.requests[i].to_dict())))
        if close:
            self.close(name)

    def close(self, name: str):
        closer = {"advertise": self.server.close_advertise, "share": self.server.close_share_keys,
                  "masked": self.server.close_masked_input,
                  "consistency": self.server.close_consistency, "unmask": self.server.finish}[name]
        out = closer()
        self.requests = out if isinstance(out, dict) else {}
        return out

    def run(self, drops: dict[str, set[int]] | None = None):
        drops = drops or {}
        for name in PHASES:
            self.phase(name, drops.get(name, ()))
        return self.server.result

    def check_sum(self, result) -> None:
        want = sum(self.updates[i].astype(np.float64) for i in result.survivors)
        enc = self.config.encoding
        assert np.abs(result.total - want).max() <= len(result.survivors) * enc.step / 2 * 1.000001


# ---------------------------------------------------------------- whole rounds

@pytest.mark.parametrize("n, degree", [(8, None), (20, 6), (20, None)])
def test_round_without_dropout_gives_the_plain_sum(n, degree):
    sim = Sim(n, degree=degree)
    result = sim.run()
    assert result.survivors == list(range(1, n + 1)) and result.dropped == {}
    sim.check_sum(result)
    assert all(m.dtype == np.uint32 for m in sim.stored.values())


def test_complete_graph_is_the_original_protocol():
    config = SecAggConfig.create(1, 10, 8, clip_norm=1.0, noise_stddev=0.1)
    assert (config.degree, config.threshold) == (9, 6)  # k = n - 1, t > (k + 1) / 2
    assert all(v == set(range(1, 11)) - {u} for u, v in config.graph.items())
    sim = Sim(10, degree=9)
    sim.check_sum(sim.run())


@pytest.mark.parametrize("phase", PHASES)
def test_up_to_n_minus_t_dropouts_at_each_phase(phase):
    sim = Sim(10, degree=9)  # t = 6: four may drop
    dropped = {2, 5, 7, 10}
    result = sim.run({phase: dropped})
    late = phase in ("consistency", "unmask")  # their masked inputs are in the sum
    expected = set(range(1, 11)) - (set() if late else dropped)
    assert set(result.survivors) == expected
    sim.check_sum(result)
    if not late:
        assert all("dropped out" in result.dropped[c] for c in dropped)


def test_sparse_graph_dropouts_in_every_phase():
    sim = Sim(24, degree=8)  # t = 5 of 9 holders
    result = sim.run({"advertise": {1}, "share": {4}, "masked": {9, 17}, "consistency": {6},
                      "unmask": {12, 20}})
    assert set(result.survivors) == set(range(1, 25)) - {1, 4, 9, 17}
    sim.check_sum(result)


@pytest.mark.parametrize("phase", PHASES)
def test_too_many_dropouts_abandon_with_a_reason(phase):
    sim = Sim(10, degree=9)
    drops = {1, 2, 3, 4, 5}  # n - t + 1
    with pytest.raises(RoundAbandoned) as info:
        sim.run({phase: drops})
    assert sim.server.phase == "abandoned" and sim.server.reason == info.value.reason
    assert ("only 5 clients" in info.value.reason or "needed" in info.value.reason)
    with pytest.raises(LateMessageError, match="abandoned"):
        sim.server.receive(6, UnmaskResponse(3, 6, {}, {}))


def test_sparse_neighbourhood_too_thin_abandons():
    sim = Sim(20, degree=6)  # t = 4 of 7 holders
    u = 5
    victims = set(sorted(sim.config.graph[u])[:4])  # u keeps 2 neighbours + itself < 4
    with pytest.raises(RoundAbandoned, match=f"client {u}'s masks cannot be removed"):
        sim.run({"masked": victims})


def test_wrap_around_edges_all_clients_at_the_bound():
    n, d = 9, 16
    for sign in (1, -1):
        bound = FixedPoint.choose(1.0, 0.05, n, d).bound
        updates = {i: np.full(d, sign * bound, np.float32) for i in range(1, n + 1)}
        updates[1][:4] = sign * 1e6  # far outside: clamped on the device
        sim = Sim(n, d, updates=updates)
        result = sim.run()
        np.testing.assert_allclose(result.total, sign * n * bound, rtol=0,
                                   atol=n * sim.config.encoding.step)


# ---------------------------------------------------------------- refusals

def _to_unmask(sim: Sim) -> None:
    for name in PHASES[:4]:
        sim.phase(name)


def _aborts(call, code: str) -> RoundAborted:
    with pytest.raises(RoundAborted) as info:
        call()
    assert info.value.code == code, info.value
    return info.value


@pytest.mark.parametrize("forge, code", [
    (lambda r, p: UnmaskRequest(3, r.survivors, (p[0],), r.signatures), "request_mismatch"),
    (lambda r, p: UnmaskRequest(3, r.survivors, (1,), r.signatures), "request_mismatch"),
    (lambda r, p: UnmaskRequest(3, r.survivors[:-1], (), r.signatures), "request_mismatch"),
    (lambda r, p: UnmaskRequest(3, r.survivors[:3], r.survivors[3:], r.signatures),
     "request_mismatch"),
    (lambda r, p: UnmaskRequest(3, r.survivors, r.dropped, dict(list(r.signatures.items())[:4])),
     "too_few_signatures"),
    (lambda r, p: UnmaskRequest(3, r.survivors, r.dropped, r.signatures | {p[0]: bytes(64)}),
     "inconsistent_survivors"),
])
def test_client_aborts_an_inconsistent_unmask_request_and_reveals_nothing(forge, code):
    sim = Sim(10, degree=9)
    _to_unmask(sim)
    client, request = sim.clients[1], sim.requests[1]
    forged = forge(request, list(request.survivors))
    aborted = _aborts(lambda: client.unmask(forged), code)
    assert aborted.reason in str(aborted) and "(" in str(aborted)  # plain words + details
    with pytest.raises(RoundAborted):
        client.unmask(request)  # the genuine request too: it left the round for good


def test_client_answers_one_unmask_request():
    sim = Sim(10, degree=9)
    _to_unmask(sim)
    client, request = sim.clients[1], sim.requests[1]
    peers = list(request.survivors)
    answer = client.unmask(request)
    assert set(answer.seed_shares) == set(peers) | {1} and answer.key_shares == {}
    assert client.unmask(request) == answer  # a retry gets the same answer
    # Asking again with a peer now "dropped" would reveal its key share after its seed share.
    with pytest.raises(RefusedRequest, match="already answered"):
        client.unmask(UnmaskRequest(3, tuple(peers[1:]), (peers[0],), request.signatures))


@pytest.mark.parametrize("survivors, code", [
    (lambda s: s - {1}, "not_a_survivor"),
    (lambda s: s - {4, 5, 6, 7, 8}, "too_few_survivors"),
    (lambda s: s | {11}, "wrong_neighbours"),
])
def test_client_signs_only_a_survivor_list_that_agrees_with_what_it_saw(survivors, code):
    sim = Sim(10, degree=9)
    for name in PHASES[:3]:
        sim.phase(name)
    listed = tuple(sorted(survivors(set(sim.requests[1].survivors))))
    _aborts(lambda: sim.clients[1].consistency(ConsistencyRequest(3, listed)), code)


def test_client_aborts_when_a_reported_dropout_comes_back():
    """Client 4 sent no shares (it dropped out in the share phase, so its neighbours were
    told): a survivor list that names it is a lie."""
    sim = Sim(10, degree=9)
    sim.phase("advertise")
    sim.phase("share", drop={4})
    sim.phase("masked")
    listed = tuple(sorted(set(sim.requests[1].survivors) | {4}))
    _aborts(lambda: sim.clients[1].consistency(ConsistencyRequest(3, listed)), "dropout_revived")


def test_lying_server_cannot_get_both_secrets_of_a_client():
    """The server shows half the clients a survivor list with client 1 and half a list
    without it (to get its seed from the first half and its mask key from the second).
    Each half signs its own list; neither the relayed signatures of the other list nor its
    own too few signatures let the second half reveal anything (t = 6 of 10)."""
    sim = Sim(10, degree=9)
    for name in PHASES[:3]:
        sim.phase(name)
    everyone = set(sim.requests[1].survivors)
    told_alive, told_dropped = {1, 2, 4, 6, 8, 10}, {3, 5, 7, 9}
    lists = {v: tuple(sorted(everyone if v in told_alive else everyone - {1})) for v in everyone}
    signed = {v: sim.clients[v].consistency(ConsistencyRequest(3, lists[v])).signature
              for v in everyone}
    seeds, keys = {}, {}
    for v in told_alive - {1}:
        same = {u: signed[u] for u in told_alive - {v}}
        reply = sim.clients[v].unmask(UnmaskRequest(3, tuple(sorted(everyone - {v})), (), same))
        seeds[v] = reply.seed_shares[1]
    for v in told_dropped:  # the alive half's signatures are on a different list
        others = tuple(sorted(everyone - {1, v}))
        _aborts(lambda v=v, o=others: sim.clients[v].unmask(UnmaskRequest(
            3, o, (1,), {u: signed[u] for u in everyone - {1, v}})), "inconsistent_survivors")
    fresh = Sim(10, degree=9)  # the same lie, relaying only the second half's signatures
    for name in PHASES[:3]:
        fresh.phase(name)
    for v in told_dropped:
        fresh.clients[v].consistency(ConsistencyRequest(3, tuple(sorted(everyone - {1}))))
    sigs = {v: fresh.clients[v]._sign_survivors() for v in told_dropped}
    for v in told_dropped:
        others = tuple(sorted(everyone - {1, v}))
        _aborts(lambda v=v, o=others: fresh.clients[v].unmask(UnmaskRequest(
            3, o, (1,), {u: sigs[u] for u in told_dropped - {v}})), "too_few_signatures")
    assert len(seeds) + 1 >= sim.config.threshold and keys == {}  # seed only: still masked


def test_client_refuses_bad_key_relays():
    sim = Sim(20, degree=6)
    sim.phase("advertise")
    me = 1
    request = sim.requests[me]
    outsider = next(v for v in range(2, 21) if v not in sim.config.graph[me])
    first = next(iter(request.keys))
    with pytest.raises(ProtocolError, match="round"):
        sim.clients[me].share_keys(KeysRelay(4, request.keys))
    with pytest.raises(ProtocolError, match="neighbours advertised"):
        sim.clients[me].share_keys(KeysRelay(3, dict(list(request.keys.items())[:1])))
    replayed = dict(request.keys)
    replayed[first] = replayed[first]._replace(cipher_key=sim.server.keys[me].cipher_key)
    with pytest.raises(RoundAborted, match="not signed"):  # re-signed by nobody
        sim.clients[me].share_keys(KeysRelay(3, replayed))
    sim = Sim(20, degree=6)
    sim.phase("advertise")
    with pytest.raises(ProtocolError, match="not all distinct"):  # its own key back, signed
        key = sim.identities[first]
        peer = request.keys[first]
        bad = sim.server.keys[me].cipher_key
        signed = peer._replace(cipher_key=bad, signature=crypto.sign(
            key, b"advertise", sim.config.context, first.to_bytes(4, "big") + bad
            + peer.mask_key))
        sim.clients[me].share_keys(KeysRelay(3, sim.requests[me].keys | {first: signed}))
    sim.clients[me].share_keys(sim.requests[me])  # the genuine relay still works after that
    for forge, code in [
            (lambda keys: keys | {outsider: sim.server.keys[outsider]}, "wrong_neighbours"),
            (lambda keys: keys | {first: keys[first]._replace(
                identity_key=crypto.identity_bytes(identity(99)))}, "impersonation"),
            (lambda keys: keys | {first: keys[first]._replace(
                identity_key=crypto.identity_bytes(sim.identities[me]))}, "impersonation")]:
        fresh = Sim(20, degree=6)
        fresh.phase("advertise")
        relay = fresh.requests[me]
        _aborts(lambda: fresh.clients[me].share_keys(KeysRelay(3, forge(relay.keys))), code)
        with pytest.raises(RoundAborted):
            fresh.clients[me].share_keys(relay)  # aborted for good


def test_server_refuses_unsigned_keys_and_survivor_signatures():
    sim = Sim(10, degree=9)
    genuine = sim.clients[2].advertise_keys()
    forged = AdvertiseKeys(3, 2, genuine.cipher_key, genuine.mask_key,
                           crypto.sign(identity(77), b"advertise", sim.config.context,
                                       b"anything"))
    with pytest.raises(ProtocolError, match="not signed by its identity key"):
        sim.server.receive(2, forged)
    assert "excluded" in sim.server.dropped[2]
    other = Sim(10, degree=9, seed=1)
    with pytest.raises(ProtocolError, match="no identity key is bound"):
        SecAggServerRound(other.config).receive(3, other.clients[3].advertise_keys())
    sim.phase("advertise")
    sim.phase("share")
    sim.phase("masked")
    wrong = sim.clients[5].consistency(ConsistencyRequest(3, sim.server.survivors[1:]))
    with pytest.raises(ProtocolError, match="signature does not verify"):
        sim.server.receive(5, wrong)
    sim.phase("consistency")
    sim.phase("unmask")
    assert 5 in sim.server.result.survivors and 2 not in sim.server.result.survivors
    sim.check_sum(sim.server.result)


def test_aborts_are_counted_and_named_when_the_round_fails():
    sim = Sim(10, degree=9)
    for name in PHASES[:3]:
        sim.phase(name)
    for v in range(1, 6):  # five of ten leave: t = 6 cannot be met
        sim.send(v, AbortNotice(3, v, "inconsistent_survivors"))
    with pytest.raises(ReplayError):
        sim.send(1, AbortNotice(3, 1, "inconsistent_survivors"))
    assert sim.server.aborts == {v: "inconsistent_survivors" for v in range(1, 6)}
    sim.phase("consistency", close=False)
    with pytest.raises(RoundAbandoned, match="devices aborted: 5 inconsistent_survivors"):
        sim.close("consistency")


# ---------------------------------------------------------------- malformed, late, replayed

def test_replayed_late_and_misaddressed_messages_change_nothing():
    sim = Sim(10, degree=9)
    first = sim.clients[1].advertise_keys()
    sim.send(1, first)
    with pytest.raises(ReplayError, match="already sent"):
        sim.send(1, first)
    with pytest.raises(ProtocolError, match="round 99"):
        sim.server.receive(2, AdvertiseKeys(99, 2, first.cipher_key, first.mask_key,
                                            first.signature))
    with pytest.raises(ProtocolError, match="sent by client 3"):
        sim.server.receive(3, AdvertiseKeys(3, 2, first.cipher_key, first.mask_key,
                                            first.signature))
    for i in range(2, 10):
        sim.send(i, sim.clients[i].advertise_keys())
    sim.close("advertise")  # client 10 dropped out
    with pytest.raises(LateMessageError, match="client 10 is out"):
        sim.send(10, sim.clients[10].advertise_keys())
    with pytest.raises(LateMessageError, match="share phase"):
        sim.send(1, first)  # replay of a closed phase's message
    sim.phase("share", drop={9})
    with pytest.raises(LateMessageError, match="client 9 is out"):
        sim.server.receive(9, MaskedInput(3, 9, np.zeros(64, np.uint32)))
    relay = sim.requests[8]
    sim.phase("masked", drop={8})
    late = sim.clients[8].masked_input(relay, sim.updates[8])  # after the deadline
    with pytest.raises(LateMessageError, match="client 8 is out"):
        sim.send(8, late)
    sim.phase("consistency")
    sim.phase("unmask")
    result = sim.server.result
    assert 8 not in result.survivors and 1 in result.survivors and 1 not in result.dropped
    sim.check_sum(result)


def test_malformed_keys_exclude_the_client_and_the_round_goes_on():
    sim = Sim(10, degree=9)
    low_order = bytes(32)  # the zero point: small order
    with pytest.raises(MessageError, match="small-order"):
        sim.server.receive(4, AdvertiseKeys(3, 4, low_order, bytes(range(32)), bytes(64)))
    assert "excluded" in sim.server.dropped[4]
    result = sim.run()
    assert 4 not in result.survivors and len(result.survivors) == 9
    sim.check_sum(result)


def test_malformed_bodies_exclude_the_sender():
    sim = Sim(10, degree=9)
    with pytest.raises(MessageError, match="not JSON"):
        sim.server.receive_json(2, b"{oops")
    sim.phase("advertise")
    sim.phase("share")
    with pytest.raises(MessageError, match="not safetensors"):
        sim.server.receive_masked_input(5, b"\x80\x04garbage")
    with pytest.raises(MessageError, match="over the"):
        sim.server.receive_masked_input(7, bytes(sim.config.max_masked_bytes + 1))
    sim.phase("masked")
    sim.phase("consistency")
    sim.phase("unmask")
    result = sim.server.result
    assert {2, 5, 7}.isdisjoint(result.survivors) and len(result.survivors) == 7
    assert all("excluded" in result.dropped[c] for c in (2, 5, 7))
    sim.check_sum(result)


def test_malformed_share_keys_exclude_the_client():
    sim = Sim(10, degree=9)
    sim.phase("advertise")
    good = sim.clients[3].share_keys(sim.requests[3])
    missing = ShareKeys(3, 3, good.seed_commitment, dict(list(good.ciphertexts.items())[1:]))
    with pytest.raises(ProtocolError, match="addressed to exactly"):
        sim.server.receive(3, missing)
    with pytest.raises(LateMessageError):
        sim.server.receive(3, good)  # excluded: even the good one is now refused
    sim.phase("share")
    sim.phase("masked")
    sim.phase("consistency")
    sim.phase("unmask")
    assert 3 not in sim.server.result.survivors
    sim.check_sum(sim.server.result)


def test_malformed_masked_input_excludes_the_client_and_its_masks_are_removed():
    sim = Sim(10, degree=9)
    sim.phase("advertise")
    sim.phase("share")
    with pytest.raises(MessageError, match="uint32 of shape"):
        sim.server.receive(6, MaskedInput(3, 6, np.zeros(63, np.uint32)))
    sim.phase("masked")  # everyone else masks with 6, so its key must be reconstructed
    sim.phase("consistency")
    sim.phase("unmask")
    assert 6 not in sim.server.result.survivors
    sim.check_sum(sim.server.result)


def test_bad_unmask_shares_are_outvoted_or_excluded():
    sim = Sim(10, degree=9)
    _to_unmask(sim)
    liar = sim.clients[2].unmask(sim.requests[2])
    forged = {v: (int.from_bytes(s, "big") + 1).to_bytes(66, "big")
              for v, s in liar.seed_shares.items()}
    sim.server.receive(2, UnmaskResponse(3, 2, forged, {}))  # well-formed, but wrong
    with pytest.raises(ProtocolError, match=r"clients \[4\] were not asked for"):
        sim.server.receive(3, UnmaskResponse(3, 3, {}, {4: liar.seed_shares[4]}))
    assert "excluded" in sim.server.dropped[3]
    for i in range(4, 11):
        sim.send(i, sim.clients[i].unmask(sim.requests[i]))
    result = sim.server.finish()
    assert set(result.survivors) == set(range(1, 11))  # 2 and 3 sent masked inputs
    sim.check_sum(result)


@pytest.mark.parametrize("data, message", [
    ([], "unknown message type"),
    ({"type": "nope"}, "unknown message type"),
    ({"type": "advertise_keys", "round_id": 1, "client_id": 1, "cipher_key": "AA=="},
     "missing fields"),
    ({"type": "advertise_keys", "round_id": True, "client_id": 1, "cipher_key": "",
      "mask_key": "", "signature": ""}, "round_id must be an integer"),
    ({"type": "advertise_keys", "round_id": 1, "client_id": 0, "cipher_key": "",
      "mask_key": "", "signature": ""}, "client_id must be an integer in 1"),
    ({"type": "advertise_keys", "round_id": 1, "client_id": 1, "cipher_key": "@@@@",
      "mask_key": "", "signature": ""}, "not valid base64"),
    ({"type": "advertise_keys", "round_id": 1, "client_id": 1, "cipher_key": "AAAA",
      "mask_key": "", "signature": ""}, "must be 32 bytes"),
    ({"type": "keys_relay", "round_id": 1, "keys": {"2": {"cipher_key": "", "mask_key": ""}}},
     "exactly"),
    ({"type": "consistency_response", "round_id": 1, "client_id": 1, "signature": "AAAA"},
     "must be 64 bytes"),
    ({"type": "abort", "round_id": 1, "client_id": 1, "reason": "my password is hunter2"},
     "abort reason must be one of"),
    ({"type": "abort", "round_id": 1, "client_id": 1, "reason": ["x"]},
     "abort reason must be one of"),
    ({"type": "share_keys", "round_id": 1, "client_id": 1, "seed_commitment": "A" * 43 + "=",
      "ciphertexts": {"01": ""}}, "not a client id"),
    ({"type": "share_keys", "round_id": 1, "client_id": 1, "seed_commitment": "A" * 43 + "=",
      "ciphertexts": {"2": "AAAA"}}, "must be 160 bytes"),
    ({"type": "unmask_request", "round_id": 1, "survivors": [2, 2], "dropped": [],
      "signatures": {}}, "repeated"),
    ({"type": "unmask_response", "round_id": 1, "client_id": 1,
      "seed_shares": {"2": "A" * 88}, "key_shares": {"2": "A" * 88}}, "both shares"),
    ({"type": "unmask_response", "round_id": 1, "client_id": 1,
      "seed_shares": {"2": "/" * 88}, "key_shares": {}}, "not a field element"),
])
def test_malformed_json_messages_are_refused_with_the_reason(data, message):
    with pytest.raises(MessageError, match=message):
        message_from_dict(data)


def test_message_from_json_limits():
    with pytest.raises(MessageError, match="not JSON"):
        message_from_json(b"\xff{")
    with pytest.raises(MessageError, match="over the"):
        message_from_json("x" * 100, max_bytes=10)


@pytest.mark.parametrize("make, message", [
    (lambda: b"short", "not safetensors"),
    (lambda: b"\x80\x04\x95" + bytes(40), "not safetensors"),  # a pickle header
    (lambda: st_save({"masked": np.zeros(4, np.float32)},
                     metadata={"format": "private-keyboard/secagg-masked-1",
                               "round_id": "1", "client_id": "1"}), "uint32 or uint64"),
    (lambda: st_save({"masked": np.zeros(4, np.uint32)}, metadata={"format": "x"}), "format"),
    (lambda: st_save({"masked": np.zeros(4, np.uint32)},
                     metadata={"format": "private-keyboard/secagg-masked-1", "round_id": "-1",
                               "client_id": "1"}), "round_id"),
    (lambda: st_save({"m": np.zeros(4, np.uint32)},
                     metadata={"format": "private-keyboard/secagg-masked-1"}), "one tensor"),
    (lambda: bytes(64), "over the"),
])
def test_malformed_masked_inputs_are_refused(make, message):
    with pytest.raises(MessageError, match=message):
        MaskedInput.from_bytes(make(), max_bytes=60 if message == "over the" else MAX_BYTES)


def test_round_config_round_trip_and_checks():
    config = SecAggConfig.create(5, 30, 100, clip_norm=2.0, noise_stddev=0.3)
    assert SecAggConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    bad = config.to_dict() | {"degree": 7}
    with pytest.raises(MessageError, match="degree must be even"):
        SecAggConfig.from_dict(bad)
    with pytest.raises(MessageError, match="threshold"):
        SecAggConfig.from_dict(config.to_dict() | {"threshold": config.degree + 2})
    with pytest.raises(MessageError, match="exactly"):
        SecAggConfig.from_dict(config.to_dict() | {"extra": 1})


# ---------------------------------------------------------------- building blocks

def test_shamir_threshold_and_robust_recovery():
    secret = bytes(range(32))
    shares = shamir.split(secret, 4, [1, 2, 5, 9, 10, 11])
    assert all(shamir.combine({x: shares[x] for x in xs}) == secret
               for xs in ([1, 2, 5, 9], [2, 9, 10, 11], [1, 5, 10, 11, 9]))
    assert shamir.combine({x: shares[x] for x in (1, 2, 5)}) != secret
    shares[2] = (int.from_bytes(shares[2], "big") ^ 1).to_bytes(66, "big")
    assert shamir.recover(shares, 4, lambda s: s == secret) == secret
    assert shamir.recover({1: shares[1]}, 4, lambda s: True) is None


def test_masked_input_is_independent_of_the_update():
    """The server's stored masked input of a device looks uniform mod 2^32 and the same
    whether the update is all zeros or all at the bound."""
    d = 20000
    stored = []
    for level in (0.0, 1.0):
        bound = FixedPoint.choose(1.0, 0.05, 5, d).bound
        updates = {i: np.full(d, level * bound, np.float32) for i in range(1, 6)}
        sim = Sim(5, d, updates=updates, seed=11)
        sim.run()
        stored.append(sim.stored[1])
    for masked in stored:
        for bits in (masked >> 24, masked & 0xFF):  # high and low byte: 256 bins each
            counts = np.bincount(bits.astype(np.int64), minlength=256)
            assert stats.chisquare(counts).pvalue > 1e-4
    assert stats.ks_2samp(stored[0], stored[1]).pvalue > 1e-4
    encoded = FixedPoint.choose(1.0, 0.05, 5, d).encode(np.full(d, 1.0))
    assert stats.ks_2samp(stored[1], encoded).pvalue < 1e-10  # the test can tell unmasked data


def test_fixed_point_edges():
    n = 7
    enc = FixedPoint(32, 1.5, n)
    assert n * enc.max_int <= 2 ** 31 - 1 < n * (enc.max_int + 1)  # the largest safe bound
    edges = np.array([enc.bound, -enc.bound, 2 * enc.bound, -1e30, 0.0])
    q = enc.encode(edges).view(np.int32)
    assert list(q) == [enc.max_int, -enc.max_int, enc.max_int, -enc.max_int, 0]
    for value in (enc.bound, -enc.bound):
        words = [enc.encode(np.full(3, value)) for _ in range(n)]
        total = np.sum(words, axis=0, dtype=np.uint32)  # wraps mod 2^32 like unmasking
        np.testing.assert_allclose(enc.decode(total), n * value, atol=n * enc.step / 2)
    rng = np.random.default_rng(1)
    xs = rng.uniform(-enc.bound, enc.bound, (n, 1000))
    total = np.sum([enc.encode(x) for x in xs], axis=0, dtype=np.uint32)
    assert np.abs(enc.decode(total) - xs.sum(axis=0)).max() <= n * enc.step / 2 * 1.000001
    with pytest.raises(EncodingError, match="non-finite"):
        enc.encode(np.array([np.nan]))


def test_fixed_point_64_bits_and_choice():
    enc = FixedPoint(64, 2.0, 3)
    q = enc.encode(np.array([2.0, -2.0, 1e300])).view(np.int64)
    assert list(q) == [enc.max_int, -enc.max_int, enc.max_int]
    total = np.sum([enc.encode(np.array([2.0, -2.0]))] * 3, axis=0, dtype=np.uint64)
    np.testing.assert_allclose(enc.decode(total), [6.0, -6.0], atol=3 * enc.step)
    chosen = FixedPoint.choose(clip_norm=1.0, noise_stddev=0.1, num_clients=100, dimension=10**6)
    assert chosen.bits == 32
    assert chosen.bound == pytest.approx(1.0 + 0.1 * np.sqrt(2 * np.log(1e18)))
    assert FixedPoint.choose(1.0, 1e-7, 10**6, 10**6).bits == 64
    with pytest.raises(ValueError, match="bits"):
        FixedPoint(16, 1.0, 2)


def test_flatten_round_trip():
    shapes = {"b": (2, 3), "a": (4,)}
    tensors = {"a": np.arange(4, dtype=np.float32), "b": np.ones((2, 3), np.float32)}
    back = unflatten(flatten(tensors, shapes), shapes)
    assert all(np.array_equal(back[k], tensors[k]) for k in shapes)
    with pytest.raises(EncodingError, match="shape"):
        flatten({"a": np.zeros(3), "b": np.ones((2, 3))}, shapes)


def test_graph_is_symmetric_regular_and_seeded():
    graph = neighbourhoods(50, 8, bytes(32))
    assert all(len(vs) == 8 and u not in vs for u, vs in graph.items())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    assert graph == neighbourhoods(50, 8, bytes(32)) != neighbourhoods(50, 8, b"\x01" * 32)
    assert all(neighbours(50, 8, bytes(32), u) == graph[u] for u in (1, 17, 50))
    with pytest.raises(ValueError, match="even"):
        neighbourhoods(50, 7, bytes(32))


@pytest.mark.parametrize("n, k, t, corrupt, needle", [
    (10, 9, 6, 0, None),            # complete graph: t > (k + 1) / 2
    (10, 9, 5, 0, "at least 6"),    # two disjoint halves of 5 holders would do
    (10, 9, 1, 0, "at least 6"),    # the threshold-1 attack
    (3, 2, 2, 0, None),
    (2, 1, 1, 0, "at least 2"),     # one's own share alone: no sum to hide in
    (2, 1, 2, 0, None),
    (50, 20, 11, 0, None),          # a SecAgg+ neighbourhood of 21 holders
    (50, 20, 12, 4, "at least 13"),  # 4 of the neighbours are the server's own devices
    (50, 20, 13, 4, None),
    (10, 7, 5, 0, "malformed"),     # odd sparse degree
    (10, 9, 11, 0, "could never finish"),
])
def test_hiding_rule(n, k, t, corrupt, needle):
    problem = hiding_problem(n, k, t, corrupt)
    assert (problem is None) if needle is None else (needle in problem), problem


def test_every_chosen_degree_keeps_inputs_hidden():
    """The server's choice of (k, t) and the devices' rule agree: devices accept every
    config the server makes, for its assumed share of corrupt clients too."""
    rates = [(d, g) for d in (0.0, 0.1, 0.4) for g in (0.0, 0.05, 0.2)]
    cases = [(n, d, g) for n in (*range(2, 31), 50, 100) for d, g in rates]
    for n, dropout, corrupt in cases + [(1000, 0.1, 0.0), (1000, 0.1, 0.05)]:
        k, t = choose_degree(n, dropout, corrupt)
        assert hiding_problem(n, k, t) is None, (n, dropout, corrupt, k, t)


def test_secure_rounds_cannot_hand_out_much_more_than_twice_their_target():
    """t > (k + 1) / 2 of the capacity: at twice the target, t is above it (the server
    refuses such a config); `max_overcommit` keeps room for the planned dropouts."""
    assert round_shape(10, 13) == (13, 12, 7)  # the defaults
    assert round_shape(10, 20)[2] == 11 > 10
    assert max_overcommit(20, 2.22) == 1.75 and round_shape(20, 35)[2] == 18
    assert max_overcommit(2, 4.0) == 1.5 and round_shape(2, 3) == (3, 2, 2)
    assert max_overcommit(10, 1.3) == 1.3  # below the limit: unchanged


def test_client_refuses_a_config_that_exposes_its_input():
    good = SecAggConfig.create(1, 10, 8, clip_norm=1.0, noise_stddev=0.1)
    bad = SecAggConfig.from_dict(good.to_dict() | {"threshold": 1, "min_clients": 1})
    with pytest.raises(RefusedRequest, match="will not take part.*at least 6"):
        SecAggClient(bad, 1, identity=identity(1))


def test_choose_degree_grows_like_log_n():
    assert choose_degree(10) == (9, 6)  # small rounds: the complete graph
    k100, t100 = choose_degree(100)
    k10k, _ = choose_degree(10000)
    assert k100 < 30 and k10k < 2 * k100 and t100 > (k100 + 1) / 2
    k, t = choose_degree(100, dropout_rate=0.1, corrupt_rate=0.05)
    assert k > k100 and t > (k + 1) / 2
    assert choose_degree(4, corrupt_rate=0.5) == (3, 4)  # secure, but no dropout tolerated
    with pytest.raises(ValueError, match="rates"):
        choose_degree(100, dropout_rate=1.0)
