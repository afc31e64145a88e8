"""Federated evaluation: what a device reports about a model version, and what may be
read from the sum of such reports.

A device scores a model on its most recent messages (at most `max_words` words, whole
messages) exactly as docs/EVALUATION.md scores a split (`model.metrics.NextWordMetrics`),
and reports seven sums per model version (`FIELDS`). The report is one Gaussian mechanism,
sized like a training update (DP-FedAvg): each field is divided by a fixed `SCALE` (a
word's usual share of it, so that noise hurts every field alike) and the whole report by
its bound `report_bound(max_words, versions)`, times the round's clip norm C; the vector is
clipped to L2 norm C and the device adds the noise `federated.privacy` sizes for C. A
faithful report's scaled vector has norm at most C unless a device's words average more
than 5 characters and 6 nats each AND nearly all its messages are one word long, so the
clipping changes nothing in practice and the sums are exact up to the noise.

The server checks only what noise cannot break (`check_report`): the shape, finiteness,
the L2 bound, and each count within [-t sigma, max_words + t sigma] with t = 6 (a faithful
device fails one such check with probability about 1e-9). A noised count may be negative,
and noised hits may exceed noised words: that is the noise, not a lie, so the server
refuses only what lies beyond those margins. Without noise (sigma 0) the margins shrink
to float rounding, so impossible values (negative counts, hits above words) are refused.
"""
from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.words import words as scoring_words

FIELDS = ("words", "messages", "top1", "top3", "characters", "keystrokes_saved", "loss")
COUNTS = ("words", "messages", "top1", "top3")  # at most one per word each
SCALE = np.array([1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 6.0])  # a word's usual share, per field
TAIL = 6.0  # the checks hold for a faithful device except with probability ~exp(-TAIL^2/2)
Z95 = 1.959964  # two-sided 95% normal quantile
MAX_VERSIONS = 2  # the current model and, for a paired comparison, the previous one
MAX_WORDS = 100_000  # the most words a task may ask a device to score (server and device)


class ReportError(ValueError):
    """A report no faithful device could have sent; the message says why (for a 4xx)."""


def select_messages(messages: Sequence[str], max_words: int) -> list[str]:
    """The most recent messages (`messages` in time order) that fit in `max_words` scoring
    words together, whole, newest first, skipping any that would pass the cap; returned in
    time order. Messages with no word are left out (docs/EVALUATION.md drops them)."""
    chosen, used = [], 0
    for text in reversed(messages):
        n = len(scoring_words(text))
        if n and used + n <= max_words:
            chosen.append(text)
            used += n
    return chosen[::-1]


def report_bound(max_words: int, versions: int) -> float:
    """The L2 norm of the largest report the scaled fields allow: every field at one per
    word (after SCALE) for `max_words` words and each version."""
    return max_words * math.sqrt(len(FIELDS) * versions)


def to_wire(sums: Sequence[dict[str, float]], max_words: int, clip_norm: float,
            noise_stddev: float, rng: np.random.Generator | None = None) -> list[list[float]]:
    """The device's report: each version's sums scaled into C units, clipped together to
    `clip_norm`, then noised with `noise_stddev` per value (the device's own noise)."""
    raw = np.array([[s[f] for f in FIELDS] for s in sums], dtype=np.float64)
    # a model that gives a word no probability at all has an infinite loss: report the
    # largest a faithful report may carry instead (the cap's words at one share each)
    raw = np.nan_to_num(raw, nan=0.0, posinf=max_words * float(SCALE.max()), neginf=0.0)
    scaled = raw / SCALE * (clip_norm / report_bound(max_words, len(sums)))
    norm = float(np.linalg.norm(scaled))
    if norm > clip_norm:  # as privacy.clip, in float64: seven numbers, not a model
        scaled *= clip_norm / norm * (1.0 - 1e-9)
    if noise_stddev > 0:  # as privacy.add_noise: a generator from the OS's secure source
        rng = rng or np.random.default_rng(secrets.randbits(128))
        scaled = scaled + rng.normal(0.0, noise_stddev, scaled.shape)
    return scaled.tolist()


def field_stddev(max_words: int, clip_norm: float, versions: int, stddev: float) -> np.ndarray:
    """The noise of `stddev` (in C units) per field, in the fields' own units."""
    return stddev * report_bound(max_words, versions) / clip_norm * SCALE


def from_wire(values: np.ndarray, max_words: int, clip_norm: float) -> np.ndarray:
    """Scaled reports (or their sum), shape (versions, fields), back in the fields' units."""
    return values * report_bound(max_words, values.shape[0]) / clip_norm * SCALE


def check_report(values: object, versions: int, max_words: int, clip_norm: float,
                 stddev: float) -> np.ndarray:
    """The report as an array if a faithful device could have sent it (its noise of
    `stddev` per value, in C units, included); ReportError saying why not."""
    if not isinstance(values, list) or len(values) != versions or not all(
            isinstance(row, list) and len(row) == len(FIELDS) for row in values):
        raise ReportError(f"'sums' must be {versions} list(s) of {len(FIELDS)} numbers "
                          f"({', '.join(FIELDS)}), one per model version evaluated")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
               for row in values for v in row):
        raise ReportError("'sums' must hold numbers only")
    array = np.array(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ReportError("'sums' must be finite numbers (no NaN or infinity)")
    bound = clip_norm + stddev * (math.sqrt(array.size) + TAIL)
    norm = float(np.linalg.norm(array))
    if norm > bound * (1 + 1e-6):
        raise ReportError(f"the report's L2 norm {norm:.4g} is over the round's bound "
                          f"{bound:.4g} (clip norm {clip_norm} plus the task's noise)")
    raw = from_wire(array, max_words, clip_norm)
    sigma = field_stddev(max_words, clip_norm, versions, stddev)
    slack = TAIL * sigma + 1e-6 * max_words * SCALE  # float rounding when there is no noise
    col = {f: i for i, f in enumerate(FIELDS)}
    for row in raw:
        for f in FIELDS:
            i = col[f]
            if row[i] < -slack[i]:
                raise ReportError(f"'{f}' is {row[i]:.4g}: a count below zero, beyond what "
                                  "the task's noise explains")
            if f in COUNTS and row[i] > max_words + slack[i]:
                what = "words" if f == "words" else f"'{f}'"
                raise ReportError(f"{what} {row[i]:.4g} is more than the {max_words} words "
                                  "the device was asked to evaluate, beyond what the task's "
                                  "noise explains")
        for small, large in (("top1", "top3"), ("top3", "words"), ("messages", "words"),
                             ("keystrokes_saved", "characters")):
            gap = row[col[small]] - row[col[large]]
            if gap > math.hypot(slack[col[small]], slack[col[large]]):
                raise ReportError(f"'{small}' ({row[col[small]]:.4g}) is above '{large}' "
                                  f"({row[col[large]]:.4g}) beyond what the task's noise "
                                  "explains: an accuracy above 1 is impossible")
    return array


@dataclass(frozen=True)
class Estimate:
    """A figure read from noised sums, with the 95% interval the noise alone allows."""

    value: float
    low: float
    high: float
    stderr: float = 0.0  # the noise's standard error, before the interval is kept in range

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high,
                "stderr": self.stderr}


def ratio(num: float, den: float, s_num: float, s_den: float,
          lo: float = 0.0, hi: float = 1.0) -> Estimate | None:
    """num/den with its noise interval (delta method), kept within [lo, hi]; None when
    the noised denominator is too small for the noise to allow any estimate."""
    if den <= max(Z95 * s_den, 0.5):
        return None
    value = num / den
    se = math.sqrt(s_num ** 2 + (value * s_den) ** 2) / den
    keep = lambda x: min(hi, max(lo, x))  # noqa: E731
    return Estimate(keep(value), keep(value - Z95 * se), keep(value + Z95 * se), se)


def summarize(total: np.ndarray, sigma: np.ndarray) -> dict[str, object]:
    """One version's figures from its summed fields (in their units) and the sum's noise
    per field: top-1, top-3, KSR and perplexity with 95% noise intervals, and the counts."""
    t = dict(zip(FIELDS, total.tolist()))
    s = dict(zip(FIELDS, sigma.tolist()))
    events, s_events = t["words"] + t["messages"], math.hypot(s["words"], s["messages"])
    loss = ratio(t["loss"], events, s["loss"], s_events, 0.0, math.inf)
    figures = {
        "top1": ratio(t["top1"], t["words"], s["top1"], s["words"]),
        "top3": ratio(t["top3"], t["words"], s["top3"], s["words"]),
        "ksr": ratio(t["keystrokes_saved"], t["characters"], s["keystrokes_saved"],
                     s["characters"]),
        "perplexity": None if loss is None else Estimate(
            math.exp(min(loss.value, 700)), math.exp(min(loss.low, 700)),
            math.exp(min(loss.high, 700))),
    }
    return {"figures": {k: None if v is None else v.to_json() for k, v in figures.items()},
            "sums": {k: round(v, 3) for k, v in t.items()},
            "noise_stddev": {k: round(v, 3) for k, v in s.items()}}


def paired_difference(current: dict, previous: dict, name: str = "top1") -> dict | None:
    """current - previous of one figure over the same words, with a 95% interval from the
    two figures' independent noise (None when either could not be estimated). The standard
    errors are the figures' own: an interval cut at 0 or 1 is narrower than its noise."""
    a, b = current["figures"].get(name), previous["figures"].get(name)
    if a is None or b is None:
        return None
    stderr = lambda e: e.get("stderr", (e["ci_high"] - e["ci_low"]) / (2 * Z95))  # noqa: E731
    se = math.hypot(stderr(a), stderr(b))
    diff = a["value"] - b["value"]
    return {"value": diff, "ci_low": diff - Z95 * se, "ci_high": diff + Z95 * se}
