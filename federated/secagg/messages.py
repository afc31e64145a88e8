"""The messages of each phase, as frozen data classes with checked JSON-able dict forms.

Bytes travel as standard base64 strings; id-keyed maps as JSON objects with decimal keys.
The masked input, the one large message, is safetensors bytes (never pickle). Parsing
checks structure, types and sizes and raises `MessageError` with the exact reason; whether
a well-formed message is acceptable now (round, phase, sender, neighbours) is checked by
the receiver (`SecAggServerRound`, `SecAggClient`), which raises `ProtocolError`.

Flow (server relays; clients never talk to each other directly):
  client -> server   AdvertiseKeys        two X25519 public keys, signed with its identity key
  server -> client   KeysRelay            the neighbours' keys, identity keys and signatures
  client -> server   ShareKeys            seed commitment + encrypted shares, one per neighbour
  server -> client   SharesRelay          the shares addressed to this client
  client -> server   MaskedInput          the masked update (safetensors)
  server -> client   ConsistencyRequest   the set of survivors (clients whose input is summed)
  client -> server   ConsistencyResponse  its signature of that set
  server -> client   UnmaskRequest        which neighbours survived and which dropped, with
                                          the neighbours' signatures of the same set
  client -> server   UnmaskResponse       seed shares of survivors, key shares of dropped
  client -> server   AbortNotice          instead of any message: why it left the round
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, TypeVar

import numpy as np

from device_model import tensorfile
from federated.secagg import crypto, shamir
from federated.wire import WireError, tensors_from_bytes

CIPHERTEXT_BYTES = crypto.NONCE_BYTES + 2 * shamir.SHARE_BYTES + crypto.TAG_BYTES
MASKED_FORMAT = "private-keyboard/secagg-masked-1"
MAX_ID = 2 ** 31 - 1
T = TypeVar("T")


class SecAggError(Exception):
    """Base of every secure-aggregation error; the message says exactly what was wrong."""


class MessageError(SecAggError, ValueError):
    """A malformed message (bad structure, type, encoding or size)."""


class ProtocolError(SecAggError):
    """A well-formed message that is not acceptable now (round, phase, sender, content)."""


class ReplayError(ProtocolError):
    """A second message of the same phase from the same client."""


class LateMessageError(ProtocolError):
    """A message from a client that has dropped out or been excluded, or for a closed phase."""


class RefusedRequest(SecAggError):
    """An honest client's refusal of a server request (e.g. one revealing both shares of a peer)."""


class RoundAborted(ProtocolError):
    """A device's refusal to go on: what the server relayed is not a consistent view of the
    round (a tampered relay, a forged or missing signature, a lie about who dropped out).
    The device reveals nothing more in this round. `code` is one of `ABORT_REASONS`;
    `reason` the plain sentence for people; the message adds the protocol details."""

    def __init__(self, code: str, detail: str):
        self.code, self.reason = code, ABORT_REASONS[code]
        super().__init__(f"{self.reason} ({detail})")


ABORT_REASONS = {
    "impersonation": "keys relayed for another device were not signed by that device, so "
                     "someone may be posing as it",
    "wrong_neighbours": "the server relayed messages of devices that are not this device's "
                        "neighbours in the round",
    "dropout_revived": "the server listed as a survivor a device it had earlier reported as "
                       "dropped out",
    "not_a_survivor": "the server left this device out of the survivors although it accepted "
                      "its masked update",
    "too_few_survivors": "too few devices survived for this device's update to stay hidden "
                         "in their sum",
    "inconsistent_survivors": "other devices' signatures do not match the list of survivors "
                              "this device was shown: the server showed devices different "
                              "lists, or relayed a forged signature",
    "too_few_signatures": "too few devices confirmed the same list of survivors",
    "request_mismatch": "the server's unmasking request does not match the list of survivors "
                        "this device confirmed",
}


class RoundAbandoned(SecAggError):
    """The round cannot finish (too many dropouts); `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------- field checks

def _fields(data: Any, kind: str, keys: set[str]) -> dict:
    if not isinstance(data, dict):
        raise MessageError(f"{kind} must be a JSON object")
    if data.get("type") != kind:
        raise MessageError(f"message type must be {kind!r}, got {data.get('type')!r}")
    missing, extra = sorted(keys - set(data)), sorted(set(data) - keys - {"type"})
    if missing or extra:
        raise MessageError(f"{kind}: missing fields {missing}, unexpected fields {extra}")
    return data


def _int(value: Any, what: str, low: int = 0, high: int = MAX_ID) -> int:
    if type(value) is not int or not low <= value <= high:
        raise MessageError(f"{what} must be an integer in {low}..{high}, got {value!r}")
    return value


def _bytes(value: Any, what: str, length: int) -> bytes:
    if not isinstance(value, str) or len(value) > 4 * length:
        raise MessageError(f"{what} must be a base64 string of {length} bytes")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError(f"{what} is not valid base64") from None
    if len(raw) != length:
        raise MessageError(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _id_map(value: Any, what: str, parse: Callable[[Any, str], T]) -> dict[int, T]:
    if not isinstance(value, dict):
        raise MessageError(f"{what} must be an object keyed by client id")
    out = {}
    for key, item in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and key == str(int(key))
                and 1 <= int(key) <= MAX_ID):
            raise MessageError(f"{what}: key {key!r} is not a client id")
        out[int(key)] = parse(item, f"{what}[{key}]")
    return out


def _id_list(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise MessageError(f"{what} must be a list of client ids")
    ids = tuple(_int(v, f"{what} entry", 1) for v in value)
    if len(set(ids)) != len(ids):
        raise MessageError(f"{what} has repeated client ids")
    return tuple(sorted(ids))


def _share(value: Any, what: str) -> bytes:
    raw = _bytes(value, what, shamir.SHARE_BYTES)
    if not shamir.is_share(raw):
        raise MessageError(f"{what} is not a field element")
    return raw


def _key(value: Any, what: str) -> bytes:
    return _bytes(value, what, crypto.KEY_BYTES)


def _ciphertext(value: Any, what: str) -> bytes:
    return _bytes(value, what, CIPHERTEXT_BYTES)


def _signature(value: Any, what: str) -> bytes:
    return _bytes(value, what, crypto.SIGNATURE_BYTES)


# ---------------------------------------------------------------- messages

@dataclass(frozen=True)
class AdvertiseKeys:
    """Phase 0, client -> server: the public keys for share encryption and for masking,
    signed with the device's identity key (`client.advertise_signed_data`)."""

    round_id: int
    client_id: int
    cipher_key: bytes
    mask_key: bytes
    signature: bytes
    TYPE = "advertise_keys"

    def to_dict(self) -> dict:
        return {"type": self.TYPE, "round_id": self.round_id, "client_id": self.client_id,
                "cipher_key": _b64(self.cipher_key), "mask_key": _b64(self.mask_key),
                "signature": _b64(self.signature)}

    @classmethod
    def from_dict(cls, data: Any) -> AdvertiseKeys:
        d = _fields(data, cls.TYPE, {"round_id", "client_id", "cipher_key", "mask_key",
                                     "signature"})
        return cls(_int(d["round_id"], "round_id"), _int(d["client_id"], "client_id", 1),
                   _key(d["cipher_key"], "cipher_key"), _key(d["mask_key"], "mask_key"),
                   _signature(d["signature"], "signature"))


class PeerKeys(NamedTuple):
    """A neighbour's advertised keys, its identity key (bound when it enrolled) and its
    signature of the advertised keys."""

    cipher_key: bytes
    mask_key: bytes
    identity_key: bytes
    signature: bytes


PEER_FIELDS = tuple(PeerKeys._fields)


@dataclass(frozen=True)
class KeysRelay:
    """Phase 1, server -> client: the keys of each neighbour that advertised."""

    round_id: int
    keys: dict[int, PeerKeys]
    TYPE = "keys_relay"

    def to_dict(self) -> dict:
        return {"type": self.TYPE, "round_id": self.round_id,
                "keys": {str(v): {f: _b64(getattr(p, f)) for f in PEER_FIELDS}
                         for v, p in sorted(self.keys.items())}}

    @classmethod
    def from_dict(cls, data: Any) -> KeysRelay:
        d = _fields(data, cls.TYPE, {"round_id", "keys"})

        def peer(item: Any, what: str) -> PeerKeys:
            if not isinstance(item, dict) or set(item) != set(PEER_FIELDS):
                raise MessageError(f"{what} must be an object with exactly {list(PEER_FIELDS)}")
            return PeerKeys(_key(item["cipher_key"], f"{what}.cipher_key"),
                            _key(item["mask_key"], f"{what}.mask_key"),
                            _key(item["identity_key"], f"{what}.identity_key"),
                            _signature(item["signature"], f"{what}.signature"))
        return cls(_int(d["round_id"], "round_id"), _id_map(d["keys"], "keys", peer))


@dataclass(frozen=True)
class ShareKeys:
    """Phase 1, client -> server: a commitment to the seed and one ciphertext per neighbour."""

    round_id: int
    client_id: int
    seed_commitment: bytes
    ciphertexts: dict[int, bytes]
    TYPE = "share_keys"

    def to_dict(self) -> dict:
        return {"type": self.TYPE, "round_id": self.round_id, "client_id": self.client_id,
                "seed_commitment": _b64(self.seed_commitment),
                "ciphertexts": {str(v): _b64(c) for v, c in sorted(self.ciphertexts.items())}}

    @classmethod
    def from_dict(cls, data: Any) -> ShareKeys:
        d = _fields(data, cls.TYPE, {"round_id", "client_id", "seed_commitment", "ciphertexts"})
        return cls(_int(d["round_id"], "round_id"), _int(d["client_id"], "client_id", 1),
                   _bytes(d["seed_commitment"], "seed_commitment", 32),
                   _id_map(d["ciphertexts"], "ciphertexts", _ciphertext))


@dataclass(frozen=True)
class SharesRelay:
    """Phase 2, server -> client: the ciphertexts addressed to it, by sender."""

    round_id: int
    ciphertexts: dict[int, bytes]
    TYPE = "shares_relay"

    def to_dict(self) -> dict:
        return {"type": self.TYPE, "round_id": self.round_id,
                "ciphertexts": {str(u): _b64(c) for u, c in sorted(self.ciphertexts.items())}}

    @classmethod
    def from_dict(cls, data: Any) -> SharesRelay:
        d = _fields(data, cls.TYPE, {"round_id", "ciphertexts"})
        return cls(_int(d["round_id"], "round_id"),
                   _id_map(d["ciphertexts"], "ciphertexts", _ciphertext))


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Phase 2, client -> server: the masked update, a vector of uint16 (compressed rounds),
    uint32 or uint64 words."""

    round_id: int
    client_id: int
    masked: np.ndarray

    def to_bytes(self) -> bytes:
        meta = {"format": MASKED_FORMAT, "round_id": str(self.round_id),
                "client_id": str(self.client_id)}
        return tensorfile.save({"masked": np.ascontiguousarray(self.masked)}, meta)

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int) -> MaskedInput:
        """Parse safetensors bytes of at most `max_bytes`."""
        if len(data) > max_bytes:
            raise MessageError(f"masked input of {len(data)} bytes is over the "
                               f"{max_bytes}-byte limit")
        try:
            tensors, meta = tensors_from_bytes(data)
        except WireError as err:
            raise MessageError(f"masked input is not safetensors: {err}") from None
        if meta.get("format") != MASKED_FORMAT:
            raise MessageError(f"masked input metadata format must be {MASKED_FORMAT!r}")
        if set(tensors) != {"masked"}:
            raise MessageError(f"masked input must hold one tensor 'masked', got {sorted(tensors)}")
        masked = tensors["masked"]
        if masked.dtype not in (np.uint16, np.uint32, np.uint64) or masked.ndim != 1:
            raise MessageError(f"masked input must be a 1-D uint16, uint32 or uint64 vector, got "
                               f"{masked.dtype} of shape {masked.shape}")
        ids = {}
        for key in ("round_id", "client_id"):
            value = meta.get(key, "")
            if not (value.isascii() and value.isdigit() and value == str(int(value))
                    and int(value) <= MAX_ID):
                raise MessageError(f"masked input metadata {key!r} is not an integer")
            ids[key] = int(value)
        return cls(ids["round_id"], ids["client_id"], masked)


@dataclass(frozen=True)
class ConsistencyRequest:
    """Phase 3, server -> client: the round's survivors, every client whose masked input is
    in the sum (the same list for every client; each signs it)."""

    round_id: int
    survivors: tuple[int, ...]
    TYPE = "consistency_request"

    def to_dict(self) -> dict:
        return {"type": self.TYPE, "round_id": self.round_id, "survivors": list(self.survivors)}

    @classmethod
    def from_dict(cls, data: Any) -> ConsistencyRequest:
        d = _fields(data, cls.TYPE, {"round_id", "survivors"})
        return cls(_int(d["round_id"], "round_id"), _id_list(d["survivors"], "survivors"))


@dataclass(frozen=True)
class ConsistencyResponse:
    """Phase 3, client -> server: its signature of the survivors (`client.survivors_data`)."""

    round_id: int
    client_id: int
    signature: bytes
    TYPE = "consistency_response"

    def to_dict(self) -> dict:
        return {"type": self.TYPE, "round_id": self.round_id, "client_id": self.client_id,
                "signature": _b64(self.signature)}

    @classmethod
    def from_dict(cls, data: Any) -> ConsistencyResponse:
        d = _fields(data, cls.TYPE, {"round_id", "client_id", "signature"})
        return cls(_int(d["round_id"], "round_id"), _int(d["client_id"], "client_id", 1),
                   _signature(d["signature"], "signature"))


@dataclass(frozen=True)
class UnmaskRequest:
    """Phase 4, server -> client: which neighbours sent a masked input and which did not,
    and the signatures of the survivors by the neighbours that signed them."""

    round_id: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: dict[int, bytes]
    TYPE = "unmask_request"

    def to_dict(self) -> dict:
        return {"type": self.TYPE, "round_id": self.round_id,
                "survivors": sorted(self.survivors), "dropped": sorted(self.dropped),
                "signatures": {str(v): _b64(g) for v, g in sorted(self.signatures.items())}}

    @classmethod
    def from_dict(cls, data: Any) -> UnmaskRequest:
        d = _fields(data, cls.TYPE, {"round_id", "survivors", "dropped", "signatures"})
        return cls(_int(d["round_id"], "round_id"), _id_list(d["survivors"], "survivors"),
                   _id_list(d["dropped"], "dropped"),
                   _id_map(d["signatures"], "signatures", _signature))


@dataclass(frozen=True)
class UnmaskResponse:
    """Phase 3, client -> server: seed shares of survivors (itself too), key shares of dropped."""

    round_id: int
    client_id: int
    seed_shares: dict[int, bytes]
    key_shares: dict[int, bytes]
    TYPE = "unmask_response"

    def to_dict(self) -> dict:
        return {"type": self.TYPE, "round_id": self.round_id, "client_id": self.client_id,
                "seed_shares": {str(v): _b64(s) for v, s in sorted(self.seed_shares.items())},
                "key_shares": {str(v): _b64(s) for v, s in sorted(self.key_shares.items())}}

    @classmethod
    def from_dict(cls, data: Any) -> UnmaskResponse:
        d = _fields(data, cls.TYPE, {"round_id", "client_id", "seed_shares", "key_shares"})
        seeds = _id_map(d["seed_shares"], "seed_shares", _share)
        keys = _id_map(d["key_shares"], "key_shares", _share)
        if set(seeds) & set(keys):
            raise MessageError(f"both shares revealed for clients {sorted(set(seeds) & set(keys))}")
        return cls(_int(d["round_id"], "round_id"), _int(d["client_id"], "client_id", 1),
                   seeds, keys)


@dataclass(frozen=True)
class AbortNotice:
    """Client -> server, in place of its message for the current phase: it left the round
    without revealing anything more, and why (a code of `ABORT_REASONS`, never free text)."""

    round_id: int
    client_id: int
    reason: str
    TYPE = "abort"

    def to_dict(self) -> dict:
        return {"type": self.TYPE, "round_id": self.round_id, "client_id": self.client_id,
                "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Any) -> AbortNotice:
        d = _fields(data, cls.TYPE, {"round_id", "client_id", "reason"})
        if not isinstance(d["reason"], str) or d["reason"] not in ABORT_REASONS:
            raise MessageError(f"abort reason must be one of {sorted(ABORT_REASONS)}")
        return cls(_int(d["round_id"], "round_id"), _int(d["client_id"], "client_id", 1),
                   d["reason"])


JSON_MESSAGES = {m.TYPE: m for m in (AdvertiseKeys, KeysRelay, ShareKeys, SharesRelay,
                                     ConsistencyRequest, ConsistencyResponse, UnmaskRequest,
                                     UnmaskResponse, AbortNotice)}


def message_from_dict(data: Any):
    """Any JSON message, by its "type" field; MessageError if unknown or malformed."""
    kind = data.get("type") if isinstance(data, dict) else None
    if not isinstance(kind, str) or kind not in JSON_MESSAGES:
        raise MessageError(f"unknown message type {kind!r:.60}; "
                           f"expected one of {sorted(JSON_MESSAGES)}")
    return JSON_MESSAGES[kind].from_dict(data)


def message_from_json(text: str | bytes, max_bytes: int = 1 << 20):
    """Parse a JSON message body of at most `max_bytes`."""
    if len(text) > max_bytes:
        raise MessageError(f"message of {len(text)} bytes is over the {max_bytes}-byte limit")
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):  # also too deep, too long ints
        raise MessageError("message is not JSON") from None
    return message_from_dict(data)
