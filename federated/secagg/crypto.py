"""The cryptographic primitives of secure aggregation, all from `cryptography`.

- Key agreement: X25519, the shared secret run through HKDF-SHA256 with a label that
  names the purpose, the round id and the round's public seed (domain separation).
- Share encryption: AES-256-GCM with a random 96-bit nonce and associated data that binds
  the round, the sender and the receiver, so the relaying server can neither read, alter
  nor redirect a share.
- Mask generator (PRG): the AES-256-CTR keystream under a 32-byte seed, read as uint32 or
  uint64 words. Each seed is fresh per round and purpose, so the all-zero nonce is safe.
- Signatures: Ed25519 under the device's long-lived identity key (bound to the device when
  it enrols), over a label naming the purpose, the round's context and the signed data:
  a device signs its advertised keys and, before unmasking, the set of survivors.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                          PublicFormat)

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SIGNATURE_BYTES = 64
LABEL = b"private-keyboard/secagg/v1/"
RandomBytes = Callable[[int], bytes]


def new_private_key(randbytes: RandomBytes = os.urandom) -> X25519PrivateKey:
    """A fresh X25519 private key (from `randbytes`, the OS's secure source by default)."""
    return X25519PrivateKey.from_private_bytes(randbytes(KEY_BYTES))


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32-byte raw public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The 32-byte raw private key (what gets secret-shared)."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def check_public_key(data: bytes) -> str | None:
    """Why `data` is not a usable X25519 public key, or None if it is.

    Rejects wrong lengths and the small-order points (whose shared secret is all zeros).
    """
    if len(data) != KEY_BYTES:
        return f"public key must be {KEY_BYTES} bytes, got {len(data)}"
    try:
        X25519PrivateKey.from_private_bytes(b"\x01" * KEY_BYTES).exchange(
            X25519PublicKey.from_public_bytes(data))
    except ValueError:
        return "public key is a small-order X25519 point"
    return None


def agree(private: X25519PrivateKey, peer_public: bytes, purpose: bytes, context: bytes) -> bytes:
    """A 32-byte key shared with the peer: HKDF-SHA256(X25519(private, peer_public))."""
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=LABEL + purpose + b"/" + context).derive(shared)


def encrypt(key: bytes, plaintext: bytes, associated: bytes,
            randbytes: RandomBytes = os.urandom) -> bytes:
    """nonce || AES-GCM(key, nonce, plaintext, associated data)."""
    nonce = randbytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, blob: bytes, associated: bytes) -> bytes | None:
    """The plaintext of `encrypt`, or None if the blob or its associated data was altered."""
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)
    except (InvalidTag, ValueError):
        return None


def commitment(context: bytes, secret: bytes) -> bytes:
    """SHA-256 commitment to a uniformly random 32-byte secret (hides it, binds to it)."""
    return hashlib.sha256(LABEL + b"commit/" + context + b"/" + secret).digest()


def identity_bytes(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte raw Ed25519 public key of an identity key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def check_identity_key(data: bytes) -> str | None:
    """Why `data` is not a usable Ed25519 public key, or None if it is."""
    if len(data) != KEY_BYTES:
        return f"identity key must be {KEY_BYTES} bytes, got {len(data)}"
    try:
        Ed25519PublicKey.from_public_bytes(data)
    except ValueError:
        return "identity key is not an Ed25519 public key"
    return None


def sign(key: Ed25519PrivateKey, purpose: bytes, context: bytes, data: bytes) -> bytes:
    """The 64-byte Ed25519 signature of (purpose, round context, data)."""
    return key.sign(LABEL + b"sign/" + purpose + b"/" + context + b"/" + data)


def verify(public: bytes, purpose: bytes, context: bytes, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is `sign(key, purpose, context, data)` for the key of `public`."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            signature, LABEL + b"sign/" + purpose + b"/" + context + b"/" + data)
    except (InvalidSignature, ValueError):
        return False
    return True


_zeros = bytearray()


def expand(seed: bytes, length: int, dtype: np.dtype) -> np.ndarray:
    """`length` pseudo-random words of `dtype` (uint16/uint32/uint64): the AES-256-CTR keystream."""
    global _zeros
    nbytes = length * np.dtype(dtype).itemsize
    if len(_zeros) < nbytes:
        _zeros = bytearray(nbytes)
    out = bytearray(nbytes + 15)  # update_into needs room for one block beyond the input
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    encryptor.update_into(memoryview(_zeros)[:nbytes], out)
    return np.frombuffer(out, dtype=dtype, count=length)
