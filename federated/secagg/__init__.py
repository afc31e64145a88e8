"""Secure aggregation (Bonawitz et al., CCS 2017) with SecAgg+ neighbourhoods (Bell et al.,
CCS 2020): the server learns only the sum of the surviving devices' updates.

Imported by both the device runtime (`SecAggClient`) and the server (`SecAggServerRound`);
no networking here. Modules: `params` (RoundConfig; `hiding_problem`, the (n, k, t) rule
devices and the server's config check apply), `graph` (neighbours, k and t),
`encoding` (fixed point mod 2^b), `crypto` (X25519, HKDF, AES-GCM, AES-CTR PRG), `shamir`,
`messages` (phase messages and errors), `client`, `server`.

Threat model: the server and up to a `corrupt_rate` fraction of devices may collude and
read everything they hold; an honest device's update is hidden inside the sum of at least
`threshold` - 1 other surviving updates of its neighbourhood, and the round's sum is over
at least `min_clients`. The server picks the public graph seed; without the paper's extra
consistency round (signatures), a server lying about dropouts is stopped by the honest
majority threshold t > (k + 1 + corrupt neighbours) / 2 and the clients' refusal to reveal
both shares of any peer. What bounds one device's influence on the sum, now that the
server cannot see its update: the device clips (and noises) it before masking, and the
fixed-point encoding clamps every coordinate to the config's bound (a tampered device can
still add garbage modulo 2^b: check the unmasked sum). The server round and the clients
keep their state in memory and are not thread-safe: serialise calls per round.
"""
from federated.secagg.client import SecAggClient
from federated.secagg.encoding import EncodingError, FixedPoint, dimension, flatten, unflatten
from federated.secagg.graph import choose_degree, neighbourhoods
from federated.secagg.messages import (AdvertiseKeys, KeysRelay, LateMessageError, MaskedInput,
                                       MessageError, ProtocolError, RefusedRequest, ReplayError,
                                       RoundAbandoned, SecAggError, ShareKeys, SharesRelay,
                                       UnmaskRequest, UnmaskResponse, message_from_dict,
                                       message_from_json)
from federated.secagg.params import RoundConfig, hiding_problem
from federated.secagg.server import SecAggResult, SecAggServerRound

__all__ = [
    "AdvertiseKeys", "EncodingError", "FixedPoint", "KeysRelay", "LateMessageError",
    "MaskedInput", "MessageError", "ProtocolError", "RefusedRequest", "ReplayError",
    "RoundAbandoned", "RoundConfig", "SecAggClient", "SecAggError", "SecAggResult",
    "SecAggServerRound", "ShareKeys", "SharesRelay", "UnmaskRequest", "UnmaskResponse",
    "choose_degree", "dimension", "flatten", "hiding_problem", "message_from_dict",
    "message_from_json", "neighbourhoods", "unflatten",
]
