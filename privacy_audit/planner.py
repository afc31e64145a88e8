"""`python -m privacy_audit.planner`: what noise a target epsilon needs, and what it costs.

Forward: population N, cohort n (reports a round), rounds T, delta and a target epsilon ->
the noise multiplier z (dp-accounting's RDP accountant, calibrated by its own
`calibrate_dp_mechanism`), the noise per coordinate of the round's average, epsilon
against the server and against model users, and the top-1 loss expected from measured
runs of this model (`privacy_audit.tolerance`).

Two accountings, always both, labelled:
- without amplification (what the server's accountant does): a device counts in full in
  every round it joins, up to the participation cap k (default the fewest rounds that let
  T rounds of n devices be filled from N devices, ceil(T*n/N));
- with Poisson sampling at rate q = n/N over T rounds: valid only if a trusted party
  samples devices independently each round; this project's check-in is not that.

Secure rounds (the default): the server sees only the sum; each device adds z*C/sqrt(h),
h = the fewest honest reports when at most `dishonest_share` of a round's n reports add no
noise, so the honest part of the sum carries z*C. Against the server and against model
users the figure is then the same, the sum's. Plain rounds: the server sees every update,
so each device adds z*C itself; model users see the sum of n such updates (z*sqrt(h)).

Inverse (`--max-loss`): for a target epsilon and a top-1 loss the operator accepts, the
largest tolerated noise in the average, and for a range of z the cohort that keeps the
average's noise below it and the population that then reaches the target epsilon.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field

from federated import privacy
from privacy_audit import tolerance

SAMPLING_NOTE = ("only if a trusted party samples each device independently with this "
                 "probability every round (the server's check-in order is not that)")
Z_GRID = (0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0)


class PlanError(ValueError):
    """Inputs the planner cannot answer for, in a sentence that says what to change."""


@dataclass(frozen=True)
class Setting:
    """What the operator plans: who, how many, how long, how private."""

    population: int
    cohort: int
    rounds: int
    delta: float
    target_epsilon: float
    clip_norm: float = 1.0
    secure: bool = True
    dishonest_share: float = privacy.DISHONEST_SHARE
    participation_cap: int | None = None   # None: ceil(rounds * cohort / population)

    def __post_init__(self) -> None:
        checks = [
            (self.population >= 1, "the population must be at least 1 device"),
            (self.cohort >= 1, "the cohort (reports a round) must be at least 1"),
            (self.cohort <= self.population,
             f"the cohort ({self.cohort}) cannot be larger than the population "
             f"({self.population})"),
            (self.rounds >= 1, "rounds must be at least 1"),
            (0 < self.delta < 1, "delta must be between 0 and 1 (typically below "
                                 "1/population)"),
            (self.target_epsilon > 0 and math.isfinite(self.target_epsilon),
             "the target epsilon must be a positive number"),
            (self.clip_norm > 0 and math.isfinite(self.clip_norm),
             "the clip norm must be a positive number"),
            (0 <= self.dishonest_share < 1, "the dishonest share must be in [0, 1)"),
            (self.participation_cap is None or 1 <= self.participation_cap <= self.rounds,
             "the participation cap must be between 1 and the number of rounds")]
        for ok, message in checks:
            if not ok:
                raise PlanError(message)
        if self.cap * self.population < self.rounds * self.cohort:
            raise PlanError(f"{self.rounds} rounds of {self.cohort} devices need "
                            f"{self.rounds * self.cohort} participations, more than "
                            f"{self.population} devices at a cap of {self.cap} rounds each "
                            "can give: raise the cap or the population")

    @property
    def cap(self) -> int:
        return self.participation_cap or math.ceil(self.rounds * self.cohort / self.population)

    @property
    def sampling_rate(self) -> float:
        return self.cohort / self.population


# --- the accountant -----------------------------------------------------------------------------
def _event(z: float, setting: Setting, sampled: bool):
    from dp_accounting import dp_event
    gaussian = dp_event.GaussianDpEvent(z)
    if sampled:
        return dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(setting.sampling_rate, gaussian), setting.rounds)
    return dp_event.SelfComposedDpEvent(gaussian, setting.cap)


def accountant_epsilon(z: float, setting: Setting, sampled: bool) -> float:
    """dp-accounting's RDP epsilon at the setting's delta for noise multiplier z."""
    from dp_accounting.rdp import RdpAccountant
    if z <= 0:
        return math.inf
    return float(RdpAccountant().compose(_event(z, setting, sampled)).get_epsilon(
        setting.delta))


def noise_multiplier(setting: Setting, sampled: bool, target: float | None = None) -> float:
    """The smallest z (to 1e-6 relative) whose epsilon is at most the target, found by
    dp-accounting's `calibrate_dp_mechanism` (on log z)."""
    from dp_accounting import mechanism_calibration as mc
    from dp_accounting.rdp import RdpAccountant
    target = setting.target_epsilon if target is None else target
    low = math.log(1e-3)
    if accountant_epsilon(math.exp(low), setting, sampled) <= target:
        raise PlanError(f"a target epsilon of {target:g} is so loose that noise below "
                        "z = 0.001 already meets it: no useful plan")
    log_z = mc.calibrate_dp_mechanism(
        RdpAccountant, lambda x: _event(math.exp(x), setting, sampled), target,
        setting.delta, mc.LowerEndpointAndGuess(low, 0.0), tol=1e-6)
    return math.exp(log_z)


# --- the forward plan ---------------------------------------------------------------------------
@dataclass
class Option:
    """One accounting's answer: z, the noise it puts where, the epsilons, the cost."""

    accounting: str
    noise_multiplier: float
    device_noise_stddev: float         # what each device adds per coordinate
    sigma_sum_guaranteed: float        # honest reports' noise in the sum (z*C, secure)
    sigma_mean: float                  # noise per coordinate of the average, all reports honest
    epsilon_against_server: float
    epsilon_against_model_users: float
    expected_top1_loss: float
    loss_kind: str
    loss_words: str
    note: str = ""


@dataclass
class Plan:
    setting: Setting
    honest_reports: int
    options: list[Option] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"setting": asdict(self.setting) | {"cap": self.setting.cap,
                                                   "sampling_rate": self.setting.sampling_rate},
                "honest_reports": self.honest_reports,
                "options": [asdict(o) for o in self.options], "warnings": self.warnings,
                "tolerance_runs": [asdict(r) for r in tolerance.RUNS]}


def _noise(z: float, s: Setting, cohort: int | None = None) -> tuple[float, float, float]:
    """(device stddev, guaranteed noise std of the sum, noise std of the average) for
    `cohort` reports a round (default the setting's)."""
    n = cohort or s.cohort
    device = privacy.device_noise_stddev(s.clip_norm, z, n, secure=s.secure,
                                         dishonest_share=s.dishonest_share)
    honest = privacy.honest_reports(n, s.dishonest_share)
    return device, device * math.sqrt(honest), device * math.sqrt(n) / n


def _option(z: float, s: Setting, sampled: bool) -> Option:
    device, sum_std, mean_std = _noise(z, s)
    eps_server = accountant_epsilon(z, s, sampled)
    # model users see the sum: its honest noise over the sensitivity C
    eps_users = accountant_epsilon(sum_std / s.clip_norm, s, sampled)
    loss = tolerance.expected_loss(mean_std)
    return Option("Poisson sampling (amplified)" if sampled else "no amplification",
                  z, device, sum_std, mean_std, eps_server, eps_users, loss.points,
                  loss.kind, loss.describe(),
                  SAMPLING_NOTE if sampled else
                  f"each device in at most {s.cap} of the {s.rounds} rounds (the server "
                  "enforces the participation cap)")


def plan(setting: Setting) -> Plan:
    """The forward answer for both accountings."""
    out = Plan(setting, privacy.honest_reports(setting.cohort, setting.dishonest_share))
    if setting.delta >= 1 / setting.population:
        out.warnings.append(f"delta {setting.delta:g} is not below 1/population "
                            f"({1 / setting.population:.2g}): a mechanism that publishes one "
                            "person's data outright meets it; choose delta well below that")
    for sampled in (False, True):
        out.options.append(_option(noise_multiplier(setting, sampled), setting, sampled))
    return out


# --- the inverse --------------------------------------------------------------------------------
@dataclass
class InverseRow:
    noise_multiplier: float
    cohort: int
    sigma_mean: float
    population_with_sampling: int | None     # None: not below 10^10
    cap_without_amplification: int           # rounds a device may join at this z
    population_without_amplification: int | None


def smallest_cohort(z: float, sigma_max: float, s: Setting) -> int:
    """The fewest reports a round whose average carries at most `sigma_max` at z."""
    def mean_std(n: int) -> float:
        return _noise(z, s, n)[2]
    low, high = 1, 1
    while mean_std(high) > sigma_max:
        low, high = high, high * 2
        if high > 10**9:
            raise PlanError("no cohort below 10^9 keeps the noise that small")
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if mean_std(mid) > sigma_max else (low, mid)
    return high if mean_std(low) > sigma_max else low


def _largest_cap(z: float, s: Setting) -> int:
    """The most rounds (up to T) a device may join at noise z within the target epsilon."""
    def eps(k: int) -> float:
        return accountant_epsilon(z, _capped(s, k), False)
    if eps(1) > s.target_epsilon:
        return 0
    low, high = 1, s.rounds
    if eps(high) <= s.target_epsilon:
        return high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if eps(mid) <= s.target_epsilon else (low, mid)
    return low


def _capped(s: Setting, k: int) -> Setting:
    """`s` with participation cap k and a population large enough for it."""
    population = max(s.population, math.ceil(s.rounds * s.cohort / k))
    return Setting(population, s.cohort, s.rounds, s.delta, s.target_epsilon, s.clip_norm,
                   s.secure, s.dishonest_share, k)


def _smallest_sampled_population(z: float, cohort: int, s: Setting) -> int | None:
    def eps(n_pop: int) -> float:
        return accountant_epsilon(z, Setting(n_pop, cohort, s.rounds, s.delta,
                                             s.target_epsilon, s.clip_norm, s.secure,
                                             s.dishonest_share, s.rounds), True)
    low, high = cohort, cohort
    while eps(high) > s.target_epsilon:
        low, high = high, high * 4
        if high > 10**10:
            return None
    while high - low > max(1, low // 200):  # to 0.5%
        mid = (low + high) // 2
        low, high = (mid, high) if eps(mid) > s.target_epsilon else (low, mid)
    return high


def inverse(target_epsilon: float, max_loss: float, rounds: int, delta: float,
            clip_norm: float = 1.0, secure: bool = True,
            dishonest_share: float = privacy.DISHONEST_SHARE,
            zs: tuple[float, ...] = Z_GRID) -> dict:
    """What cohort and population reach `target_epsilon` with at most `max_loss` points of
    top-1 lost, for each z of `zs` (both accountings)."""
    if not max_loss > 0:
        raise PlanError("the accepted top-1 loss must be a positive number of points")
    try:
        sigma_max = tolerance.tolerated_sigma(max_loss)
    except ValueError as err:
        raise PlanError(str(err)) from None
    rows = []
    for z in zs:
        probe = Setting(10**12, 1, rounds, delta, target_epsilon, clip_norm, secure,
                        dishonest_share)
        cohort = smallest_cohort(z, sigma_max, probe)
        base = Setting(10**12, cohort, rounds, delta, target_epsilon, clip_norm, secure,
                       dishonest_share)
        cap = _largest_cap(z, base)
        rows.append(InverseRow(z, cohort, _noise(z, base)[2],
                               _smallest_sampled_population(z, cohort, base), cap,
                               math.ceil(rounds * cohort / cap) if cap else None))
    def best(key: str) -> dict | None:
        found = [r for r in rows if getattr(r, key)]
        return asdict(min(found, key=lambda r: getattr(r, key))) if found else None
    return {"target_epsilon": target_epsilon, "max_loss": max_loss, "rounds": rounds,
            "delta": delta, "clip_norm": clip_norm, "secure": secure,
            "sigma_mean_tolerated": sigma_max, "rows": [asdict(r) for r in rows],
            "best_without_amplification": best("population_without_amplification"),
            "best_with_sampling": best("population_with_sampling")}


# --- printing and the command line --------------------------------------------------------------
def describe(p: Plan) -> str:
    s = p.setting
    where = (f"secure rounds: the server sees only each round's sum; at most "
             f"{s.dishonest_share:.0%} of a round's {s.cohort} reports may come from devices "
             f"that add no noise (the {p.honest_reports} honest ones carry z*C)"
             if s.secure else "plain rounds: the server sees every device's update")
    lines = [f"{s.population:,} devices, {s.cohort:,} reports a round, {s.rounds} rounds, "
             f"clip norm {s.clip_norm:g}, delta {s.delta:g}, target epsilon "
             f"{s.target_epsilon:g}", where]
    for o in p.options:
        lines += ["", f"[{o.accounting}] {o.note}",
                  f"  noise multiplier z = {o.noise_multiplier:.4f}",
                  f"  each device adds N(0, {o.device_noise_stddev:.3g}^2) per coordinate",
                  f"  noise per coordinate of the round's average: {o.sigma_mean:.3g} "
                  f"(all {s.cohort} reports honest)",
                  f"  epsilon against the server: {o.epsilon_against_server:.3f}; against "
                  f"model users: {o.epsilon_against_model_users:.3f} (delta {s.delta:g})",
                  f"  expected top-1 loss: {o.loss_words}"]
    lines += ["", "expected loss from measured runs of this model "
                  "(privacy_audit/tolerance.py), assuming the noise in the average sets "
                  "utility (McMahan et al. 2018)"]
    return "\n".join(lines + [f"warning: {w}" for w in p.warnings])


def _count(n: int | None, missing: str) -> str:
    return f"{n:,}" if n else missing


def describe_inverse(result: dict) -> str:
    lines = [f"target epsilon {result['target_epsilon']:g} at delta {result['delta']:g} over "
             f"{result['rounds']} rounds with at most {result['max_loss']:g} points of top-1 "
             f"lost: the average may carry at most {result['sigma_mean_tolerated']:.3g} per "
             f"coordinate (clip norm {result['clip_norm']:g})",
             "z      cohort   population (Poisson sampling*)   cap (no amplif.)   "
             "population (no amplification)"]
    for r in result["rows"]:
        lines.append(f"{r['noise_multiplier']:<6g} {r['cohort']:<8,} "
                     f"{_count(r['population_with_sampling'], '> 1e10'):<32} "
                     f"{r['cap_without_amplification']:<18} "
                     f"{_count(r['population_without_amplification'], '-')}")
    for key, label in (("best_without_amplification", "no amplification"),
                       ("best_with_sampling", "Poisson sampling*")):
        b = result[key]
        if b:
            pop = b["population_without_amplification" if key.startswith("best_without")
                    else "population_with_sampling"]
            lines.append(f"smallest population, {label}: {pop:,} devices, {b['cohort']:,} a "
                         f"round at z = {b['noise_multiplier']:g}")
    lines.append("* " + SAMPLING_NOTE)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m privacy_audit.planner",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--population", type=int, help="devices that may take part")
    p.add_argument("--cohort", type=int, help="reports a round (the round's minimum)")
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--delta", type=float, required=True)
    p.add_argument("--target-epsilon", type=float, required=True)
    p.add_argument("--clip-norm", type=float, default=1.0, help="C (default: %(default)s)")
    p.add_argument("--participation-cap", type=int, default=None,
                   help="rounds a device may join (default: ceil(rounds*cohort/population))")
    p.add_argument("--dishonest-share", type=float, default=privacy.DISHONEST_SHARE,
                   help="share of a round's reports that may add no noise (default: 1/3)")
    p.add_argument("--plain", action="store_true",
                   help="plain rounds (no secure aggregation): each device adds z*C itself")
    p.add_argument("--max-loss", type=float, default=None,
                   help="the inverse question: points of top-1 the operator accepts; "
                        "answers with cohort and population (no --population/--cohort)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import logging
    logging.getLogger("absl").setLevel(logging.ERROR)
    args = parse_args(argv)
    try:
        if args.max_loss is not None:
            result = inverse(args.target_epsilon, args.max_loss, args.rounds, args.delta,
                             args.clip_norm, not args.plain, args.dishonest_share)
            print(json.dumps(result, indent=2) if args.json else describe_inverse(result))
            return 0
        if args.population is None or args.cohort is None:
            raise PlanError("give --population and --cohort (or --max-loss for the "
                            "inverse question)")
        result = plan(Setting(args.population, args.cohort, args.rounds, args.delta,
                              args.target_epsilon, args.clip_norm, not args.plain,
                              args.dishonest_share, args.participation_cap))
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2) if args.json else describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
