"""The device's own privacy policy: what a round must promise before this phone trains for it.

The server proposes each round's privacy parameters in its task; the device decides. A task
outside the policy is refused before any training (nothing is computed, nothing is sent),
and the device sizes its noise itself from the task's noise multiplier z, clip norm C,
cohort and secure flag (`federated.privacy.device_noise_stddev`): it never uses a noise
level the server dictates. The user may tighten the policy in Settings, never loosen it
below the defaults; nothing the server sends changes it. Simulations and tests that need a
looser policy (tiny rounds, a fleet without noise) build one in code with
`DevicePolicy.relaxed(...)`, and only that way. A compressed round's parameters
(`federated.compression`) are checked too: in secure rounds the modulus must hold this
device's own integer noise (that they are the round's own, the seed derived from the round
and its model, the scheme the one for the round's kind, the kept part's clip norm
C_kept the one the device derives from C, and a plain round's scale and layout the ones it
derives, is checked when the task is parsed, `federated.protocol.Task`), and in plain rounds
the noised integers must stay below 2^52 (a huge noise multiplier would overflow them and
lose the noise). A plain round's requantization comes after the noise, from the device's
own randomness, so it changes no epsilon.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from federated.compression import SIGMA_MIN, Compression
from federated.privacy import (DISHONEST_SHARE, composed_epsilon, compressed_noise, ddg_rho,
                               device_noise_stddev, visible_noise_multiplier, zcdp_multiplier)
from federated.protocol import SecAggTask, Task
from federated.secagg.params import hiding_problem

TIGHTER_IS_LARGER = ("min_noise_multiplier", "min_reports", "dishonest_share")
TIGHTER_IS_SMALLER = ("max_clip_norm", "epsilon_budget", "delta")


class PolicyError(ValueError):
    """A policy that is malformed, or looser than the safe defaults outside `relaxed()`."""


class PolicyRefusal(Exception):
    """A task this device will not take part in; `reason` is for people, `detail` for logs."""

    def __init__(self, code: str, reason: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.reason, self.detail = code, reason, detail


@dataclass(frozen=True)
class RoundTerms:
    """What the device does in a round it accepted: its noise and what the server can see."""

    clip_norm: float
    noise_multiplier: float  # the task's z
    min_reports: int
    secure: bool
    noise_stddev: float  # per coordinate, added on this device
    visible_multiplier: float  # the noise multiplier protecting this update from the server
    compression: Compression | None = None  # compressed round: the codec's parameters
    noise_sigma: float = 0.0  # compressed round: the discrete Gaussian's sigma (integer units)
    own_multiplier: float | None = None  # compressed round: its own noise over Delta

    @property
    def sent_clip_norm(self) -> float:
        """The norm what this device sends is clipped to, the one its noise is sized to: C,
        or in a compressed round the kept part's C_kept (`Compression.kept_clip`)."""
        return self.clip_norm if self.compression is None else self.compression.kept_clip

    @property
    def own(self) -> float:
        """The noise multiplier of this device's own noise alone (what protects it if every
        other report came from a fake device): noise over the update's sensitivity, which
        in a compressed round is the rounded Delta, not C."""
        if self.own_multiplier is not None:
            return self.own_multiplier
        return self.noise_stddev / self.clip_norm if self.clip_norm > 0 else 0.0


def _refuse(code: str, detail: str) -> PolicyRefusal:
    return PolicyRefusal(code, REASONS[code], detail)


REASONS = {
    "noise_too_low": "This round asked for less noise than your privacy settings allow, so "
                     "your phone did not take part.",
    "clip_too_large": "This round let one phone's update weigh more than your privacy "
                      "settings allow, so your phone did not take part.",
    "cohort_too_small": "This round would have mixed your update with fewer phones than your "
                        "privacy settings require, so your phone did not take part.",
    "secure_required": "This round would have shown your phone's update to the server on its "
                       "own (secure aggregation off), which your privacy settings do not "
                       "allow, so your phone did not take part.",
    "secagg_unsafe": "This round's secure aggregation could let the server uncover a single "
                     "phone's update, so your phone did not take part.",
    "compression_unsafe": "This round's compressed upload could have cut off the noise that "
                          "protects your update, so your phone did not take part.",
    "budget": "Taking part in this round would pass the privacy limit you set for this phone, "
              "so it did not take part.",
    "budget_spent": "Your phone has used up the privacy limit you set, so it no longer takes "
                    "part in learning.",
}


@dataclass(frozen=True)
class DevicePolicy:
    """The least a round must promise; the defaults are what we would accept for ourselves.

    - `min_noise_multiplier` 1.0: each round is a Gaussian mechanism with z >= 1 against
      the server (one round then costs epsilon about 5 at delta 1e-6); below that the
      guarantee of a single round is weak.
    - `max_clip_norm` 1.0: epsilon does not depend on C (the noise scales with it), but C
      bounds how far one phone's typing can move the shared model; the project's rounds
      use C <= 1 and an LSTM update's norm is about 0.3.
    - `min_reports` 5: in a secure round the device adds only its share of the noise and is
      hidden in a sum; fewer than 5 reports make that crowd too small (the server's default
      round has 5).
    - `require_secure_aggregation` False: a plain round (the server sees each update) is
      accepted only because the device then adds the full z*C itself, so the server sees
      an update exactly as private as the sum of a secure round; True refuses plain rounds.
    - `dishonest_share` 1/3: secure rounds' noise is sized so that the honest reports alone
      carry z*C even if a third of the reports come from fake devices adding none.
    - SecAgg+ (n, k, t): always `federated.secagg.params.hiding_problem` (t > (k + 1) / 2,
      t >= 2), and the round's own minimum of masked inputs must cover `min_reports`.
    - `epsilon_budget` 10 at `delta` 1e-6, over this phone's lifetime and every server:
      with z = 1 that is 3 rounds (epsilon 9.85); delta is one in a million people.
    """

    min_noise_multiplier: float = 1.0
    max_clip_norm: float = 1.0
    min_reports: int = 5
    require_secure_aggregation: bool = False
    dishonest_share: float = DISHONEST_SHARE
    epsilon_budget: float | None = 10.0  # None (relaxed policies only): no lifetime limit
    delta: float = 1e-6
    explicitly_relaxed: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        checks = [
            (math.isfinite(self.min_noise_multiplier) and self.min_noise_multiplier >= 0,
             "min_noise_multiplier must be a finite number >= 0"),
            (math.isfinite(self.max_clip_norm) and self.max_clip_norm > 0,
             "max_clip_norm must be a positive finite number"),
            (isinstance(self.min_reports, int) and self.min_reports >= 1,
             "min_reports must be a whole number >= 1"),
            (0 <= self.dishonest_share < 1, "dishonest_share must be in [0, 1)"),
            (self.epsilon_budget is None or self.epsilon_budget > 0,
             "epsilon_budget must be positive"),
            (0 < self.delta < 1, "delta must be in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise PolicyError(message)
        looser = self.loosenings()
        if looser and not self.explicitly_relaxed:
            raise PolicyError(f"{', '.join(looser)} looser than the safe defaults; only "
                              "DevicePolicy.relaxed(...) (simulations, tests) may do that")

    @classmethod
    def relaxed(cls, **values) -> DevicePolicy:
        """A policy that may be looser than the defaults, for simulations and tests only.

        The app never builds one: its Settings can only tighten the defaults.
        """
        return cls(**values, explicitly_relaxed=True)

    def loosenings(self) -> list[str]:
        """The settings of this policy that are looser than the safe defaults."""
        safe = {f.name: f.default for f in fields(DevicePolicy)}
        looser = [n for n in TIGHTER_IS_LARGER if getattr(self, n) < safe[n]]
        looser += [n for n in TIGHTER_IS_SMALLER if (getattr(self, n) or math.inf) > safe[n]]
        if safe["require_secure_aggregation"] and not self.require_secure_aggregation:
            looser.append("require_secure_aggregation")
        return looser

    def settings(self) -> dict:
        """The policy's values (what Settings stores), without the `relaxed` marker."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "explicitly_relaxed"}

    # --- checking a task ---------------------------------------------------------------------
    def terms(self, task: Task) -> RoundTerms:
        """The round's terms if this task is inside the policy; else PolicyRefusal.
        (The task is well-formed: `Task.from_json` checked every field.)"""
        clip_norm, z = task.clip_norm, task.noise_multiplier
        cohort, secure = task.min_reports, task.secure_aggregation
        if z < self.min_noise_multiplier:
            raise _refuse("noise_too_low", f"noise multiplier {z:g} is below this device's "
                                           f"minimum {self.min_noise_multiplier:g}")
        if clip_norm > self.max_clip_norm:
            raise _refuse("clip_too_large", f"clip norm {clip_norm:g} is above this device's "
                                            f"maximum {self.max_clip_norm:g}")
        if cohort < self.min_reports:
            raise _refuse("cohort_too_small", f"min_reports {cohort} is below this device's "
                                              f"minimum {self.min_reports}")
        if not secure and self.require_secure_aggregation:
            raise _refuse("secure_required", "the round is plain and this device requires "
                                             "secure aggregation")
        share, others = self._share(task)
        if task.compression is not None:
            return self._compressed_terms(task, task.compression, share, others)
        stddev = device_noise_stddev(clip_norm, z, cohort, secure=secure, dishonest_share=share)
        if task.secagg is not None:
            self._check_secure(task.secagg, clip_norm, cohort, stddev)
        visible = visible_noise_multiplier(
            stddev, clip_norm, cohort, secure=secure, dishonest_share=share,
            others=device_noise_stddev(clip_norm, z, cohort, secure=secure,
                                       dishonest_share=others))
        return RoundTerms(clip_norm, z, cohort, secure, stddev, visible)

    def _compressed_terms(self, task: Task, spec: Compression, share: float,
                          others: float) -> RoundTerms:
        """A compressed round: the modulus holds this device's discrete Gaussian noise,
        sized by this policy, in a sum of every device the round may have (plain rounds:
        its noised integers stay where int64 and float64 hold them exactly)."""
        clip_norm, z, cohort, secure = (task.clip_norm, task.noise_multiplier,
                                        task.min_reports, task.secure_aggregation)
        clients = task.secagg.config.num_clients if task.secagg else 1
        sigma, visible, _ = compressed_noise(spec, z, cohort, secure=secure,
                                             dishonest_share=share, others_share=others)
        if task.secagg is not None:
            self._check_secure(task.secagg, clip_norm, cohort, 0.0, compressed=True)
        if spec.wraps(clients, sigma) or 0 < sigma < SIGMA_MIN:
            where = f"over {clients} devices could wrap the 2^{spec.bits} modulus" \
                if spec.modular else "could overflow this device's integers (over 2^52)"
            raise _refuse("compression_unsafe", f"scale {spec.scale:g} with noise sigma "
                          f"{sigma:.4g} {where} (or the noise is too small for its bound)")
        own = zcdp_multiplier(ddg_rho(spec.sensitivity, sigma, 1, spec.kept))  # sigma / Delta
        return RoundTerms(clip_norm, z, cohort, secure, sigma / spec.scale, visible, spec, sigma,
                          own)

    def _share(self, task: Task) -> tuple[float, float]:
        """(the dishonest share this device sizes its noise for: the policy's, or the task's
        if the server assumes more (a server assuming less changes nothing); the least one
        another honest phone sizes its noise for: the task's, never below the safe default
        nor above this device's). A phone whose user assumed more fake phones than the
        others do adds more noise than they do, and counts the sum's noise accordingly."""
        told = task.dishonest_share
        share = max(self.dishonest_share, told)
        return share, min(share, max(DISHONEST_SHARE, told))

    @staticmethod
    def _check_secure(part: SecAggTask, clip_norm: float, cohort: int, stddev: float,
                      compressed: bool = False) -> None:
        """The SecAgg+ parameters hide one input; the protocol's own minimum covers the
        cohort the noise was sized for; its number format does not cut the noise off
        (`compressed`: the round sums the codec's 16-bit words, as the task was checked to)."""
        config = part.config
        problem = hiding_problem(config.num_clients, config.degree, config.threshold)
        if problem:
            raise _refuse("secagg_unsafe", problem)
        if config.min_clients < cohort:
            raise _refuse("secagg_unsafe", f"the protocol unmasks sums of {config.min_clients} "
                                           f"inputs, below the round's min_reports {cohort}")
        if not compressed and config.encoding.bound < clip_norm + 2 * stddev:
            raise _refuse("secagg_unsafe", f"encoding bound {config.encoding.bound:g} would "
                                           f"clamp the noise (std {stddev:g})")

    def check_budget(self, spent: list[float], terms: RoundTerms) -> float:
        """Epsilon after one more round on `terms`, given the visible multipliers of the
        rounds already in the ledger; PolicyRefusal if that passes the lifetime budget."""
        after = composed_epsilon([*spent, terms.visible_multiplier], self.delta)
        if self.epsilon_budget is not None and after > self.epsilon_budget:
            raise _refuse("budget", f"epsilon would reach {after:.2f}, above this device's "
                                    f"limit {self.epsilon_budget:g} (delta {self.delta:g})")
        return after
