"""Per-device privacy accounting that holds against the server: epsilon at the configured
delta from `dp-accounting` (RDP), composed over the rounds each device was charged for.

A device is charged when the server ACCEPTS its plain update or its masked input, not when
the round aggregates: the server has seen what it sent even if the round is abandoned later
(at the deadline, after unmasking, or when an administrator stops training). Each charge
records two noise multipliers (`federated.privacy.visible_noise_multiplier`):

- against the server: what protects the update from whoever sees what the server sees.
  Plain rounds: the update's own noise (the device adds z*C itself). Secure rounds: the
  noise of the honest reports in the sum, z, if at most `dishonest_share` of the round's
  reports come from devices that add no noise and the server follows the protocol.
- against model users (whoever only sees released models): the sum's noise. Plain rounds:
  z*sqrt(h), h the fewest honest reports (`privacy.honest_reports`); secure rounds: z.

Epsilon per device composes its charges' multipliers as they were (`composed_epsilon`,
heterogeneous): no "smallest z for all". With a configured sampling rate (an assumption
the server does not enforce) the smallest multiplier is used over all rounds done, as a
Poisson-subsampled mechanism: an upper bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from federated import privacy
from federated.compression import KEPT_CLIP_SLACK

from aggregation_server.config import RoundConfig

AGAINST = {"server": "against the server", "model_users": "against model users"}


@dataclass(frozen=True)
class Charge:
    """The noise multipliers of one accepted report, against each adversary."""

    server: float
    model_users: float


def charge(config: RoundConfig) -> Charge:
    """What one accepted report of a round with this config costs its device."""
    if config.noise_multiplier <= 0:
        return Charge(0.0, 0.0)
    stddev = privacy.device_noise_stddev(config.clip_norm, config.noise_multiplier,
                                         config.min_reports, secure=config.secure_aggregation,
                                         dishonest_share=config.dishonest_share)
    seen = lambda secure: privacy.visible_noise_multiplier(  # noqa: E731
        stddev, config.clip_norm, config.min_reports, secure=secure,
        dishonest_share=config.dishonest_share)
    return Charge(seen(config.secure_aggregation), seen(True))


def device_noise_stddev(config: RoundConfig) -> float:
    """The noise an honest device adds in a round with this config (what the server's
    norm checks and the secure encoding assume)."""
    return privacy.device_noise_stddev(config.clip_norm, config.noise_multiplier,
                                       config.min_reports, secure=config.secure_aggregation,
                                       dishonest_share=config.dishonest_share)


@lru_cache(maxsize=8192)
def _composed(multipliers: tuple[float, ...], delta: float) -> float:
    return privacy.composed_epsilon(list(multipliers), delta)


@lru_cache(maxsize=4096)
def _self_composed(z: float, rounds: int, delta: float) -> float:
    return privacy.epsilon(z, rounds, delta)


@lru_cache(maxsize=4096)
def _sampled(z: float, delta: float, q: float, rounds: int) -> float:
    return privacy.epsilon(z, 1, delta, sampling_rate=q, rounds=rounds)


def device_epsilon(multipliers: list[float], config: RoundConfig,
                   rounds: int | None = None) -> float:
    """Epsilon of a device charged with these noise multipliers (inf: one had no noise)."""
    if not multipliers:
        return 0.0
    if config.sampling_rate:
        if min(multipliers) <= 0:
            return math.inf
        return _sampled(min(multipliers), config.delta, config.sampling_rate,
                        max(rounds or 1, 1))
    return _composed(tuple(sorted(multipliers)), config.delta)


def guarantee(config: RoundConfig, rounds_done: int = 0, against: str = "server") -> float:
    """The most a device can spend under this config: at the participation cap, or
    (with a sampling rate) after the next round."""
    z = getattr(charge(config), against)
    if config.sampling_rate:
        return device_epsilon([z], config, rounds_done + 1)
    return _self_composed(z, config.participation_cap, config.delta)  # any cap, no list of it


def round_refusal(config: RoundConfig, rounds_done: int = 0) -> str | None:
    """Why a round with this config must not start (None if it may): the budget is
    checked against the server."""
    if config.epsilon_budget is None:
        return None
    eps = guarantee(config, rounds_done)
    if not math.isfinite(eps):
        return (f"noise_multiplier is {config.noise_multiplier}: no privacy guarantee (no "
                f"noise), but epsilon_budget is {config.epsilon_budget}")
    if eps > config.epsilon_budget:
        if config.sampling_rate:
            return (f"round {rounds_done + 1} would bring epsilon against the server to "
                    f"{eps:.3f} (sampling rate {config.sampling_rate}, "
                    f"z={config.noise_multiplier}, delta={config.delta:g}), past the budget "
                    f"{config.epsilon_budget}")
        return (f"a device at the participation cap of {config.participation_cap} rounds "
                f"would reach epsilon {eps:.3f} against the server "
                f"(z={config.noise_multiplier}, delta={config.delta:g}), past the budget "
                f"{config.epsilon_budget}")
    return None


def device_refusal(history: list[float], config: RoundConfig, rounds_done: int = 0) -> str | None:
    """Why this device must not join another round (None if it may); `history` holds the
    multipliers against the server it was charged with."""
    if config.epsilon_budget is None:
        return None
    eps = device_epsilon([*history, charge(config).server], config, rounds_done + 1)
    if eps > config.epsilon_budget:
        return (f"joining would bring this device to epsilon {eps:.3f} against the server, "
                f"past the budget {config.epsilon_budget}")
    return None


def describe(eps: float | None, delta: float) -> str:
    """An epsilon in words a person can read (never 'None' or 'inf')."""
    if eps is None or not math.isfinite(eps):
        return "no privacy guarantee (no noise)"
    if eps == 0:
        return "nothing spent yet (epsilon 0)"
    return f"epsilon {eps:.2f} at delta {delta:g}"


def assumptions(config: RoundConfig) -> list[str]:
    """What the reported epsilons rest on, in words."""
    z, share = config.noise_multiplier, config.dishonest_share
    h = privacy.honest_reports(config.min_reports, share)
    out = [f"client-level DP (DP-FedAvg): each update clipped to L2 norm {config.clip_norm}; "
           f"noise multiplier z = {z}",
           f"at most {share:.0%} of a round's reports come from fake or tampered devices that "
           f"add no noise (dishonest share {share:g}; of at least min_reports = "
           f"{config.min_reports} reports, at least {h} are honest); enrolment needs an "
           "operator's code and is rate-limited, which is what keeps fake devices few",
           "a device is charged when the server accepts its update or masked input, also in "
           "rounds abandoned later",
           "secure rounds: each device adds z*C/sqrt(h) so that the honest reports' sum "
           "carries z*C; the server sees only that sum, so both figures use z. This assumes "
           "an honest-but-curious server that follows the protocol (it does not lie about "
           "who dropped out); what a malicious server can still do is in the README",
           "plain rounds (secure_aggregation off): the server sees each update, so each "
           "device adds the full z*C itself; against the server each round counts at z, "
           f"against model users (who see only the aggregate) at z*sqrt(h) = "
           f"{z * math.sqrt(h):.3g}",
           "RDP accountant of Google's dp-accounting, each device's rounds composed with "
           f"their own noise multipliers; epsilon reported at delta = {config.delta:g}",
           f"each device contributes to at most {config.participation_cap} rounds "
           "(participation cap per enrolled identity, enforced by the server)"]
    if config.compression != "none":
        out.append("compressed rounds (federated.compression): each device adds discrete "
                   "Gaussian noise to its rounded integers, z times their rounded "
                   "sensitivity (over sqrt(h) in secure rounds), whose privacy is Kairouz, "
                   "Liu and Steinke's bound (2021, Theorem 1) as zCDP, with slack below "
                   "1e-60 at the noise these rounds allow, so each round is charged at the "
                   "same z. Secure rounds: each device clips the part of its update it "
                   "sends to C_kept = C min(1, s sqrt(kept / d)), s = "
                   f"{KEPT_CLIP_SLACK:g} (it derives C_kept itself); the modulus wraps with "
                   "probability below 1e-9 per round (a wrapped sum is post-processing: it "
                   "costs accuracy, not privacy). Plain rounds: every coordinate, clipped to "
                   "C, then requantized to 31 levels after the noise (post-processing: no "
                   "privacy cost)")
    if config.sampling_rate:
        out.append(f"devices are assumed sampled by Poisson sampling with rate "
                   f"{config.sampling_rate} each round (NOT enforced by the server)")
    else:
        out.append("no amplification by sampling is assumed: every round a device "
                   "joins counts in full")
    return out
