"""Compressed updates: in secure rounds the distributed discrete Gaussian of Kairouz, Liu
and Steinke (ICML 2021), exact under the modular sum, on a shared random subset of
coordinates; in plain rounds the same rotation of every coordinate, the device's full
discrete Gaussian noise, then a coarse requantization (`PLAIN_SCHEME`, below).

Per round a public seed (`round_seed`: the round id and the sha256 of the round's model, so
device and server derive it and neither picks it) fixes
1. a random subset S of `kept` of the d coordinates (in random order), cut into blocks of
   `block` (a power of two) coordinates, and
2. random signs xi for a randomized Hadamard rotation of each block, R = H diag(xi) / sqrt(B).
A device clips its update x to ||x|| <= C (done before, `privacy.clip`), takes y = x[S] and
clips it again, in the kept subspace, to ||y|| <= C_kept = C min(1, s sqrt(k / d))
(`kept_clip_norm`; k the real, not padding, coordinates of S; s = `KEPT_CLIP_SLACK`),
rotates and scales it, z = gamma * R y (||z|| <= c = gamma * C_kept), rounds z
stochastically to integers, again until ||q|| <= Delta (conditional randomized rounding,
KLS Algorithm 2; one retry is needed with probability below `ROUNDING_BETA`), adds
discrete Gaussian noise N_Z(0, sigma^2) to every coordinate (integers: exact under
the sum, `discrete_gaussian`), and reduces mod 2^bits. The server's modular sum of n such
vectors, read as centred integers, is the integer sum unless a coordinate of it left
(-2^(bits-1), 2^(bits-1)) (modular clipping; `Compression.plan` picks gamma so that this
has probability below `MODULAR_CLIP_PROBABILITY` per round); it divides by gamma, rotates
back, scatters to S and multiplies by d / kept, an unbiased estimate of the sum of the
clipped updates over the random subset (`decode_sum`) while the second clip does not bind.

Why the second clip: S is public before the device trains, so the privacy bound must hold
for an update that puts all its norm on S. Clipped only to C, the sensitivity is gamma * C
on `kept` coordinates, and the d / kept rescale then gives the decoded mean d / kept (4.13
here) times the float path's noise energy. A random subset of k of d coordinates carries
k / d of an update's squared norm on average, so C sqrt(k / d) is the kept part's typical
norm at ||x|| = C; clipping to s times that (s a little above 1, so that the clip seldom
binds on real updates: measured in BENCHMARKS.md) bounds every device's contribution to
the released sum by C_kept whatever its data, since the clip is deterministic once the
public seed is fixed. The sensitivity Delta, the noise z Delta / sqrt(h) and the scale all
follow C_kept, so the epsilon of a noise multiplier is unchanged and the decoded noise
energy is s^2 times the float path's. "ddg16-full" keeps every coordinate: C_kept = C.

Plain rounds (`PLAIN_SCHEME`, whatever compressed scheme the round names): the server
decodes each upload alone, so nothing has to survive a modular sum, and with DP every
coordinate is dominated by the device's own noise (std z C against a signal of about
C / sqrt(d)): a subset would put d / kept times the noise variance on a quarter of the
coordinates. So the device keeps all of them (the "-full" layout: C_kept = C), rotates,
scales by gamma = `PLAIN_UNITS` / C (no modulus to fit, so large: the rounding's share of
Delta is a few parts per million), rounds and adds its full discrete Gaussian noise
z Delta exactly as above, giving integers v; only then it requantizes them
(`requantize`): the integer step q = ceil(max|v| / L), L = 2^(bits-1) - 1 = 15, and
u = v / q rounded stochastically (unbiased) to [-L, L]; the wire form deflates u
(`federated.wire.encode_compressed_update`). This is post-processing of the DP output v:
it changes no epsilon (the accountant's charge is that of v, `privacy.compressed_noise`).
It costs about q^2 / 6 per coordinate, 2% of v's energy (max|v| is about 5.3 standard
deviations of a rotated, near-Gaussian coordinate), where the subset cost 300% without
noise; 31 levels rather than 15 because the deflated values, about 3.6 bits each, still
fit 4 bits per parameter with the header (15 levels: 2.5 bits, 10% of the energy). The
server checks the step (an integer, at most what an honest upload's values need:
`coordinate_bound` over L) and the norm of q u (the honest bound plus `requantization_bound`),
multiplies back, rotates back and averages (`decode_integers`). The plain form's layout and
scale are a function of the seed, d and C (`Compression.plain`): the device derives them and
refuses a task with others, and refuses a noise sigma that could take its integers past
`PLAIN_LIMIT` (`wraps`): nothing modular bounds them, and past int64 they wrapped and the
noise was lost (a scale or noise multiplier of 1e20 from a server sent the update without
noise). What leaves the device is a function of v and of randomness drawn after it from
the device's own generator (seeded from the OS, never from the public seed): the step, the
values and the deflated length are post-processing of v.

Sizes: bits = 16 and kept = the largest multiple of the block with bits * kept <= 4 * d, so
an upload is at most 4 bits per parameter (3.88 for this project's LSTM: kept = 23 blocks of
2^14 = 376,832 of 1,554,628 coordinates); plain uploads about 3.6 (measured: BENCHMARKS.md).
Privacy of the sum is in `federated.privacy`
(`ddg_rho`): Delta (`Compression.sensitivity`) is the L2 sensitivity in integer units,
sigma the noise each honest device adds, and the sum of h honest devices' noise satisfies
KLS's Theorem 1. The device derives C_kept itself from C, d and k (the task's
`kept_clip_norm` must agree, `from_dict`), so a server cannot widen it. A tampered device
can still add any words modulo 2^16 (no range proofs): the server checks the norm of the
centred sum, as for fixed-point rounds. NumPy only; no networking.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from federated.numbers import is_finite_number

# the distributed discrete Gaussian, 16-bit modulus: on a random quarter of the coordinates
# (<= 4 bits per parameter), or on all of them ("-full": 16 bits, no noise amplification)
SCHEMES = ("ddg16", "ddg16-full")
BITS = 16
# plain rounds: every coordinate, the full noise, then requantized to 2^(bits-1) - 1 levels
# a side (module doc); gamma * C in integer units
PLAIN_SCHEME = "dg-q5"
PLAIN_BITS = 5
PLAIN_UNITS = float(1 << 20)
# the plain form's integers stay below this (float64 holds them exactly, int64 with room):
# its scale and noise come from the task, and nothing modular bounds them (`Compression.wraps`)
PLAIN_LIMIT = 1 << 52
ALL_SCHEMES = (*SCHEMES, PLAIN_SCHEME)
_FULL_LAYOUT = ("ddg16-full", PLAIN_SCHEME)
BLOCK = 1 << 14
MAX_BITS_PER_PARAM = 4
MODULAR_CLIP_PROBABILITY = 1e-9  # at most this chance that a round's sum wraps anywhere
ROUNDING_BETA = 1e-4  # conditional rounding: chance that one rounding must be redone
SIGMA_MIN = 4.0  # integer units: KLS's slack tau is then below 1e-60 (`privacy.ddg_rho`)
SEED_BYTES = 32
# s: the kept part of an update is clipped to s * C * sqrt(kept / d) (measured on real
# updates in BENCHMARKS.md, "Compressed uploads": how often each s binds)
KEPT_CLIP_SLACK = 1.05
_SEED_CONTEXT = b"private-keyboard/compression-1"


class CompressionError(ValueError):
    """Compressed data or parameters that do not fit the round; the message says why."""


def round_seed(round_id: int, model_sha256: str) -> bytes:
    """The round's public seed: both sides derive it and an honest server does not choose
    it (a malicious one could try round ids until it likes S; the kept-part clip bounds every
    device's contribution whatever S is, so that gains it nothing for privacy)."""
    try:
        model = bytes.fromhex(model_sha256)
    except (TypeError, ValueError):
        raise CompressionError("model sha256 must be 64 hex digits") from None
    if len(model) != 32 or not 0 <= round_id < 2 ** 63:
        raise CompressionError("need a round id and a 32-byte model sha256")
    return hashlib.sha256(_SEED_CONTEXT + round_id.to_bytes(8, "big") + model).digest()


def layout(dimension: int, bits: int = BITS, scheme: str = SCHEMES[0]) -> tuple[int, int]:
    """(kept, block) for `dimension` coordinates: the most whole blocks with
    bits * kept <= MAX_BITS_PER_PARAM * dimension (smaller blocks for tiny models); for
    "ddg16-full" and the plain form, every coordinate, padded with zeros to whole blocks."""
    if scheme in _FULL_LAYOUT:
        block = min(BLOCK, 1 << max(1, (dimension - 1).bit_length()))
        return -(-dimension // block) * block, block
    budget = MAX_BITS_PER_PARAM * dimension // bits
    if budget < 2:
        raise CompressionError(f"{dimension} coordinates are too few to compress")
    block = min(BLOCK, 1 << (budget.bit_length() - 1))
    return budget // block * block, block


def kept_clip_norm(clip_norm: float, dimension: int, kept: int,
                   slack: float = KEPT_CLIP_SLACK) -> float:
    """C_kept = C min(1, s sqrt(k / d)), k = min(kept, d) the real kept coordinates: the
    norm the kept part of an update is clipped to (public: no data goes into it)."""
    return clip_norm * min(1.0, slack * math.sqrt(min(kept, dimension) / dimension))


def rounded_norm_bound(c: float, kept: int, beta: float = ROUNDING_BETA) -> float:
    """Delta: the L2 norm conditional randomized rounding keeps a vector of norm <= c within
    (KLS 2021, the bound of their Algorithm 2; the deterministic c + sqrt(kept) otherwise)."""
    probable = c * c + kept / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(kept) / 2)
    return min(math.sqrt(probable), c + math.sqrt(kept))


def _tail(kept: int, probability: float = MODULAR_CLIP_PROBABILITY) -> float:
    """t with kept * 2 exp(-t^2 / 2) = probability (a sub-Gaussian union bound)."""
    return math.sqrt(2 * math.log(2 * kept / probability))


def discrete_gaussian(sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` independent samples of the discrete Gaussian N_Z(0, sigma^2) (Canonne, Kamath,
    Steinke 2020, Algorithm 3, vectorised: a discrete Laplace proposal of scale
    t = floor(sigma) + 1 accepted with probability exp(-(|y| - sigma^2/t)^2 / (2 sigma^2));
    the acceptance test uses float64, not the exact arithmetic of their sampler)."""
    out = np.zeros(size, dtype=np.int64)
    if sigma <= 0 or size == 0:
        return out
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # geometric success probability: P(k failures) ~ exp(-k/t)
    filled = 0
    while filled < size:
        n = 2 * (size - filled) + 64
        y = rng.geometric(p, n) - rng.geometric(p, n)
        keep = rng.random(n) < np.exp(-(np.abs(y) - sigma * sigma / t) ** 2 / (2 * sigma * sigma))
        take = y[keep][:size - filled]
        out[filled:filled + take.size] = take
        filled += take.size
    return out


def stochastic_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x rounded to a neighbouring integer, up with probability frac(x): unbiased (int64)."""
    floor = np.floor(x)
    return (floor + (rng.random(x.size) < x - floor)).astype(np.int64)


def requantize(v: np.ndarray, levels: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """(q, u) for integers v: the integer step q = ceil(max|v| / L) (at least 1), L =
    `levels` (< 128), and u = v / q rounded stochastically, int8 in [-L, L] (E[q u] = v);
    the plain form's last step (module doc)."""
    step = max(1, -(-int(np.abs(v).max(initial=0)) // levels))
    return step, stochastic_round(v / step, rng).astype(np.int8)


def requantization_bound(step: int, size: int, tail: float = 6.0) -> float:
    """A norm the error q u - v of `requantize` exceeds with probability below
    exp(-tail^2 / 2): each |e_i| < q with E e_i^2 <= q^2 / 4, so by Hoeffding
    sum e_i^2 <= size q^2 / 4 + q^2 tail sqrt(size) / 2."""
    return step * math.sqrt(size / 4 + tail * math.sqrt(size) / 2)


def _fwht(x: np.ndarray) -> np.ndarray:
    """The unnormalised Walsh-Hadamard transform of each row of `x` (rows of 2^k), in place."""
    rows, width = x.shape
    h = 1
    while h < width:
        view = x.reshape(rows, width // (2 * h), 2, h)
        first = view[:, :, 0, :].copy()
        view[:, :, 0, :] += view[:, :, 1, :]
        view[:, :, 1, :] = first - view[:, :, 1, :]
        h *= 2
    return x


@lru_cache(maxsize=4)
def _selection(seed: bytes, dimension: int, kept: int) -> tuple[np.ndarray, np.ndarray]:
    """(the kept coordinates in a random order, the rotation's signs), from the seed alone:
    PCG64's raw output is stable across NumPy versions (its Generator methods are not)."""
    bits = np.random.PCG64(int.from_bytes(seed, "big"))
    keys = bits.random_raw(dimension)
    order = _smallest_keys(keys, min(kept, dimension))
    signs = np.where(bits.random_raw(kept) & 1, 1.0, -1.0)
    order.flags.writeable = signs.flags.writeable = False
    return order, signs


def _smallest_keys(keys: np.ndarray, k: int) -> np.ndarray:
    """np.argsort(keys, kind="stable")[:k], in about a third of its time: partition, then
    sort only the k smallest (in index order first, so equal keys keep the stable order); a
    tie across the cut sorts everything."""
    if k < keys.size:
        part = np.sort(np.argpartition(keys, k - 1)[:k])
        if np.count_nonzero(keys <= keys[part].max()) == k:
            return part[np.argsort(keys[part], kind="stable")]
    return np.argsort(keys, kind="stable")[:k]


@dataclass(frozen=True)
class Compression:
    """One round's public compression parameters (what the task carries)."""

    seed: bytes
    dimension: int  # d: the model's coordinates
    kept: int  # coordinates sent, a multiple of `block`
    block: int  # Hadamard block size, a power of two
    bits: int  # the modulus is 2^bits (the plain form: values in [-(2^(bits-1) - 1), ...])
    scale: float  # gamma: integer units per unit of the update
    clip_norm: float  # C (the kept part is clipped to `kept_clip`, derived from it)
    scheme: str = SCHEMES[0]

    def __post_init__(self) -> None:
        problems = [
            (len(self.seed) != SEED_BYTES, f"seed must be {SEED_BYTES} bytes"),
            (self.scheme not in ALL_SCHEMES,
             f"compression scheme must be one of {ALL_SCHEMES}"),
            (self.bits != (BITS if self.modular else PLAIN_BITS),
             f"bits must be {BITS if self.modular else PLAIN_BITS}, got {self.bits}"),
            (self.block < 2 or self.block & (self.block - 1),
             f"block must be a power of two, got {self.block}"),
            (self.kept <= 0 or self.kept % self.block or self.kept > max(
                self.dimension, layout(self.dimension, self.bits, self.scheme)[0]),
             f"kept must be a positive multiple of the block up to {self.dimension}"),
            (self.scheme == SCHEMES[0]
             and self.bits * self.kept > MAX_BITS_PER_PARAM * self.dimension,
             f"kept {self.kept} x {self.bits} bits is over {MAX_BITS_PER_PARAM} bits per "
             f"parameter of {self.dimension}"),
            (not (math.isfinite(self.scale) and self.scale > 0), "scale must be positive"),
            (not (math.isfinite(self.clip_norm) and self.clip_norm > 0),
             "clip_norm must be positive"),
        ]
        for bad, message in problems:
            if bad:
                raise CompressionError(message)

    @classmethod
    def plan(cls, seed: bytes, dimension: int, clip_norm: float, noise_multiplier: float,
             clients: int, honest: int, scheme: str = SCHEMES[0]) -> Compression:
        """The largest scale whose modular sum of `clients` devices, each adding the noise
        `noise_sigma(noise_multiplier, honest)`, wraps with probability below
        `MODULAR_CLIP_PROBABILITY`; the plain form (`PLAIN_SCHEME`: clients = honest = 1,
        nothing modular) scales C to `PLAIN_UNITS`. Refuses noise too small for the discrete
        Gaussian's bound to be tight (sigma below SIGMA_MIN)."""
        if scheme == PLAIN_SCHEME:
            return cls.plain(seed, dimension, clip_norm)._enough_noise(noise_multiplier,
                                                                        clients, honest)
        kept, block = layout(dimension, BITS, scheme)
        base = cls(seed, dimension, kept, block, BITS, 1.0, clip_norm, scheme)
        low, high, norm = 1e-9, 1e12, base.kept_clip
        if not base._fits(noise_multiplier, clients, honest, low / norm):
            raise CompressionError(f"a {BITS}-bit modulus cannot hold the sum of {clients} "
                                   "devices")
        for _ in range(200):
            mid = math.sqrt(low * high)
            low, high = (mid, high) if base._fits(noise_multiplier, clients, honest,
                                                  mid / norm) else (low, mid)
        return cls(seed, dimension, kept, block, BITS, low / norm, clip_norm,
                   scheme)._enough_noise(noise_multiplier, clients, honest)

    @classmethod
    def plain(cls, seed: bytes, dimension: int, clip_norm: float) -> Compression:
        """The plain form's parameters: a function of the seed, d and C alone (every
        coordinate, scale `PLAIN_UNITS` / C), so a device derives them and refuses a task
        with others (`federated.protocol.Task`): a scale the server picked could push the
        integers past `PLAIN_LIMIT`, where int64 overflows and the noise is lost."""
        kept, block = layout(dimension, BITS, PLAIN_SCHEME)
        return cls(seed, dimension, kept, block, PLAIN_BITS, PLAIN_UNITS / clip_norm,
                   clip_norm, PLAIN_SCHEME)

    def _enough_noise(self, noise_multiplier: float, clients: int, honest: int) -> Compression:
        """This spec, unless its noise is too small for the discrete Gaussian's bound (or,
        in the plain form, so large that its integers could pass `PLAIN_LIMIT`)."""
        sigma = self.noise_sigma(noise_multiplier, honest)
        if not self.modular and self.wraps(clients, sigma):
            raise CompressionError(
                f"noise multiplier {noise_multiplier:g} is too large for compressed plain "
                f"rounds: the noised integers could pass 2^52; lower the noise multiplier or "
                "switch compression off")
        if 0 < sigma < SIGMA_MIN:
            raise CompressionError(
                f"noise multiplier {noise_multiplier:g} is too small for compressed rounds of "
                f"{clients} devices: each device's discrete Gaussian would have sigma "
                f"{sigma:.3g} < {SIGMA_MIN:g} integer units; raise the noise multiplier or "
                "switch compression off")
        return self

    def _fits(self, z: float, clients: int, honest: int, scale: float) -> bool:
        c = scale * self.kept_clip
        sigma = z * rounded_norm_bound(c, self.kept) / math.sqrt(honest)
        return self._wrap_bound(clients, sigma, c) < self.modulus // 2

    def _wrap_bound(self, clients: int, sigma: float, c: float | None = None) -> float:
        """A bound every centred coordinate of the sum stays within, but with probability
        MODULAR_CLIP_PROBABILITY: all signal in one block and aligned (n c / sqrt(B) per
        rotated coordinate, sub-Gaussian over the signs), the noise's sum (sub-Gaussian,
        variance n sigma^2), and the rounding (< 1 per device)."""
        c = self.scale * self.kept_clip if c is None else c
        spread = math.sqrt((clients * c) ** 2 / self.block + clients * sigma ** 2)
        return _tail(self.kept) * spread + clients

    def coordinate_bound(self, sigma: float) -> float:
        """A bound every integer of one device's (signal, rounding and noise `sigma`) stays
        within, but with probability MODULAR_CLIP_PROBABILITY (over the public signs and
        the noise): what a plain upload's step needs (`requantize`), at most this over L."""
        return self._wrap_bound(1, sigma)

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def levels(self) -> int:
        """L: the plain form's values lie in [-L, L], L = 2^(bits-1) - 1."""
        return (1 << (self.bits - 1)) - 1

    @property
    def modular(self) -> bool:
        """Words mod 2^bits (secure rounds' schemes), or the plain form (`PLAIN_SCHEME`)."""
        return self.scheme in SCHEMES

    @property
    def kept_clip(self) -> float:
        """C_kept: the norm the kept part of an update is clipped to (`kept_clip_norm`)."""
        return kept_clip_norm(self.clip_norm, self.dimension, self.kept)

    @property
    def sensitivity(self) -> float:
        """Delta: one device's L2 norm before noise, in integer units (after rounding)."""
        return rounded_norm_bound(self.scale * self.kept_clip, self.kept)

    def noise_sigma(self, noise_multiplier: float, honest: int) -> float:
        """The discrete Gaussian's sigma each device adds so that `honest` devices' noise
        sums to noise_multiplier * Delta (`honest` = 1: the whole noise on one device)."""
        return noise_multiplier * self.sensitivity / math.sqrt(max(honest, 1))

    def wraps(self, clients: int, sigma: float) -> bool:
        """Whether a sum of `clients` devices adding `sigma` could wrap (probability over
        MODULAR_CLIP_PROBABILITY); the plain form reduces nothing, but one device's
        integers must stay below `PLAIN_LIMIT` (past 2^63 int64 wraps and the noise is
        lost: a server's huge noise multiplier must not make a device send less noise)."""
        if not self.modular:
            return self.overflows(sigma)
        return not self._wrap_bound(clients, sigma) < self.modulus // 2

    def overflows(self, sigma: float) -> bool:
        """Whether one device's integers with noise `sigma` could pass `PLAIN_LIMIT`."""
        return not self._wrap_bound(1, sigma) < PLAIN_LIMIT

    @property
    def upload_bytes(self) -> int:
        """The payload of one compressed upload (no headers)."""
        return self.kept * self.bits // 8

    # --- device ------------------------------------------------------------------------------
    def encode(self, update: np.ndarray, sigma: float,
               rng: np.random.Generator) -> np.ndarray:
        """The clipped flat update (norm <= C) as `kept` words mod 2^bits, its kept part
        clipped to C_kept, noise included (secure rounds' schemes)."""
        return np.mod(self.integers(update, sigma, rng), self.modulus).astype(np.uint16)

    def encode_plain(self, update: np.ndarray, sigma: float,
                     rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """The plain form (`PLAIN_SCHEME`): (step q, `kept` values u in [-L, L]) of the
        noised integers, requantized (`requantize`) after the noise."""
        return requantize(self.integers(update, sigma, rng), self.levels, rng)

    def integers(self, update: np.ndarray, sigma: float,
                 rng: np.random.Generator) -> np.ndarray:
        """The kept part rotated, scaled by gamma, rounded (norm <= Delta) and with the
        discrete Gaussian noise N_Z(0, sigma^2) added: `kept` int64, the DP output.
        CompressionError if they could pass `PLAIN_LIMIT` (the device's policy refuses such
        a round before it trains: `wraps`)."""
        if self.overflows(sigma):
            raise CompressionError(f"scale {self.scale:g} with noise sigma {sigma:.4g} could "
                                   "overflow the integers and lose the noise")
        y = self.kept_part(update)
        signs = _selection(self.seed, self.dimension, self.kept)[1]
        rotated = _fwht((y * signs).reshape(-1, self.block)).ravel()
        q = self._round(rotated * (self.scale / math.sqrt(self.block)), rng)
        return q + discrete_gaussian(sigma, self.kept, rng)

    def selected(self, update: np.ndarray) -> np.ndarray:
        """x[S], zero-padded to `kept`, of the flat update x (clipped to C)."""
        x = np.asarray(update, dtype=np.float64).ravel()
        if x.shape != (self.dimension,) or not np.isfinite(x).all():
            raise CompressionError(f"update must be {self.dimension} finite values")
        norm = float(np.linalg.norm(x))
        if norm > self.clip_norm:  # clipped before; float32 rounding may leave a hair over
            x = x * (self.clip_norm / norm)
        order = _selection(self.seed, self.dimension, self.kept)[0]
        y = np.zeros(self.kept)
        y[:order.size] = x[order]  # "-full": zeros pad the last block
        return y

    def kept_part(self, update: np.ndarray) -> np.ndarray:
        """`selected(update)` clipped to ||y|| <= C_kept: what the device rotates, rounds
        and noises."""
        y = self.selected(update)
        norm, bound = float(np.linalg.norm(y)), self.kept_clip
        return y * (bound / norm) if norm > bound else y

    def _round(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Stochastic rounding, redone until ||q|| <= Delta (KLS's conditional rounding)."""
        for _ in range(1000):
            q = stochastic_round(z, rng)
            if float(np.linalg.norm(q)) <= self.sensitivity:
                return q
        raise CompressionError("rounding kept exceeding its norm bound")  # p < beta^1000

    # --- server ------------------------------------------------------------------------------
    def check_words(self, words: np.ndarray) -> None:
        """CompressionError unless `words` is a vector of `kept` integers mod 2^bits."""
        if words.dtype != np.uint16 or words.shape != (self.kept,):
            raise CompressionError(f"compressed update must be {self.kept} uint16 words "
                                   f"(modulus 2^{self.bits}), got {words.dtype} of shape "
                                   f"{list(words.shape)}")

    def centred(self, total: np.ndarray) -> np.ndarray:
        """The modular sum read as signed integers in [-2^(bits-1), 2^(bits-1))."""
        half = self.modulus // 2
        return (np.asarray(total).astype(np.int64) + half) % self.modulus - half

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """The unbiased estimate (float64, d coordinates) of the sum of the clipped updates
        from the modular sum of their compressed forms."""
        return self.decode_integers(self.centred(total))

    def decode_integers(self, integers: np.ndarray) -> np.ndarray:
        """The unbiased estimate (float64, d coordinates) of the sum of the clipped updates
        whose `integers` (signed, in integer units) are summed: divided by gamma, rotated
        back, scattered to S and rescaled by d / kept (1 when every coordinate is kept).
        The plain form rotates the integers back first, exactly (sums below 2^53), and
        scales once: each coordinate is then one rounding of a multiple of the step, so the
        server's float sum of many uploads does not depend on their order (scaled first,
        exact zeros come out as float residues near 1e-17, and the sum of ten uploads then
        differed in a few coordinates between two orders); secure rounds keep their order of
        operations, so their decoded sums are bit for bit what they were."""
        z = np.asarray(integers, dtype=np.float64)
        if not self.modular:
            return self._scatter(_fwht(z.reshape(-1, self.block)).ravel()
                                 / (math.sqrt(self.block) * self.scale))
        z = z * (math.sqrt(self.block) / self.scale)
        return self._scatter(_fwht(z.reshape(-1, self.block)).ravel() / self.block)

    def _scatter(self, rotated_back: np.ndarray) -> np.ndarray:
        """Signs undone, scattered to S and rescaled by d / kept: d coordinates."""
        order, signs = _selection(self.seed, self.dimension, self.kept)
        y = rotated_back * signs
        out = np.zeros(self.dimension)
        out[order] = y[:order.size] * (self.dimension / order.size)
        return out

    # --- the task's JSON ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "seed": self.seed.hex(), "dimension": self.dimension,
                "kept": self.kept, "block": self.block, "bits": self.bits,
                "scale": self.scale, "clip_norm": self.clip_norm,
                "kept_clip_norm": self.kept_clip}

    @classmethod
    def from_dict(cls, data: object) -> Compression:
        """Parse and check a task's compression part; CompressionError says what is wrong.
        `kept_clip_norm` is not taken from the server: it must be the one this side derives
        (`kept_clip_norm`), so a server with another rule (a larger slack) is refused."""
        keys = {"scheme", "seed", "dimension", "kept", "block", "bits", "scale", "clip_norm",
                "kept_clip_norm"}
        if not isinstance(data, dict) or set(data) != keys:
            raise CompressionError(f"compression must be an object with exactly {sorted(keys)}")
        if data["scheme"] not in ALL_SCHEMES:
            raise CompressionError(f"compression scheme must be one of {ALL_SCHEMES}")
        ints = [data[k] for k in ("dimension", "kept", "block", "bits")]
        if any(type(v) is not int for v in ints):
            raise CompressionError("compression dimension, kept, block and bits must be integers")
        if not all(is_finite_number(data[k]) for k in ("scale", "clip_norm", "kept_clip_norm")):
            raise CompressionError("compression scale, clip_norm and kept_clip_norm must be finite "
                                   "numbers")
        seed = data["seed"]
        if not (isinstance(seed, str) and len(seed) == 2 * SEED_BYTES
                and all(ch in "0123456789abcdef" for ch in seed)):
            raise CompressionError(f"compression seed must be {2 * SEED_BYTES} hex digits")
        spec = cls(bytes.fromhex(seed), *ints, float(data["scale"]), float(data["clip_norm"]),
                   data["scheme"])
        if not math.isclose(float(data["kept_clip_norm"]), spec.kept_clip, rel_tol=1e-12):
            raise CompressionError(
                f"compression kept_clip_norm {data['kept_clip_norm']!r} is not "
                f"C min(1, {KEPT_CLIP_SLACK:g} sqrt(kept / d)) = {spec.kept_clip!r}")
        return spec
