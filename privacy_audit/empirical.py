"""One-run empirical epsilon (Andrew et al., ICLR 2024, "One-shot empirical privacy
estimation for federated learning").

Canary devices take part in rounds like any device but, instead of training, send a fixed
random direction of L2 norm C (the clip norm), with the round's noise. After training,
the cosine between the final model delta (final - start) and each canary's direction is
computed for the inserted canaries and for as many held-out directions that were never
sent. The inserted cosines are summarised by a Gaussian, the never-sent ones follow
N(0, 1/d) (d parameters; the held-out directions check it); the empirical epsilon is the
epsilon (at delta) of telling these two Gaussians apart, i.e. of telling from the final
model alone whether a canary took part. It is an estimate for an
adversary who sees only the final model, not a bound; the accountant's epsilon bounds an
adversary who sees every round's model.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

Shapes = Mapping[str, tuple[int, ...]]
DIRECTION_TAG = 0x5EC2E7  # keeps canary directions apart from every other seeded stream


def direction(seed: int, shapes: Shapes, norm: float = 1.0) -> dict[str, np.ndarray]:
    """A uniformly random direction over all tensors (sorted by name), of L2 norm `norm`."""
    rng = np.random.default_rng([DIRECTION_TAG, seed])
    parts = {k: rng.standard_normal(int(np.prod(shapes[k]))) for k in sorted(shapes)}
    scale = norm / math.sqrt(sum(float(v @ v) for v in parts.values()))
    return {k: (v * scale).reshape(shapes[k]).astype(np.float32) for k, v in parts.items()}


def flat(tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    """All tensors as one float64 vector, names sorted (the order `direction` uses)."""
    return np.concatenate([np.asarray(tensors[k], dtype=np.float64).ravel()
                           for k in sorted(tensors)])


def cosines(delta: Mapping[str, np.ndarray], seeds: Iterable[int]) -> np.ndarray:
    """Cosine between the model delta and each seed's direction."""
    d = flat(delta)
    shapes = {k: np.shape(v) for k, v in delta.items()}
    d /= np.linalg.norm(d) or 1.0
    return np.array([float(flat(direction(s, shapes)) @ d) for s in seeds])


def _tail_delta(eps: float, mu0: float, s0: float, mu1: float, s1: float,
                grid: np.ndarray) -> float:
    """sup over both orders of integral (p - e^eps q)_+ for the two Gaussians."""
    from scipy import stats
    log_p = stats.norm.logpdf(grid, mu1, s1)
    log_q = stats.norm.logpdf(grid, mu0, s0)
    step = grid[1] - grid[0]
    worst = 0.0
    for a, b in ((log_p, log_q), (log_q, log_p)):
        with np.errstate(over="ignore"):  # exp overflows to inf: no mass there
            diff = np.exp(a) - np.exp(eps + b)
        worst = max(worst, float(np.clip(diff, 0, None).sum() * step))
    return worst


def gaussian_epsilon(mu0: float, s0: float, mu1: float, s1: float, delta: float) -> float:
    """The epsilon at `delta` of distinguishing N(mu0, s0^2) from N(mu1, s1^2) (both
    directions; variances may differ), by numerical integration on a fine grid."""
    if min(s0, s1) <= 0:
        raise ValueError("standard deviations must be positive")
    spread = max(s0, s1)
    grid = np.linspace(min(mu0, mu1) - 40 * spread, max(mu0, mu1) + 40 * spread, 400_001)
    if _tail_delta(0.0, mu0, s0, mu1, s1, grid) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while _tail_delta(high, mu0, s0, mu1, s1, grid) > delta:
        low, high = high, high * 2
        if high > 1e4:
            return math.inf
    while high - low > 1e-4 * max(1.0, high):
        mid = (low + high) / 2
        low, high = (mid, high) if _tail_delta(mid, mu0, s0, mu1, s1, grid) > delta else (low, mid)
    return high


def empirical_epsilon(inserted: np.ndarray, held_out: np.ndarray, delta: float,
                      dim: int) -> dict:
    """Andrew et al.'s estimate from the cosines of the inserted directions.

    The null (a direction that was never sent) is N(0, 1/dim): the cosine of a uniformly
    random direction in `dim` dimensions; the held-out directions' cosines check it.
    `epsilon`: the null against a Gaussian fitted to the inserted cosines (mean and
    standard deviation), as in the paper. With few canaries the fitted standard deviation
    is itself noisy and a mismatch of variances alone yields a positive epsilon, so
    `epsilon_mean_shift` gives the equal-variance figure too: the Gaussian mechanism
    whose shift is the inserted mean in units of the null's standard deviation.
    """
    if len(inserted) < 2 or len(held_out) < 2:
        raise ValueError("need at least two inserted and two held-out canaries")
    null_std = 1.0 / math.sqrt(dim)
    mu1, s1 = float(np.mean(inserted)), float(np.std(inserted, ddof=1))
    return {"epsilon": gaussian_epsilon(0.0, null_std, mu1, max(s1, 1e-12), delta),
            "epsilon_mean_shift": gaussian_epsilon(0.0, null_std, mu1, null_std, delta),
            "delta": delta, "dim": dim, "null_std": null_std,
            "inserted_mean": mu1, "inserted_std": s1,
            "held_out_mean": float(np.mean(held_out)),
            "held_out_std": float(np.std(held_out, ddof=1)),
            "inserted": len(inserted), "held_out": len(held_out)}
