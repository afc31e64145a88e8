"""Per-device privacy accounting: epsilon at the configured delta, from `dp-accounting` (RDP).

A device's spend counts every round it contributed an update to (submitted or aggregated;
updates of abandoned rounds are deleted unseen and do not count). Each such round is one
Gaussian mechanism with the round's noise multiplier z (the sum of >= min_reports updates
carries noise of standard deviation z*C, and one device changes it by at most C). When z
varied, the smallest z of the device's rounds is used for all of them: an upper bound.
"""
from __future__ import annotations

import math
from functools import lru_cache

from federated import privacy

from aggregation_server.config import RoundConfig


@lru_cache(maxsize=4096)
def _epsilon(z: float, count: int, delta: float, q: float | None, rounds: int | None) -> float:
    return privacy.epsilon(z, count, delta, sampling_rate=q, rounds=rounds)


def device_epsilon(noise_multipliers: list[float], config: RoundConfig,
                   rounds: int | None = None) -> float:
    """Epsilon of one device that took part in rounds with these noise multipliers.

    Without a sampling rate: composition over the device's own rounds. With one (an
    assumption the server does not enforce): Poisson-subsampled composition over `rounds`.
    """
    if not noise_multipliers:
        return 0.0
    z = min(noise_multipliers)
    if config.sampling_rate:
        return _epsilon(z, len(noise_multipliers), config.delta, config.sampling_rate,
                        max(rounds or 1, 1))
    return _epsilon(z, len(noise_multipliers), config.delta, None, None)


def guarantee(config: RoundConfig, rounds_done: int = 0) -> float:
    """The most any device can spend under this config: at the participation cap, or
    (with a sampling rate) after the next round."""
    if config.sampling_rate:
        return _epsilon(config.noise_multiplier, 1, config.delta, config.sampling_rate,
                        rounds_done + 1)
    return _epsilon(config.noise_multiplier, config.participation_cap, config.delta, None, None)


def round_refusal(config: RoundConfig, rounds_done: int = 0) -> str | None:
    """Why a round with this config must not start (None if it may)."""
    if config.epsilon_budget is None:
        return None
    eps = guarantee(config, rounds_done)
    if not math.isfinite(eps):
        return (f"noise_multiplier is {config.noise_multiplier}: no differential privacy "
                f"(epsilon infinite), but epsilon_budget is {config.epsilon_budget}")
    if eps > config.epsilon_budget:
        if config.sampling_rate:
            return (f"round {rounds_done + 1} would bring epsilon to {eps:.3f} "
                    f"(sampling rate {config.sampling_rate}, z={config.noise_multiplier}, "
                    f"delta={config.delta:g}), past the budget {config.epsilon_budget}")
        return (f"a device at the participation cap of {config.participation_cap} rounds "
                f"would reach epsilon {eps:.3f} (z={config.noise_multiplier}, "
                f"delta={config.delta:g}), past the budget {config.epsilon_budget}")
    return None


def device_refusal(history: list[float], config: RoundConfig, rounds_done: int = 0) -> str | None:
    """Why this device must not join another round (None if it may)."""
    if config.epsilon_budget is None:
        return None
    eps = device_epsilon([*history, config.noise_multiplier], config, rounds_done + 1)
    if eps > config.epsilon_budget:
        return (f"joining would bring this device to epsilon {eps:.3f}, past the budget "
                f"{config.epsilon_budget}")
    return None


def assumptions(config: RoundConfig) -> list[str]:
    """What the reported epsilon rests on, in words."""
    out = [f"client-level DP (DP-FedAvg): each update clipped to L2 norm {config.clip_norm}, "
           f"Gaussian noise so that a round's sum of at least min_reports "
           f"({config.min_reports}) updates has standard deviation z*C "
           f"(z = {config.noise_multiplier})",
           "RDP accountant of Google's dp-accounting; epsilon reported at "
           f"delta = {config.delta:g}",
           f"each device contributes to at most {config.participation_cap} rounds "
           "(participation cap, enforced by the server)"]
    if config.sampling_rate:
        out.append(f"devices are assumed sampled by Poisson sampling with rate "
                   f"{config.sampling_rate} each round (NOT enforced by the server)")
    else:
        out.append("no amplification by sampling is assumed: every round a device "
                   "joins counts in full")
    out.append("the server and devices follow the protocol (honest-but-curious server "
               "that adds no noise itself)")
    return out
