"""Secure aggregation (Bonawitz et al., CCS 2017) with SecAgg+ neighbourhoods (Bell et al.,
CCS 2020): the server learns only the sum of the surviving devices' updates.

Imported by both the device runtime (`SecAggClient`) and the server (`SecAggServerRound`);
no networking here. Modules: `params` (SecAggConfig; `hiding_problem`, the (n, k, t) rule
devices and the server's config check apply), `graph` (neighbours, k and t),
`encoding` (fixed point mod 2^b, or the compressed rounds' 16-bit words), `crypto`
(X25519, HKDF, AES-GCM, AES-CTR PRG, Ed25519
signatures), `shamir`,
`messages` (phase messages and errors), `client`, `server`.

Threat model. The server may be malicious: it relays every message, may drop, delay,
replay or alter any of them, lie about who dropped out, show different devices different
views, and pick the public graph seed; a share `corrupt_rate` of the devices may be its
own (it issues the enrolment codes, so it can always add devices of its own). What holds:
- An honest device's update is revealed only inside a sum: of at least t - 1 other
  surviving inputs of its neighbourhood (t >= 2), and of at least `min_clients` overall.
- Lying about dropouts does not unmask one device: each device's two secrets are shared
  among its k neighbours and itself, an honest holder reveals one share per peer, never
  both, and answers one unmasking request only after checking t signatures (its own among
  them) of its neighbours on the same list of survivors, under identity keys bound when
  the devices enrolled (the consistency round of Bonawitz et al.'s malicious-server
  variant). `params.hiding_problem` is the resulting rule, 2t > k + 1 + c for c of the
  server's own devices among a neighbourhood; devices refuse (n, k, t) that break it.
- The server cannot pose as a device it did not enrol: advertised keys are signed with the
  device's identity key and checked by the server and by every neighbour, so it cannot
  read shares sent to an honest device or swap its keys (man in the middle). It is
  trusted to hand out the identity keys it bound at enrolment (a device cannot check a
  stranger's key): one it swaps makes that slot one of its own devices, which the rule
  above counts.
- A device that sees an inconsistent view (keys of non-neighbours or not signed by their
  identity, a device reported dropped coming back, a survivor list that leaves it out or
  that its neighbours did not sign) raises `RoundAborted` with a plain reason, reveals
  nothing more and may tell the server why (`AbortNotice`): the round then fails, so
  a malicious server (or a tampered device) can always deny service, never disclose.
What does not hold: the sum is not verified. A tampered device can add anything within
the encoding's bound per coordinate (or garbage modulo 2^b, which the server's check of
the unmasked sum's norm catches: the round is then abandoned). What bounds an honest
device's influence: it clips (and noises) its update before masking. The server round and
the clients keep their state in memory and are not thread-safe: serialise calls per round.
"""
from federated.secagg.client import SecAggClient
from federated.secagg.encoding import (EncodingError, FixedPoint, ModularIntegers, dimension,
                                       flatten, unflatten)
from federated.secagg.graph import choose_degree, neighbourhoods
from federated.secagg.messages import (ABORT_REASONS, AbortNotice, AdvertiseKeys,
                                       ConsistencyRequest, ConsistencyResponse, KeysRelay,
                                       LateMessageError, MaskedInput, MessageError, PeerKeys,
                                       ProtocolError, RefusedRequest, ReplayError, RoundAbandoned,
                                       RoundAborted, SecAggError, ShareKeys, SharesRelay,
                                       UnmaskRequest, UnmaskResponse, message_from_dict,
                                       message_from_json)
from federated.secagg.params import SecAggConfig, hiding_problem
from federated.secagg.server import SecAggResult, SecAggServerRound

__all__ = [
    "ABORT_REASONS", "AbortNotice", "AdvertiseKeys", "ConsistencyRequest",
    "ConsistencyResponse", "EncodingError", "FixedPoint", "KeysRelay", "LateMessageError",
    "MaskedInput", "MessageError", "ModularIntegers",
    "PeerKeys", "ProtocolError", "RefusedRequest", "ReplayError",
    "RoundAbandoned", "RoundAborted", "SecAggConfig", "SecAggClient", "SecAggError",
    "SecAggResult",
    "SecAggServerRound", "ShareKeys", "SharesRelay", "UnmaskRequest", "UnmaskResponse",
    "choose_degree", "dimension", "flatten", "hiding_problem", "message_from_dict",
    "message_from_json", "neighbourhoods", "unflatten",
]
