"""A run's summary (summary.json) and the few lines that describe it."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from data import Device
from fleet.config import FleetConfig

SAMPLING = {  # how the summary describes each check-in order
    "uniform": "each round, devices check in in the order of a fresh seeded uniform random "
               "permutation of the population (numpy default_rng([seed, round])) until the "
               "round's target of reports is met or all its tasks are handed out: a uniform "
               "sample without replacement, independent of the data and across rounds (what "
               "sampling-based accounting assumes; epsilon_if_sampled uses Poisson sampling at "
               "rate devices_per_round / population as an approximation). The server's "
               "epsilon counts each device's real participations, composed, with no "
               "amplification",
    "by-data": "each round, devices check in in a fresh seeded order drawn without "
               "replacement with probability proportional to their number of messages (a "
               "device that types more is eligible more often), until the round's target of "
               "reports is met: not a uniform sample, so epsilon_if_sampled does not apply. "
               "The server's epsilon counts each device's real participations, composed, "
               "with no amplification; heavy typers take part in most rounds"}


def title(config: FleetConfig, population: int) -> str:
    """The plot's title: the fleet's shape, server optimizer and privacy."""
    dp = (f"DP z={config.noise_multiplier:g}, C={config.clip_norm:g}"
          if config.noise_multiplier else "no DP")
    return (f"{config.devices_per_round} of {population} devices per round, "
            f"{config.server_optimizer}, {dp}")


def summarise(config: FleetConfig, applied: dict, population: list[Device],
              records: list[dict], final_valid: dict | None, status: dict, seconds: float,
              url: str, machine: dict) -> dict[str, Any]:
    """summary.json: the config, what ran, the figures at the start and end, privacy."""
    done = [r for r in records if r["round"] > 0]
    counts = np.array([len(d.messages) for d in population])
    last = next((r for r in reversed(records) if r.get("valid")), {})
    return {
        "config": asdict(config), "server": url, "round_settings": applied,
        "population": len(population), "num_params": status["model"]["num_params"],
        "rounds_run": len(done),
        "rounds_closed": sum(r["state"] == "closed" for r in done),
        "reports": sum(r["reports"] for r in done),
        "wall_seconds": round(seconds, 1),
        "round_seconds": round(sum(r.get("round_seconds", 0.0) for r in done), 1),
        "machine": machine,
        "start_valid": records[0].get("valid"), "last_valid": last.get("valid"),
        "final_valid": final_valid,
        # the learning curve's federated figures against the central evaluation of the same
        # versions on the same words, at each evaluation (`fleet.evaluation.agreement`)
        "evaluation_agreement": [{"round": r["round"], **r["valid_agreement"]}
                                 for r in records if r.get("valid_agreement")],
        "epsilon": done[-1]["epsilon"] if done else None,  # against the server
        "epsilon_model_users": done[-1].get("epsilon_model_users") if done else None,
        "epsilon_if_sampled": done[-1].get("epsilon_if_sampled") if done else None,
        "delta": config.delta, "noise_multiplier": config.noise_multiplier,
        "privacy": status["privacy"],
        "sampling": (SAMPLING[config.check_in]
                     + (" (here: told to assume sampling)" if config.assume_sampling else "")),
        "heavy_senders": (f"each round a device trains on a random sample of at most "
                          f"{config.max_examples} of its messages; "
                          f"{int((counts > config.max_examples).sum())} of {len(population)} "
                          f"senders have more (the largest "
                          f"{int(counts.max()) if len(counts) else 0})"),
        "dropout": (f"a checked-in device drops out with probability {config.dropout}: it is "
                    "unplugged at a random batch of its local training and sends nothing"),
    }



def _privacy(summary: dict) -> str:
    eps, sampled = summary["epsilon"], summary["epsilon_if_sampled"]
    users = summary.get("epsilon_model_users")
    if not summary["noise_multiplier"] or eps is None:
        return "no privacy guarantee (no noise)"
    return (f"epsilon {eps:.2f} against the server, {users:.2f} against model users, at delta "
            f"{summary['delta']:g} (server accountant; assumes at most "
            f"{summary['privacy']['dishonest_share']:.0%} of a round's reports from devices "
            f"adding no noise, and an honest-but-curious server)"
            + (f"; {sampled:.2f} against the server if sampling were Poisson"
               if sampled is not None else ""))


def _chain(config: dict) -> str:
    """What each round did, from the phone to the next model, in words."""
    z, compression = config.get("noise_multiplier"), config.get("compression", "none")
    secure = config.get("secure_aggregation", True)
    return ("each round: phones trained on their own messages, clipped each update to norm "
            f"{config.get('clip_norm'):g}, "
            + (f"added noise themselves (z = {z:g} on "
               + ("the round's sum)" if secure else "each update)") if z else "added no noise")
            + (f", compressed it ({compression})" if compression not in (None, "none") else "")
            + ("; secure aggregation: the server saw only the round's sum and averaged it"
               if secure else "; plain rounds: the server saw each update and averaged them")
            + f" into the next model ({config.get('server_optimizer')})")


def describe(summary: dict) -> str:
    """A few lines on how the run went."""
    def acc(valid: dict | None) -> str:
        if not valid:
            return "-"
        if valid.get("source") == "federated evaluation":
            return federated_text(valid)
        return (f"top-1 {valid['top1']:.2%}, top-3 {valid['top3']:.2%}, "
                f"perplexity {valid['perplexity']:.1f} ({valid['senders']} senders)")
    lines = [f"{summary['rounds_run']} rounds ({summary['rounds_closed']} closed), "
             f"{summary['reports']} reports from a population of {summary['population']}, "
             f"{summary['wall_seconds']:.0f} s",
             _chain(summary["config"]),
             f"held-out senders (valid), at the start: {acc(summary['start_valid'])}",
             f"held-out senders (valid), at the end:   {acc(summary['last_valid'])}",
             *([f"all held-out senders (valid) at the end, central: "
                f"{acc(summary['final_valid'])}"]
               if summary["final_valid"] else []),
             *agreement_lines(summary["evaluation_agreement"]),
             "privacy: " + _privacy(summary)]
    return "\n".join(lines)



def federated_text(valid: dict) -> str:
    """A federated evaluation's top-1 and top-3 with their noise intervals, in words."""
    def one(name: str, label: str) -> str:
        if valid[name] is None:
            return f"{label} hidden by the noise"
        low, high = valid[name + "_ci"]
        if low == high:
            return f"{label} {valid[name]:.2%} (exact: no noise)"
        return f"{label} {valid[name]:.2%} ({low:.2%} to {high:.2%})"
    return (f"{one('top1', 'top-1')}, {one('top3', 'top-3')}, federated evaluation of "
            f"version {valid['model_version']} by {valid['senders']} phones")


def agreement_lines(rows: list[dict]) -> list[str]:
    """How far the federated learning curve is from the central evaluation of the same
    versions on the same words."""
    if not rows:
        return []
    diffs = [abs(r["top1"]["difference"]) for r in rows if r["top1"]["difference"] is not None]
    inside = [r["top1"]["within_interval"] for r in rows
              if r["top1"]["within_interval"] is not None]
    if not diffs:
        return [f"federated against central top-1: none of the {len(rows)} evaluations "
                "published a top-1 (with so few phones the noise hides it), so there is "
                "nothing to compare"]
    return [f"federated against central top-1 (same versions, same words): "
            f"{len(rows)} evaluations, largest difference {100 * max(diffs):.2f} points, "
            f"central inside the 95% noise interval {sum(inside)} of {len(inside)} times"]
