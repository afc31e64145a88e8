"""`SecAggConfig`: everything public about one secure-aggregation round, and the rule
(`hiding_problem`) that says whether its (n, k, t) keep one device's input hidden."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from federated.secagg import graph
from federated.secagg.encoding import FixedPoint, ModularIntegers, encoding_from_dict
from federated.secagg.messages import MessageError, _b64, _bytes, _int

SEED_BYTES = 32
MAX_CLIENTS = 100_000
DROPOUT_RATE = 0.1  # dropouts a server plans for by default (`secagg_dropout_rate`)


def round_shape(target: int, capacity: int, dropout_rate: float = DROPOUT_RATE,
                corrupt_rate: float = 0.0) -> tuple[int, int, int]:
    """(n, k, t) of a server's secure round that hands out `capacity` tasks and waits for
    `target` reports: n = capacity client ids; k and t from `graph.choose_degree`, counting
    the tasks that may never be handed out (capacity above the target) as dropouts."""
    planned = min(0.9, dropout_rate + 1.0 - target / capacity)
    return (capacity, *graph.choose_degree(capacity, planned, corrupt_rate))


def max_overcommit(target: int, wanted: float, dropout_rate: float = DROPOUT_RATE,
                   corrupt_rate: float = 0.0) -> float:
    """The largest overcommit up to `wanted` whose secure round still finishes when the
    planned share of the target drops out after advertising keys (t at most the target less
    those, and at least 2): t > (k + 1) / 2 of the capacity, so a secure round cannot hand
    out much more than twice its target (the server refuses t above the target)."""
    limit = max(2, target - math.ceil(target * dropout_rate))
    for capacity in range(max(target, math.ceil(target * wanted - 1e-9)), target, -1):
        if round_shape(target, capacity, dropout_rate, corrupt_rate)[2] <= limit:
            return capacity / target
    return 1.0


def hiding_problem(num_clients: int, degree: int, threshold: int,
                   corrupt_neighbours: int = 0) -> str | None:
    """Why SecAgg+ parameters (n, k, t) would let a malicious server learn one device's
    input, in words a person can read; None if they keep every input hidden.

    The rule is 2t > k + 1 + c and t >= 2, with c the device's neighbours assumed to be
    the server's own devices (default 0). Why: a device's mask seed b_u and mask key s_u
    are Shamir-shared among its k neighbours and itself (k + 1 holders; k = n - 1 is the
    complete graph of Bonawitz et al. 2017), t of whom rebuild either. With both, the
    server removes every mask and reads the input. An honest holder reveals one of the
    two for each peer, never both, and before revealing anything it checks t signatures
    of the round's members on the same set of survivors (the consistency round): a server
    that lies about who dropped out must split the honest holders into those told "u
    survived" (b_u shares, u's own among them) and those told "u dropped" (s_u shares),
    and can add the c shares of its own devices to both. It needs t of each, i.e.
    2t <= (k + 1 - c) + 2c; 2t > k + 1 + c rules that out. Bonawitz et al.'s active-
    adversary theorem (t > 2n/3 with fewer than n/3 corrupt users) is the case c = n/3 of
    the same count over n holders; Bell et al. (CCS 2020) apply it per neighbourhood. And
    t >= 2 keeps the smallest sum the server may unmask, a device with t - 1 surviving
    neighbours, from being one device's input (the threshold-1 attack).
    """
    n, k, t, c = num_clients, degree, threshold, corrupt_neighbours
    if not 2 <= n <= MAX_CLIENTS or not (k == n - 1 or (2 <= k < n - 1 and k % 2 == 0)):
        return (f"the secure-aggregation settings are malformed ({n} devices, each masking "
                f"with {k} others)")
    if not 0 <= c <= k:
        raise ValueError(f"corrupt_neighbours must be in 0..{k}, got {c}")
    needed = max(2, (k + 1 + c) // 2 + 1)
    if t < needed:
        return (f"the server asked that any {t} of a device's {k + 1} share holders can "
                f"unlock its masks; at least {needed} are needed so that a server lying "
                "about who dropped out cannot unmask one device's update")
    if t > k + 1:
        return (f"the server asked for {t} of a device's {k + 1} share holders, more than "
                "there are: the round could never finish")
    return None


@dataclass(frozen=True)
class SecAggConfig:
    """The public parameters of a round; the server sends `to_dict()` to every device.

    Client ids are 1..num_clients (the server maps its device ids to them). Each client
    masks with `degree` neighbours of the graph fixed by `graph_seed` (degree =
    num_clients - 1: every other client, the original protocol) and shares its secrets
    among those neighbours and itself, `threshold` of whom reconstruct them. The round is
    abandoned if fewer than `min_clients` masked inputs arrive.
    """

    round_id: int
    num_clients: int
    degree: int
    threshold: int
    graph_seed: bytes
    dimension: int
    encoding: FixedPoint | ModularIntegers
    min_clients: int

    def __post_init__(self) -> None:
        n, k, t = self.num_clients, self.degree, self.threshold
        problems = [
            (not 2 <= n <= MAX_CLIENTS, f"num_clients must be in 2..{MAX_CLIENTS}, got {n}"),
            (n > self.encoding.max_clients, f"encoding sums at most {self.encoding.max_clients}"
                                            f" clients, round has {n}"),
            (not (k == n - 1 or (2 <= k < n - 1 and k % 2 == 0)),
             f"degree must be even in 2..{n - 2} or exactly {n - 1}, got {k}"),
            (not 1 <= t <= k + 1, f"threshold must be in 1..{k + 1}, got {t}"),
            (len(self.graph_seed) != SEED_BYTES, f"graph_seed must be {SEED_BYTES} bytes"),
            (self.dimension < 1, f"dimension must be positive, got {self.dimension}"),
            (not 1 <= self.min_clients <= n, f"min_clients must be in 1..{n}"),
        ]
        for bad, message in problems:
            if bad:
                raise ValueError(message)

    @classmethod
    def create(cls, round_id: int, num_clients: int, dimension: int, clip_norm: float,
               noise_stddev: float, dropout_rate: float = 0.1, corrupt_rate: float = 0.0,
               min_clients: int | None = None, degree: int | None = None,
               graph_seed: bytes | None = None, threshold: int | None = None,
               encoding: FixedPoint | ModularIntegers | None = None) -> SecAggConfig:
        """A config with k, t from `graph.choose_degree` (or the given degree, and the given
        threshold or the smallest t > (k+1)/2) and the encoding from `FixedPoint.choose`
        (or the given one: `ModularIntegers` for compressed rounds)."""
        if degree is None:
            degree, threshold = graph.choose_degree(num_clients, dropout_rate, corrupt_rate)
        else:
            degree = min(degree, num_clients - 1)
            threshold = threshold or (degree + 1) // 2 + 1  # the smallest t > (k + 1) / 2
        encoding = encoding or FixedPoint.choose(clip_norm, noise_stddev, num_clients, dimension)
        return cls(round_id, num_clients, degree, threshold, graph_seed or os.urandom(SEED_BYTES),
                   dimension, encoding, min_clients or threshold)

    @cached_property
    def graph(self) -> dict[int, frozenset[int]]:
        """Every client's neighbours (not itself)."""
        return graph.neighbourhoods(self.num_clients, self.degree, self.graph_seed)

    @property
    def max_masked_bytes(self) -> int:
        """The size limit for a masked input's safetensors bytes."""
        return self.dimension * self.encoding.dtype.itemsize + 1024

    @property
    def context(self) -> bytes:
        """Bytes naming this round, mixed into every key derivation and associated data."""
        return self.round_id.to_bytes(8, "big") + self.graph_seed

    def to_dict(self) -> dict:
        return {"round_id": self.round_id, "num_clients": self.num_clients,
                "degree": self.degree, "threshold": self.threshold,
                "graph_seed": _b64(self.graph_seed), "dimension": self.dimension,
                "encoding": self.encoding.to_dict(), "min_clients": self.min_clients}

    @classmethod
    def from_dict(cls, data: Any) -> SecAggConfig:
        """Parse and check; raises MessageError with the reason."""
        keys = {"round_id", "num_clients", "degree", "threshold", "graph_seed", "dimension",
                "encoding", "min_clients"}
        if not isinstance(data, dict) or set(data) != keys:
            raise MessageError(f"round config must be an object with exactly {sorted(keys)}")
        try:
            return cls(_int(data["round_id"], "round_id"),
                       _int(data["num_clients"], "num_clients", 2),
                       _int(data["degree"], "degree", 1), _int(data["threshold"], "threshold", 1),
                       _bytes(data["graph_seed"], "graph_seed", SEED_BYTES),
                       _int(data["dimension"], "dimension", 1),
                       encoding_from_dict(data["encoding"]),
                       _int(data["min_clients"], "min_clients", 1))
        except MessageError:
            raise
        except ValueError as err:
            raise MessageError(f"round config: {err}") from None
