"""Fixed-point encoding of float updates as integers modulo 2^b, chosen so sums never wrap.

A device clamps every coordinate to [-B, B] and rounds x * scale to an integer q with
|q| <= M = min(floor((2^(b-1) - 1) / n), 2^53) (2^53: exact in float64), scale = M / B.
The sum of n such integers lies in [-nM, nM], inside the signed range of b bits, so the
sum taken modulo 2^b (what unmasking yields) reads back exactly as a signed integer.
Decoding divides by `scale`; each device's rounding error is at most step/2 (step =
1/scale), so the decoded sum is within n * step / 2 of the float sum of the clamped updates.

How B is chosen: a clipped update has L2 norm <= C, so every coordinate is in [-C, C]; the
DP noise adds N(0, sigma^2) per coordinate, bounded by tau * sigma with
tau = sqrt(2 ln(d / 1e-12)): since P(|Z| > tau) <= exp(-tau^2 / 2), a device of d
coordinates clamps anything with probability below 1e-12, so the Gaussian mechanism's
analysis holds up to an extra delta of n * 1e-12 per round (tau = 9.2 for d = 1.5M).
Clamping on the device is what
enforces the bound: with secure aggregation the server cannot see a masked update, so this
clamp (and the clipping before the noise) is what bounds an honest device's influence on
the sum. A tampered device could still add any value modulo 2^b (only zero-knowledge range
proofs would stop that); the server should sanity-check the unmasked sum.

How b is chosen: 32 bits (a masked update is then exactly as large as its float32 form)
unless the step would exceed a thousandth of the per-coordinate noise (or, without noise, of
the rms coordinate C / sqrt(d) of a clipped update); then 64 bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from federated.numbers import is_finite_number

BITS = (32, 64)
CLAMP_PROBABILITY = 1e-12  # at most this chance that a device's noised update gets clamped
_DTYPES = {32: (np.int32, np.uint32), 64: (np.int64, np.uint64)}


class EncodingError(ValueError):
    """An update that cannot be encoded (wrong size, non-finite values)."""


@dataclass(frozen=True)
class FixedPoint:
    """Integers modulo 2^bits for sums of up to `max_clients` vectors clamped to +-bound."""

    bits: int
    bound: float
    max_clients: int

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {self.bits}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"bound must be a positive finite number, got {self.bound}")
        if not 1 <= self.max_clients < 2 ** (self.bits - 2):
            raise ValueError(f"max_clients {self.max_clients} out of range for {self.bits} bits")

    @classmethod
    def choose(cls, clip_norm: float, noise_stddev: float, num_clients: int,
               dimension: int) -> FixedPoint:
        """The encoding for `num_clients` updates clipped to `clip_norm` plus N(0, stddev^2)."""
        if clip_norm <= 0 or noise_stddev < 0 or dimension < 1:
            raise ValueError("need clip_norm > 0, noise_stddev >= 0 and dimension >= 1")
        tail = math.sqrt(2 * math.log(dimension / CLAMP_PROBABILITY))
        bound = clip_norm + tail * noise_stddev
        resolution = (noise_stddev or clip_norm / math.sqrt(dimension)) / 1000
        for bits in BITS:
            encoding = cls(bits, bound, num_clients)
            if encoding.step <= resolution:
                break
        return encoding

    @property
    def max_int(self) -> int:
        """The largest |q| a device may send: n * max_int < 2^(bits-1), and at most 2^53 so
        that float64 arithmetic on q is exact."""
        return min((2 ** (self.bits - 1) - 1) // self.max_clients, 2 ** 53)

    @property
    def scale(self) -> float:
        return self.max_int / self.bound

    @property
    def step(self) -> float:
        """The quantisation step: one integer unit."""
        return 1.0 / self.scale

    @property
    def dtype(self) -> np.dtype:
        """The unsigned dtype of encoded and masked vectors."""
        return np.dtype(_DTYPES[self.bits][1])

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Clamp to +-bound, round to integers, and map to unsigned words (two's complement)."""
        x = np.asarray(values, dtype=np.float64).ravel()
        if not np.isfinite(x).all():
            raise EncodingError("update has non-finite values")
        x = np.clip(x, -self.bound, self.bound) * self.scale
        q = np.clip(np.rint(x), -self.max_int, self.max_int).astype(np.int64)
        signed, unsigned = _DTYPES[self.bits]
        return q.astype(signed).view(unsigned)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """The float64 sum from the modular sum of at most `max_clients` encoded vectors."""
        signed, unsigned = _DTYPES[self.bits]
        return np.asarray(total, dtype=unsigned).view(signed).astype(np.float64) / self.scale

    def to_dict(self) -> dict:
        return {"bits": self.bits, "bound": self.bound, "max_clients": self.max_clients}

    @classmethod
    def from_dict(cls, data: dict) -> FixedPoint:
        """Parse and check; raises ValueError with the reason."""
        if not isinstance(data, dict) or set(data) != {"bits", "bound", "max_clients"}:
            raise ValueError("encoding must be an object with bits, bound and max_clients")
        bits, bound, clients = data["bits"], data["bound"], data["max_clients"]
        if type(bits) is not int or type(clients) is not int:
            raise ValueError("encoding bits and max_clients must be integers")
        if not is_finite_number(bound):
            raise ValueError("encoding bound must be a finite number")
        return cls(bits, float(bound), clients)


@dataclass(frozen=True)
class ModularIntegers:
    """Words modulo 2^bits that the device's codec already made (`federated.compression`:
    rounded, noised integers reduced mod 2^16): sent as they are, summed modulo 2^bits;
    `decode` returns the modular sum itself, for the codec to read back."""

    bits: int = 16

    def __post_init__(self) -> None:
        if self.bits != 16:
            raise ValueError(f"modular integers are 16 bits, got {self.bits}")

    @property
    def max_clients(self) -> int:
        """No limit here: the codec's scale keeps the sum inside the modulus."""
        return 2 ** 31

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """The codec's words, checked: uint16 only (the modulus is part of the round)."""
        if not isinstance(values, np.ndarray) or values.dtype != self.dtype:
            raise EncodingError(f"a compressed update must be uint16 words, got "
                                f"{getattr(values, 'dtype', type(values).__name__)}")
        return values.ravel().copy()

    def decode(self, total: np.ndarray) -> np.ndarray:
        """The modular sum (uint16 words)."""
        return np.asarray(total, dtype=self.dtype).copy()

    def to_dict(self) -> dict:
        return {"kind": "modular", "bits": self.bits}


def encoding_from_dict(data: dict) -> FixedPoint | ModularIntegers:
    """A round's encoding from its JSON: fixed point, or the codec's modular integers."""
    if isinstance(data, dict) and data.get("kind") == "modular":
        if set(data) != {"kind", "bits"} or type(data["bits"]) is not int:
            raise ValueError("modular encoding must be an object with kind and integer bits")
        return ModularIntegers(data["bits"])
    return FixedPoint.from_dict(data)


def flatten(tensors: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> np.ndarray:
    """All tensors as one float32 vector, in sorted name order, after checking their shapes."""
    if set(tensors) != set(shapes):
        raise EncodingError(f"tensor names {sorted(tensors)} differ from {sorted(shapes)}")
    for name in sorted(shapes):
        if tuple(tensors[name].shape) != tuple(shapes[name]):
            raise EncodingError(f"tensor {name!r} has shape {tensors[name].shape}, "
                                f"expected {tuple(shapes[name])}")
    return np.concatenate([np.asarray(tensors[n], dtype=np.float32).ravel()
                           for n in sorted(shapes)]) if shapes else np.zeros(0, np.float32)


def unflatten(vector: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The inverse of `flatten`: named float32 tensors of the given shapes."""
    sizes = [math.prod(shapes[n]) for n in sorted(shapes)]
    if vector.size != sum(sizes):
        raise EncodingError(f"vector has {vector.size} values, shapes need {sum(sizes)}")
    parts = np.split(np.asarray(vector, dtype=np.float32), np.cumsum(sizes)[:-1])
    return {n: p.reshape(shapes[n]) for n, p in zip(sorted(shapes), parts)}


def dimension(shapes: dict[str, tuple[int, ...]]) -> int:
    """The number of coordinates of a flattened update."""
    return sum(math.prod(s) for s in shapes.values())
