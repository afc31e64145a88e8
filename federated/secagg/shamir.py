"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

Why our own: the maintained library that has it, pycryptodome's
`Crypto.Protocol.SecretSharing.Shamir`, shares only 16-byte secrets (over GF(2^128)) and
would add a second crypto library beside `cryptography`; the PyPI packages named after
Shamir are small, unmaintained projects. The scheme itself is a few lines.

Why this field: 2^521 - 1 is a Mersenne prime (no primality certificate needed) above
2^256, so every 32-byte secret (a mask seed or an X25519 private key) is one field element.
A share is (x, y) with x the holder's client id (1..n, never 0) and y a 66-byte value.
"""
from __future__ import annotations

import itertools
import math
import random
import secrets
from collections.abc import Callable, Mapping

PRIME = 2 ** 521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


def split(secret: bytes, threshold: int, holders: list[int],
          randbelow: Callable[[int], int] = secrets.randbelow) -> dict[int, bytes]:
    """Shares of `secret` for each holder id; any `threshold` of them give it back."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold {threshold} not in 1..{len(holders)} holders")
    if len(set(holders)) != len(holders) or not all(0 < x < PRIME for x in holders):
        raise ValueError("holder ids must be distinct and in 1..p-1")
    coeffs = [int.from_bytes(secret, "big")] + [randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coeffs, x).to_bytes(SHARE_BYTES, "big") for x in holders}


def _evaluate(coeffs: list[int], x: int) -> int:
    y = 0
    for c in reversed(coeffs):
        y = (y * x + c) % PRIME
    return y


def combine(shares: Mapping[int, bytes]) -> bytes | None:
    """The secret at x = 0 interpolated from exactly the given shares (None if not 32 bytes).

    With fewer than the threshold, or a wrong share, the result is a meaningless value
    (None when it does not even fit in 32 bytes): check it against a commitment.
    """
    points = [(x, int.from_bytes(y, "big")) for x, y in shares.items()]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret.to_bytes(SECRET_BYTES, "big") if secret < 2 ** (8 * SECRET_BYTES) else None


def recover(shares: Mapping[int, bytes], threshold: int, is_valid: Callable[[bytes], bool],
            max_tries: int = 256) -> bytes | None:
    """A secret from `threshold` of `shares` that passes `is_valid` (robust to a few bad shares).

    Tries the first `threshold` shares, then up to `max_tries` subsets drawn at random
    (with e bad shares among m, each draw is all good with probability
    C(m - e, t) / C(m, t)); None if there are too few shares or no subset gives a valid
    secret.
    """
    if len(shares) < threshold:
        return None
    items = sorted(shares.items())
    draw = random.Random(0)  # public shares: the subset choice need not be secret
    subsets = itertools.chain([items[:threshold]],
                              (draw.sample(items, threshold) for _ in range(max_tries - 1)))
    if math.comb(len(items), threshold) <= max_tries:  # few enough to try them all
        subsets = itertools.combinations(items, threshold)
    for subset in subsets:
        secret = combine(dict(subset))
        if secret is not None and is_valid(secret):
            return secret
    return None


def is_share(data: bytes) -> bool:
    """Whether `data` is a well-formed share value (66 bytes, below the prime)."""
    return len(data) == SHARE_BYTES and int.from_bytes(data, "big") < PRIME
