"""Device identity keys (Ed25519, from `cryptography`): generated and kept by the device,
bound to its device id when it enrols, and used to prove it is the same device later
(token recovery; the secure rounds' consistency signatures).

Public keys travel as unpadded base64url of the 32 raw bytes. A recovery proof is the
signature of `RECOVERY_CONTEXT || challenge` (the challenge a server handed out).
"""
from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

RECOVERY_CONTEXT = b"private-keyboard/token-recovery-1\n"


class IdentityError(ValueError):
    """A public key or signature that is not well-formed, or a signature that does not verify."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: object, what: str, size: int) -> bytes:
    """`size` bytes from unpadded base64url text; IdentityError naming `what` otherwise."""
    if not isinstance(text, str) or len(text) > 4 * size:
        raise IdentityError(f"{what} must be base64url text of {size} bytes")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise IdentityError(f"{what} is not base64url") from None
    if len(data) != size:
        raise IdentityError(f"{what} must be {size} bytes, not {len(data)}")
    return data


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The key as PKCS#8 PEM (unencrypted: the file is private to the device's user)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError("the identity key file does not hold an Ed25519 key")
    return key


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as sent to the server (base64url of 32 raw bytes)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return b64(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def parse_public_key(text: object) -> Ed25519PublicKey:
    """A public key from its text form; IdentityError if malformed."""
    raw = unb64(text, "identity_key", 32)
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise IdentityError("identity_key is not an Ed25519 public key") from None


def sign(key: Ed25519PrivateKey, context: bytes, message: bytes) -> str:
    """The signature of `context || message`, as base64url text."""
    return b64(key.sign(context + message))


def verify(public: str | Ed25519PublicKey, context: bytes, message: bytes,
           signature: object) -> None:
    """Check a signature made by `sign`; IdentityError if it does not verify."""
    key = parse_public_key(public) if isinstance(public, str) else public
    try:
        key.verify(unb64(signature, "signature", 64), context + message)
    except InvalidSignature:
        raise IdentityError("the signature does not verify with this device's identity "
                            "key") from None
