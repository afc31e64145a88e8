"""Client-level differential privacy as in DP-FedAvg (McMahan et al. 2018).

Each device clips its update to L2 norm C and adds noise it sizes itself
(`device_noise_stddev`): in secure rounds z * C / sqrt(h), h the fewest honest reports of a
round of at least m (`min_reports`) when at most `dishonest_share` of them add no noise, so
the honest part of the unmasked sum alone carries z * C; in plain rounds the whole z * C, so
each upload alone is protected. The sum has L2 sensitivity C to one device, so each round a
device joins is one Gaussian mechanism with noise multiplier z. Compressed rounds add integer
noise instead (the distributed discrete Gaussian, `ddg_rho`). The accountant is Google's
`dp-accounting` (RDP, and zCDP for the discrete Gaussian).
"""
from __future__ import annotations

import math
import secrets

import numpy as np

from federated.compression import PLAIN_SCHEME, Compression
from federated.wire import l2_norm

Tensors = dict[str, np.ndarray]


# The share of a round's reports that may come from devices adding no noise (fake or
# tampered devices), by default: each honest device adds enough noise that the honest
# reports alone carry z * C (Kairouz et al. 2021 size distributed noise the same way).
DISHONEST_SHARE = 1 / 3


def honest_reports(min_reports: int, dishonest_share: float = DISHONEST_SHARE) -> int:
    """The fewest honest reports in a round of >= `min_reports` reports of which at most
    `dishonest_share` come from devices that add no noise."""
    if min_reports < 1:
        raise ValueError("min_reports must be at least 1")
    if not 0.0 <= dishonest_share < 1.0:
        raise ValueError("dishonest_share must be in [0, 1)")
    return max(1, math.ceil((1.0 - dishonest_share) * min_reports - 1e-9))


def device_noise_stddev(clip_norm: float, noise_multiplier: float, min_reports: int, *,
                        secure: bool, dishonest_share: float = DISHONEST_SHARE) -> float:
    """The per-coordinate noise one device adds to its clipped update.

    Secure rounds: the server sees only the sum, so each device adds z*C/sqrt(h), h the
    fewest honest reports (`honest_reports`): the honest part of the sum carries z*C.
    Plain rounds: the server sees each update, so the device adds the full z*C itself.
    """
    if noise_multiplier <= 0:
        return 0.0
    if not secure:
        return noise_multiplier * clip_norm
    return noise_multiplier * clip_norm / math.sqrt(honest_reports(min_reports, dishonest_share))


def visible_noise_multiplier(stddev: float, clip_norm: float, min_reports: int, *,
                             secure: bool, dishonest_share: float = DISHONEST_SHARE,
                             others: float | None = None) -> float:
    """The noise multiplier protecting one device's update from whoever sees what the
    server sees: its own noise in a plain round, the honest reports' summed noise in a
    secure round (under the dishonest-share assumption). `others`: the least noise each
    other honest device adds, if less than this one's (a device that assumes a larger
    dishonest share than the others adds more than they do; default: the same)."""
    if stddev <= 0 or clip_norm <= 0:
        return 0.0
    if not secure:
        return stddev / clip_norm
    h = honest_reports(min_reports, dishonest_share)
    others = stddev if others is None else min(others, stddev)
    return math.sqrt(stddev ** 2 + (h - 1) * others ** 2) / clip_norm


def noise_stddev(clip_norm: float, noise_multiplier: float, min_reports: int) -> float:
    """The per-coordinate noise each device adds: z * C / sqrt(min_reports)."""
    if min_reports < 1:
        raise ValueError("min_reports must be at least 1")
    return noise_multiplier * clip_norm / math.sqrt(min_reports)


def clip(tensors: Tensors, clip_norm: float) -> tuple[Tensors, float]:
    """Scale all tensors together so their joint L2 norm is at most `clip_norm`.

    Returns the clipped tensors and the norm before clipping.
    """
    norm = l2_norm(tensors)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    # float32 rounding can push the scaled norm a hair above C: shrink by one ulp's worth.
    scale *= 1.0 - 1e-6 if scale < 1.0 else 1.0
    return {k: (t * scale).astype(np.float32) for k, t in tensors.items()}, norm


def add_noise(tensors: Tensors, stddev: float, rng: np.random.Generator | None = None) -> Tensors:
    """Add independent N(0, stddev^2) to every coordinate.

    The generator is seeded from the OS's secure source unless one is given (tests).
    """
    if stddev <= 0:
        return {k: t.astype(np.float32) for k, t in tensors.items()}
    rng = rng or np.random.default_rng(secrets.randbits(128))
    return {k: (t + rng.normal(0.0, stddev, t.shape)).astype(np.float32)
            for k, t in tensors.items()}


def privatize(tensors: Tensors, clip_norm: float, stddev: float,
              rng: np.random.Generator | None = None) -> tuple[Tensors, float]:
    """Clip to `clip_norm`, then add the noise; returns the update and the pre-clip norm."""
    clipped, norm = clip(tensors, clip_norm)
    return add_noise(clipped, stddev, rng), norm


def norm_bound(clip_norm: float, stddev: float, num_params: int, tail: float = 6.0) -> float:
    """An L2 norm a clipped and noised update exceeds with probability below exp(-tail^2/2).

    ||clipped + noise|| <= C + ||noise||, and ||noise|| <= stddev * (sqrt(d) + tail) except
    with probability exp(-tail^2 / 2) (Gaussian concentration of a Lipschitz function).
    """
    return clip_norm + stddev * (math.sqrt(num_params) + tail)


def load_accountant() -> None:
    """Import dp-accounting now: it pulls in scipy (about a second), which the functions below
    otherwise pay on their first call, such as inside a server's first round close."""
    from dp_accounting.rdp import RdpAccountant  # noqa: F401


def composed_epsilon(noise_multipliers: list[float], delta: float) -> float:
    """Epsilon at `delta` of a sequence of Gaussian mechanisms with these (possibly
    different) noise multipliers, composed, from the RDP accountant of `dp-accounting`.
    A multiplier of 0 (no noise) makes it infinite."""
    from dp_accounting import dp_event

    if not noise_multipliers:
        return 0.0
    if min(noise_multipliers) <= 0:
        return math.inf
    counts: dict[float, int] = {}
    for z in noise_multipliers:
        counts[float(z)] = counts.get(float(z), 0) + 1
    return _rdp_epsilon(dp_event.ComposedDpEvent(
        [dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(z), n)
         for z, n in sorted(counts.items())]), delta)


def _rdp_epsilon(event, delta: float) -> float:
    """Epsilon at `delta` of a dp-accounting event by its RDP accountant; infinite where
    the noise is too small for floating point (near z = 1e-160 the accountant divides by
    zero, or with sampling drops every order and answers 0): no guarantee is the honest
    answer there, since every event here releases something."""
    from dp_accounting.rdp import RdpAccountant

    try:
        accountant = RdpAccountant()
        accountant.compose(event)
        eps = float(accountant.get_epsilon(delta))
    except (ZeroDivisionError, OverflowError, FloatingPointError):
        return math.inf
    return eps if math.isfinite(eps) and eps > 0 else math.inf


def epsilon(noise_multiplier: float, participations: int, delta: float,
            sampling_rate: float | None = None, rounds: int | None = None) -> float:
    """Epsilon at `delta` for one device, from the RDP accountant of `dp-accounting`.

    Without `sampling_rate` (the default, and the honest choice when devices are not
    sampled uniformly at random): the device is assumed to be in up to `participations`
    rounds, each a Gaussian mechanism with this noise multiplier, composed.
    With `sampling_rate` q and `rounds` T: Poisson subsampling amplification over T rounds.
    """
    from dp_accounting import dp_event  # imported here: it pulls in scipy (~2 s at start-up)

    if noise_multiplier <= 0:
        return math.inf
    if participations <= 0 and not sampling_rate:
        return 0.0
    if sampling_rate:
        event = dp_event.PoissonSampledDpEvent(sampling_rate,
                                               dp_event.GaussianDpEvent(noise_multiplier))
        count = rounds or participations
    else:
        event, count = dp_event.GaussianDpEvent(noise_multiplier), participations
    return _rdp_epsilon(dp_event.SelfComposedDpEvent(event, count), delta)


# --- compressed rounds: the distributed discrete Gaussian (`federated.compression`) --------------
def ddg_rho(sensitivity: float, sigma: float, honest: int, dimension: int) -> float:
    """rho of the rho-zCDP the sum of `honest` devices' discrete Gaussian noise N_Z(0, sigma^2)
    gives an integer vector of L2 sensitivity `sensitivity` in `dimension` coordinates
    (Kairouz, Liu, Steinke 2021, Theorem 1, its zCDP branch: eps = Delta / (sqrt(h) sigma)
    + tau sqrt(d), tau = 10 sum_{k=1}^{h-1} exp(-2 pi^2 sigma^2 k / (k + 1)), rho = eps^2/2;
    h = 1, a single discrete Gaussian, gives Delta^2 / (2 sigma^2): Canonne et al. 2020).
    Infinite without noise."""
    if sigma <= 0:
        return math.inf
    if sigma < 0.5:
        raise ValueError("the bound needs sigma >= 1/2")
    tau = 10 * sum(math.exp(-2 * math.pi ** 2 * sigma ** 2 * k / (k + 1))
                   for k in range(1, max(honest, 1)))
    eps = sensitivity / (math.sqrt(max(honest, 1)) * sigma) + tau * math.sqrt(dimension)
    return eps * eps / 2


def zcdp_multiplier(rho: float) -> float:
    """The Gaussian noise multiplier with the same RDP curve as rho-zCDP (alpha / (2 z^2) =
    rho * alpha): how a compressed round's charge is stored beside plain Gaussian ones."""
    return 0.0 if not math.isfinite(rho) or rho <= 0 else 1 / math.sqrt(2 * rho)


def zcdp_epsilon(rhos: list[float], delta: float) -> float:
    """Epsilon at `delta` of rho-zCDP mechanisms composed (dp-accounting's ZCDpEvent, RDP)."""
    from dp_accounting import dp_event

    if not rhos:
        return 0.0
    if not all(math.isfinite(r) for r in rhos):
        return math.inf
    return _rdp_epsilon(dp_event.ComposedDpEvent([dp_event.ZCDpEvent(r) for r in rhos]), delta)


def round_compression(seed: bytes, dimension: int, clip_norm: float, noise_multiplier: float,
                      min_reports: int, capacity: int, *, secure: bool,
                      dishonest_share: float = DISHONEST_SHARE,
                      scheme: str = "ddg16") -> Compression:
    """A compressed round's parameters: secure rounds use `scheme`, whose scale lets the
    modular sum of all `capacity` devices, each adding z*Delta/sqrt(h), stay inside the
    modulus (Delta: the rounded sensitivity of the kept part's clip C_kept,
    `Compression.kept_clip`); plain rounds, whatever `scheme`, the plain form
    (`compression.PLAIN_SCHEME`: every coordinate, the full z*Delta, then requantized; the
    server decodes each upload alone)."""
    if not secure:
        return Compression.plan(seed, dimension, clip_norm, noise_multiplier, clients=1,
                                honest=1, scheme=PLAIN_SCHEME)
    return Compression.plan(seed, dimension, clip_norm, noise_multiplier, clients=capacity,
                            honest=honest_reports(min_reports, dishonest_share), scheme=scheme)


def compressed_noise(spec: Compression, noise_multiplier: float, min_reports: int, *, secure: bool,
                     dishonest_share: float = DISHONEST_SHARE,
                     others_share: float | None = None) -> tuple[float, float, float]:
    """(sigma, against the server, against model users) of one device in a compressed round
    (`spec`: a `federated.compression.Compression`): sigma is the discrete Gaussian's in
    integer units, z * Delta / sqrt(h) in secure rounds and z * Delta in plain ones (the
    same rule as `device_noise_stddev`, with the rounded sensitivity Delta of the kept
    part's clip C_kept in place of C);
    the two are the Gaussian multipliers (`zcdp_multiplier`) of `ddg_rho` for what each
    adversary sees: the sum of the h honest reports (secure; model users always), or
    this device's own upload (plain, against the server). With sigma >= SIGMA_MIN (the
    plan refuses less) the paper's slack is below 1e-60 and both equal the round's z and
    z*sqrt(h) as for float rounds, so the server charges compressed rounds like float ones.
    `others_share`: the smaller dishonest share the other honest devices size their noise
    for (secure rounds; their sigma is then below this device's): KLS's bound needs equal
    sigmas, so the sum is bounded by the better of this device's own noise alone and the
    other h - 1 honest devices' noise (this device's own is then post-processing)."""
    if noise_multiplier <= 0:
        return 0.0, 0.0, 0.0
    h = honest_reports(min_reports, dishonest_share)
    sigma = spec.noise_sigma(noise_multiplier, h if secure else 1)
    seen = lambda honest: zcdp_multiplier(  # noqa: E731
        ddg_rho(spec.sensitivity, sigma, honest, spec.kept))
    others = sigma if not secure or others_share is None else min(sigma, spec.noise_sigma(
        noise_multiplier, honest_reports(min_reports, others_share)))
    if others < sigma:
        rho = min(ddg_rho(spec.sensitivity, sigma, 1, spec.kept),
                  ddg_rho(spec.sensitivity, others, h - 1, spec.kept)
                  if h > 1 and others >= 0.5 else math.inf)  # the bound needs sigma >= 1/2
        return sigma, zcdp_multiplier(rho), zcdp_multiplier(rho)
    return sigma, seen(h if secure else 1), seen(h)
