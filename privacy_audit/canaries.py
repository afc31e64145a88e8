"""Secret-sharer canaries and their exposure (Carlini et al. 2019, "The Secret Sharer").

A canary is a fixed template prefix ("my secret code is") followed by `length` words drawn
uniformly from a candidate set of the vocabulary. Some canaries are put into people's
histories (a number of copies, on one device or spread over several); others never are
and show what exposure chance gives.

Exposure of a canary in a model: draw `fillings` random secrets from the same space R,
score each (and the canary) by the model's log-likelihood of the secret words given the
prefix, and take the canary's rank r among them (1 = most likely):

    exposure = log2(|R'|) - log2(r),   R' = the fillings and the canary

so it lies in [0, log2(fillings + 1)]; a canary the model has not seen averages about
log2(e) = 1.44 bits. Beside it, `exposure_fit` extrapolates past that cap as Carlini et
al. (section 4.3) do: a skew-normal fitted to the fillings' log-likelihoods, exposure =
-log2 P[a random filling scores at least the canary's].
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from model.lstm import NextWordLSTM
from model.tokenizer import WordTokenizer

PREFIX = "my secret code is"


@dataclass(frozen=True)
class Canary:
    """One secret phrase and where it was put."""

    name: str
    secret: tuple[str, ...]
    copies: int = 0                 # 0: never inserted (a held-out canary)
    devices: tuple[str, ...] = ()   # senders whose histories hold the copies
    prefix: str = PREFIX

    @property
    def text(self) -> str:
        return f"{self.prefix} {' '.join(self.secret)}"


@dataclass
class Exposure:
    """A canary's exposure in one model."""

    name: str
    copies: int
    devices: int
    log_likelihood: float   # nats, of the secret words given the prefix
    rank: int               # among the fillings and the canary, 1 = most likely
    exposure: float         # bits, log2(fillings + 1) - log2(rank)
    exposure_fit: float     # bits, from the skew-normal fit (not capped)


def candidate_words(tokenizer: WordTokenizer, skip: int = 100, count: int = 2000,
                    exclude: Iterable[str] = ()) -> list[str]:
    """Alphabetic vocabulary words after the `skip` most frequent (ids follow frequency),
    at most `count` of them, without the template's words."""
    banned = set(exclude) | set(PREFIX.split())
    words = [w for w in tokenizer.id_to_word[4 + skip:] if w.isalpha() and w not in banned]
    return words[:count]


def make_canaries(candidates: Sequence[str], layout: Sequence[tuple[str, int, Sequence[str]]],
                  held_out: int, length: int, rng: np.random.Generator) -> list[Canary]:
    """Canaries for `layout` [(name, copies, devices)] and `held_out` never-inserted ones,
    each with a distinct random secret of `length` candidate words."""
    if length < 1 or len(candidates) < 2:
        raise ValueError("a canary needs at least one secret word and two candidates")
    seen: set[tuple[str, ...]] = set()

    def secret() -> tuple[str, ...]:
        while True:
            words = tuple(candidates[i] for i in rng.integers(len(candidates), size=length))
            if words not in seen:
                seen.add(words)
                return words
    out = [Canary(name, secret(), copies, tuple(devices)) for name, copies, devices in layout]
    out += [Canary(f"held-out-{i + 1}", secret()) for i in range(held_out)]
    return out


def insertions(canaries: Sequence[Canary]) -> dict[str, list[str]]:
    """Sender -> the canary messages its history gets (copies spread evenly over a
    canary's devices, the first devices taking any remainder)."""
    out: dict[str, list[str]] = {}
    for canary in canaries:
        if not canary.copies:
            continue
        if not canary.devices:
            raise ValueError(f"canary {canary.name} has copies but no device")
        share, extra = divmod(canary.copies, len(canary.devices))
        for i, device in enumerate(canary.devices):
            out.setdefault(device, []).extend([canary.text] * (share + (i < extra)))
    return out


@torch.inference_mode()
def secret_log_likelihoods(model: NextWordLSTM, tokenizer: WordTokenizer, prefix: str,
                           secrets: np.ndarray, batch: int = 512) -> np.ndarray:
    """log p(secret words | <bos> prefix) for each row of word ids `secrets` (B, length)."""
    model.eval()
    prefix_ids = [tokenizer.bos_id, *tokenizer.encode(prefix)]
    output, (h, c) = model.lstm(model.embedding(torch.tensor([prefix_ids])))
    first = torch.log_softmax(model.logits(output[0, -1]), dim=-1)
    ids = torch.as_tensor(secrets, dtype=torch.long)
    total = np.empty(len(ids))
    for start in range(0, len(ids), batch):
        x = ids[start:start + batch]
        score = first[x[:, 0]]
        if x.shape[1] > 1:
            n = len(x)
            state = (h.expand(-1, n, -1).contiguous(), c.expand(-1, n, -1).contiguous())
            out, _ = model.lstm(model.embedding(x[:, :-1]), state)
            logp = F.log_softmax(model.logits(out), dim=-1)
            score = score + logp.gather(2, x[:, 1:, None])[..., 0].sum(dim=1)
        total[start:start + len(x)] = score.numpy()
    return total


def _tail_bits(reference: np.ndarray):
    """x -> -log2 P[X >= x] under a skew-normal fitted (once) to `reference`."""
    from scipy import stats
    params = stats.skewnorm.fit(reference)
    return lambda value: float(-stats.skewnorm.logsf(value, *params) / math.log(2))


def exposures(model: NextWordLSTM, tokenizer: WordTokenizer, canaries: Sequence[Canary],
              candidates: Sequence[str], fillings: int = 10_000,
              rng: np.random.Generator | None = None) -> list[Exposure]:
    """Each canary's exposure against the same `fillings` random secrets of its space."""
    if not canaries:
        return []
    rng = rng or np.random.default_rng(0)
    length, prefix = len(canaries[0].secret), canaries[0].prefix
    if any(len(c.secret) != length or c.prefix != prefix for c in canaries):
        raise ValueError("all canaries of one audit share the prefix and the secret length")
    ids = np.array([tokenizer.word_to_id[w] for w in candidates])
    random_ll = secret_log_likelihoods(
        model, tokenizer, prefix, ids[rng.integers(len(ids), size=(fillings, length))])
    canary_ll = secret_log_likelihoods(
        model, tokenizer, prefix,
        np.array([[tokenizer.word_to_id[w] for w in c.secret] for c in canaries]))
    ordered = np.sort(random_ll)
    fitted = _tail_bits(random_ll)
    out = []
    for canary, ll in zip(canaries, canary_ll):
        rank = 1 + int(len(ordered) - np.searchsorted(ordered, ll, side="right"))
        out.append(Exposure(canary.name, canary.copies, len(canary.devices), float(ll), rank,
                            math.log2(fillings + 1) - math.log2(rank),
                            fitted(float(ll))))
    return out


def suggestion_check(predictor, canary: Canary, k: int = 3) -> dict:
    """Does the keyboard suggest the secret? Type the prefix, then each secret word in
    turn, and look for the next secret word among the top-k suggestions.

    `predictor` is a `model.predictor.Predictor`. Returns how many of the secret words
    were suggested, and whether the first one was (typing only the prefix).
    """
    hits = []
    for i, word in enumerate(canary.secret):
        typed = " ".join([canary.prefix, *canary.secret[:i]]) + " "
        hits.append(word in [s.lower() for s in predictor.suggest(typed, k)])
    return {"name": canary.name, "copies": canary.copies, "first_word_suggested": hits[0],
            "words_suggested": int(sum(hits)), "length": len(canary.secret)}


def as_rows(results: Sequence[Exposure]) -> list[dict]:
    return [asdict(r) for r in results]
