"""How much top-1 this model loses to noise in the averaged update: measured runs only.

Each point is a DP fleet measured on `test` against the same fleet without noise. The
noise is `sigma_mean`, the standard deviation per coordinate of a round's *average*
update (the sum's noise divided by the number of reports): as McMahan et al. (2018)
argue, that is what sets utility, whatever cohort produced it. Between points the loss
is interpolated linearly in log(sigma_mean); outside them the planner says so rather than
guess.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ToleranceRun:
    """One measured fleet: the noise in its average and the top-1 it lost on `test`."""

    sigma_mean: float     # noise std per coordinate of the round's average update
    top1_loss: float      # points of top-1 on `test` below the same fleet without noise
    source: str           # where the figure comes from (command, BENCHMARKS.md section)


_PRIVACY_UTILITY = ("BENCHMARKS.md (b) privacy-utility, session 3: `python "
                    "benchmarks/federated_quality.py --rounds 20 --devices-per-round 50 "
                    "--noise 0.1 0.3 1.0` (C = 0.5, 50 reports a round, no-DP fleet 15.64%)")

_AUDIT = ("BENCHMARKS.md privacy audit (3), this session: `python "
          "benchmarks/privacy_audit_fleet.py --rounds 10 --sigma-means S --skip-central` "
          "fleets (10 rounds x 25 of 100 senders + 16 direction canaries, C = 0.5; "
          "clipping-only fleet 15.25%)")

RUNS: tuple[ToleranceRun, ...] = (
    ToleranceRun(0.00037, 0.01, _AUDIT + ", sigma_mean 0.00037 (round 10 of a 20-round "
                                          "fleet): 15.25%"),
    ToleranceRun(0.00159, 0.13, _AUDIT + ", sigma_mean 0.00159: 15.12%"),
    ToleranceRun(0.02, 11.89, _AUDIT + ", sigma_mean 0.02: 3.36%"),
    ToleranceRun(0.1 * 0.5 / 50, 0.24, _PRIVACY_UTILITY + ", z = 0.1: 15.40%"),
    ToleranceRun(0.3 * 0.5 / 50, 1.12, _PRIVACY_UTILITY + ", z = 0.3: 14.52%"),
    ToleranceRun(1.0 * 0.5 / 50, 9.14, _PRIVACY_UTILITY + ", z = 1.0: 6.50%"),
)


@dataclass(frozen=True)
class LossEstimate:
    """The expected top-1 loss at a noise level, and how it was obtained."""

    points: float   # the estimate (a bound when `kind` is below/above)
    kind: str       # "interpolated", "below" (less noise than any run: loss <= points)
                    # or "above" (more noise than any run: loss >= points)

    def describe(self) -> str:
        if self.kind == "below":
            return (f"at most {self.points:.2f} points (less noise than any measured run; "
                    "the least noisy one lost this much)")
        if self.kind == "above":
            return (f"at least {self.points:.2f} points (more noise than any measured run; "
                    "the noisiest one lost this much)")
        return f"about {self.points:.2f} points (interpolated between measured runs)"


def _sorted(runs: tuple[ToleranceRun, ...]) -> list[ToleranceRun]:
    if not runs:
        raise ValueError("no measured noise-tolerance runs")
    return sorted(runs, key=lambda r: r.sigma_mean)


def expected_loss(sigma_mean: float, runs: tuple[ToleranceRun, ...] = RUNS) -> LossEstimate:
    """The top-1 loss (points) expected with this noise per coordinate of the average."""
    if not sigma_mean >= 0:
        raise ValueError("sigma_mean must be a non-negative number")
    ordered = _sorted(runs)
    if sigma_mean <= ordered[0].sigma_mean:
        exact = math.isclose(sigma_mean, ordered[0].sigma_mean)
        return LossEstimate(ordered[0].top1_loss, "interpolated" if exact else "below")
    if sigma_mean >= ordered[-1].sigma_mean:
        exact = math.isclose(sigma_mean, ordered[-1].sigma_mean)
        return LossEstimate(ordered[-1].top1_loss, "interpolated" if exact else "above")
    for lo, hi in zip(ordered, ordered[1:]):
        if lo.sigma_mean <= sigma_mean <= hi.sigma_mean:
            t = (math.log(sigma_mean / lo.sigma_mean)
                 / math.log(hi.sigma_mean / lo.sigma_mean))
            return LossEstimate(lo.top1_loss + t * (hi.top1_loss - lo.top1_loss),
                                "interpolated")
    raise AssertionError("unreachable")


def tolerated_sigma(max_loss: float, runs: tuple[ToleranceRun, ...] = RUNS) -> float:
    """The largest noise per coordinate of the average whose interpolated loss is at most
    `max_loss` points (the losses are taken as increasing with the noise)."""
    ordered = _sorted(runs)
    if max_loss < ordered[0].top1_loss:
        raise ValueError(f"no measured run lost less than {ordered[0].top1_loss:.2f} points "
                         f"of top-1 (the least noisy had {ordered[0].sigma_mean:.2g} per "
                         f"coordinate of the average): ask for a loss of at least that much")
    best = ordered[0].sigma_mean
    for lo, hi in zip(ordered, ordered[1:]):
        if hi.top1_loss <= max_loss:
            best = hi.sigma_mean
        elif lo.top1_loss <= max_loss < hi.top1_loss:
            t = (max_loss - lo.top1_loss) / (hi.top1_loss - lo.top1_loss)
            best = lo.sigma_mean * (hi.sigma_mean / lo.sigma_mean) ** t
            break
    return best
