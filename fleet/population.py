"""Who is in the fleet, who is evaluated, and the order devices check in each round."""
from __future__ import annotations

import numpy as np

from data import Device, load_split
from fleet import FleetError
from fleet.config import FleetConfig


def check_in_order(population: list[Device], how: str, rng: np.random.Generator) -> np.ndarray:
    """The order devices check in for a round: uniform, or weighted by history size.

    "by-data" models eligibility's "enough new messages since the last round": a device
    that types ten times as much becomes eligible about ten times as often (draws without
    replacement, so one round never takes a device twice).
    """
    if how == "uniform":
        return rng.permutation(len(population))
    sizes = np.array([max(len(d.messages), 1) for d in population], dtype=float)
    return rng.choice(len(population), len(population), replace=False, p=sizes / sizes.sum())



def choose_population(config: FleetConfig, senders: list[str] | None = None) -> list[Device]:
    """The federated senders that make up the fleet (all, a seeded random few, or given)."""
    devices = load_split("federated")
    if senders is not None:
        by_sender = {d.sender: d for d in devices}
        missing = [s for s in senders if s not in by_sender]
        if missing:
            raise FleetError(f"not federated senders: {missing[:5]}")
        return [by_sender[s] for s in senders]
    if config.population and config.population < len(devices):
        rng = np.random.default_rng([config.seed, 2**31])
        picked = sorted(rng.choice(len(devices), config.population, replace=False))
        devices = [devices[i] for i in picked]
    return devices


def choose_valid(config: FleetConfig) -> list[Device]:
    """The valid senders of the periodic evaluations (a seeded random subset, or all)."""
    devices = load_split("valid")
    if config.eval_senders and config.eval_senders < len(devices):
        rng = np.random.default_rng([config.seed, 2**31 + 1])
        devices = [devices[i] for i in sorted(rng.choice(len(devices), config.eval_senders,
                                                         replace=False))]
    return devices



def with_audit_devices(devices: list[Device], extra_messages: dict[str, list[str]],
                       direction_seeds: list[int], seed: int) -> list[Device]:
    """The population for a privacy audit (`benchmarks/privacy_audit_fleet.py`): canary messages
    added to chosen senders' histories at random times within them, and one extra device
    per direction seed (its history one placeholder message; it never trains)."""
    rng = np.random.default_rng([seed, 2**31 + 2])
    out = []
    for d in devices:
        extra = extra_messages.get(d.sender, [])
        if extra:
            times = rng.uniform(min(d.timestamps), max(d.timestamps), len(extra))
            merged = sorted(zip([*d.timestamps, *times], [*d.messages, *extra]))
            d = Device(d.sender, d.role, [m for _, m in merged], [t for t, _ in merged])
        out.append(d)
    missing = set(extra_messages) - {d.sender for d in devices}
    if missing:
        raise FleetError(f"canary senders not in the population: {sorted(missing)[:5]}")
    return out + [Device(f"direction-canary-{s}", "canary", ["canary"], [0.0])
                  for s in direction_seeds]

