"""SecAgg+ neighbourhoods (Bell et al., CCS 2020) and the choice of degree k and threshold t.

The graph: the n client ids are put on a ring in the order of SHA-256(seed || id) (a
public, version-independent random permutation), and each client is joined to the k/2
nearest clients on either side (a Harary graph H(k, n) on that permutation). k = n - 1 is
the complete graph, i.e. the original protocol of Bonawitz et al. (CCS 2017). A client
masks with its k neighbours and Shamir-shares its secrets among its k neighbours and
itself (k + 1 holders), t of which reconstruct them.

Choosing k and t for n clients, a dropout rate delta and a fraction gamma of clients that
collude with the server (each modelled as independent per client; union bounds over the
n clients), with a security target 2^-sigma and a correctness target 2^-eta:
- Shares (security): an honest client reveals, for each peer, either the seed share or the
  key share, never both; a server that lies about who dropped out can therefore collect
  both secrets of a client only if t <= (k + 1 + c) / 2, with c its corrupt neighbours. So
  require n * P[Bin(k, gamma) >= 2t - k - 1] <= 2^-sigma (with gamma = 0: t > (k + 1) / 2).
- Connectivity (security): the server learns the sum of each connected component of the
  honest surviving clients; H(k, n) minus a set of bad (dropped or corrupt) clients is
  disconnected only if two runs of k/2 consecutive ring positions are all bad, so require
  n^2 / 2 * (delta + gamma)^k <= 2^-sigma (the complete graph is never disconnected).
- Reconstruction (correctness): every client needs t surviving holders:
  n * P[Bin(k, delta) > k - t] <= 2^-eta, otherwise the round is abandoned.
`choose_degree` returns the smallest even k (and its smallest secure t) meeting all three;
when none below n - 1 does, the complete graph with the smallest secure t (correctness then
best effort). k grows like log n: with delta = 0.1, gamma = 0, sigma = 40, eta = 10 it
gives (k, t) = (9, 6) for n = 10 (complete), (20, 11) for n = 50 and n = 100, (24, 13) for
n = 1000 and (30, 16) for n = 10000; with delta = 0.1 and gamma = 0.05, (58, 41) for n = 100.
"""
from __future__ import annotations

import functools
import hashlib
import math

MAX_SPARSE_DEGREE = 1024


def ring_order(num_clients: int, seed: bytes) -> list[int]:
    """Client ids 1..n in the public pseudo-random order fixed by `seed`."""
    ids = range(1, num_clients + 1)
    return sorted(ids, key=lambda i: hashlib.sha256(seed + i.to_bytes(4, "big")).digest())


def neighbourhoods(num_clients: int, degree: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Each client id's neighbours (not itself) in the Harary graph H(degree, n) on the ring."""
    if degree >= num_clients - 1:
        everyone = frozenset(range(1, num_clients + 1))
        return {i: everyone - {i} for i in everyone}
    if degree < 2 or degree % 2:
        raise ValueError(f"a sparse degree must be even and at least 2, got {degree}")
    order = ring_order(num_clients, seed)
    half = degree // 2
    return {u: frozenset(order[(j + o) % num_clients] for o in range(-half, half + 1) if o)
            for j, u in enumerate(order)}


def neighbours(num_clients: int, degree: int, seed: bytes, client: int) -> frozenset[int]:
    """One client's neighbours (what a device computes: no need for the whole graph)."""
    if degree >= num_clients - 1:
        return frozenset(range(1, num_clients + 1)) - {client}
    order = ring_order(num_clients, seed)
    j, half = order.index(client), degree // 2
    return frozenset(order[(j + o) % num_clients] for o in range(-half, half + 1) if o)


def _tail(k: int, p: float, c: int) -> float:
    """P[Binomial(k, p) >= c]."""
    if c <= 0:
        return 1.0
    return sum(math.comb(k, i) * p ** i * (1 - p) ** (k - i) for i in range(c, k + 1))


@functools.lru_cache(maxsize=256)  # pure, and servers ask for the same n again and again
def choose_degree(num_clients: int, dropout_rate: float = 0.1, corrupt_rate: float = 0.0,
                  security_bits: int = 40, correctness_bits: int = 10) -> tuple[int, int]:
    """(k, t) for `num_clients` clients; see the module docstring.

    With many corrupt clients and few clients, t can reach k + 1: secure, but then any
    dropout among the holders abandons the round.
    """
    n, d, g = num_clients, dropout_rate, corrupt_rate
    if n < 2 or not (0 <= d < 1 and 0 <= g < 1):
        raise ValueError("need at least 2 clients and rates in [0, 1)")
    secure_bound = 2.0 ** -security_bits / n
    for k in [*range(2, min(n - 1, MAX_SPARSE_DEGREE + 1), 2), n - 1]:
        # t = k + 1 always qualifies: no one but the client itself can give its own b-share.
        t = next(t for t in range(1, k + 2) if _tail(k, g, 2 * t - k - 1) <= secure_bound)
        connected = k >= n - 1 or n * n / 2 * (d + g) ** k <= 2.0 ** -security_bits
        reliable = n * _tail(k, d, k - t + 1) <= 2.0 ** -correctness_bits
        if (connected and reliable) or k == n - 1:
            return k, t
    raise AssertionError("unreachable: k = n - 1 always returns")
