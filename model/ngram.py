"""Interpolated modified Kneser-Ney trigram over tokenizer ids: the count-based baseline.

Chen & Goodman (1998) with KenLM's adjusted counts: the top order uses raw counts, lower
orders use continuation counts (how many distinct words precede), except n-grams that
start with <bos>, which nothing can precede. Discounts D1, D2, D3+ per order come from
count-of-counts. The unigram level interpolates with a uniform distribution over every
event (all ids but <pad> and <bos>), so every event has a probability above zero.
It plugs into `model.predictor.Predictor` and `model.evaluate` like the LSTM.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.tokenizer import WordTokenizer

Context = tuple[int, ...]
_MIN_DISCOUNT = 0.05


def discounts(counts: np.ndarray) -> np.ndarray:
    """Modified KN discounts [0, D1, D2, D3+] from the count-of-counts of `counts`."""
    n = [int((counts == r).sum()) for r in range(1, 5)]
    d = np.array([0.0, 0.5, 1.0, 1.5])  # only for corpora too small to estimate
    if n[0] and n[1]:
        y = n[0] / (n[0] + 2 * n[1])
        for r in (1, 2, 3):
            if n[r - 1]:
                d[r] = r - (r + 1) * y * (n[r] / n[r - 1])
    return np.array([0.0] + [float(np.clip(d[r], _MIN_DISCOUNT, r)) for r in (1, 2, 3)])


@dataclass
class _Level:
    """One order: per context, discounted next-word shares and a back-off weight."""

    contexts: np.ndarray  # sorted context keys
    ptr: np.ndarray  # entries of contexts[i] are [ptr[i], ptr[i+1])
    next_ids: np.ndarray
    shares: np.ndarray  # (count - D) / context total
    gamma: np.ndarray  # (D1 N1 + D2 N2 + D3 N3+) / context total
    discount: np.ndarray

    @classmethod
    def build(cls, keys: np.ndarray, counts: np.ndarray, vocab_size: int) -> _Level:
        """From sorted unique n-gram keys (context * V + next) and their counts."""
        d = discounts(counts)
        ctx = keys // vocab_size
        contexts, starts = np.unique(ctx, return_index=True)
        totals = np.add.reduceat(counts, starts).astype(np.float64)
        group = np.repeat(np.arange(len(contexts)), np.diff(np.append(starts, len(keys))))
        capped = np.minimum(counts, 3)
        mass = np.add.reduceat(d[capped], starts)
        return cls(contexts, np.append(starts, len(keys)), (keys % vocab_size).astype(np.int64),
                   (counts - d[capped]) / totals[group], mass / totals, d)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Index of each key in `contexts`, or -1."""
        if not len(self.contexts):
            return np.full(len(keys), -1)
        i = np.minimum(np.searchsorted(self.contexts, keys), len(self.contexts) - 1)
        return np.where(self.contexts[i] == keys, i, -1)

    def mix(self, probs: np.ndarray, keys: np.ndarray) -> None:
        """probs[r] <- gamma * probs[r] + shares of context keys[r], for rows whose key exists."""
        found = self.find(keys)
        rows = np.flatnonzero(found >= 0)
        if not len(rows):
            return
        idx = found[rows]
        probs[rows] *= self.gamma[idx][:, None]
        lengths = self.ptr[idx + 1] - self.ptr[idx]
        entry = np.repeat(self.ptr[idx] - np.cumsum(lengths) + lengths, lengths) \
            + np.arange(lengths.sum())
        probs[np.repeat(rows, lengths), self.next_ids[entry]] += self.shares[entry]

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        return {f"{name}.{k}": getattr(self, k) for k in
                ("contexts", "ptr", "next_ids", "shares", "gamma", "discount")}

    @classmethod
    def from_arrays(cls, name: str, arrays: dict[str, np.ndarray]) -> _Level:
        return cls(*(arrays[f"{name}.{k}"] for k in
                     ("contexts", "ptr", "next_ids", "shares", "gamma", "discount")))


def _unique_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys, counts = np.unique(keys, return_counts=True)
    return keys, counts.astype(np.int64)


class KneserNey:
    """p(w | u, v) over the tokenizer's ids; the same scorer interface as the LSTM."""

    def __init__(self, vocab_size: int, unigram: np.ndarray, bigram: _Level,
                 trigram: _Level, bos_id: int = 2) -> None:
        self.vocab_size, self.bos_id = vocab_size, bos_id
        self.unigram, self.bigram, self.trigram = unigram, bigram, trigram

    @classmethod
    def train(cls, sequences: Sequence[Sequence[int]], vocab_size: int,
              pad_id: int = 0, bos_id: int = 2) -> KneserNey:
        """Counts from token sequences [<bos>, w1, ..., wn, <eos>] (as `encode_messages`)."""
        seqs = [s for s in sequences if len(s) >= 2]
        if not seqs:
            raise ValueError("no sequence with at least one event to count")
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])
        if flat.min() < 0 or flat.max() >= vocab_size:
            raise ValueError(f"token ids must lie in [0, {vocab_size})")
        pos = np.concatenate([np.arange(len(s)) for s in seqs])
        big_v, v2 = np.int64(vocab_size), np.int64(vocab_size) ** 2
        i2 = np.flatnonzero(pos >= 2)
        tri_keys, tri_counts = _unique_counts(flat[i2 - 2] * v2 + flat[i2 - 1] * big_v + flat[i2])
        i1 = np.flatnonzero(pos >= 1)
        bi_keys, bi_counts = _unique_counts(flat[i1 - 1] * big_v + flat[i1])
        # Adjusted bigram counts: distinct left neighbours, raw counts after <bos>.
        cont_keys, cont_counts = _unique_counts(tri_keys % v2)
        adjusted = bi_counts.copy()
        after_bos = bi_keys // big_v == bos_id
        where = np.searchsorted(cont_keys, bi_keys[~after_bos])
        adjusted[~after_bos] = cont_counts[where]
        unigram = cls._unigram(np.bincount(bi_keys % big_v, minlength=vocab_size),
                               vocab_size, pad_id, bos_id)
        return cls(vocab_size, unigram, _Level.build(bi_keys, adjusted, vocab_size),
                   _Level.build(tri_keys, tri_counts, vocab_size), bos_id)

    @staticmethod
    def _unigram(adjusted: np.ndarray, vocab_size: int, pad_id: int, bos_id: int) -> np.ndarray:
        d = discounts(adjusted[adjusted > 0])
        total = adjusted.sum()
        probs = np.maximum(adjusted - d[np.minimum(adjusted, 3)], 0) / total
        gamma = d[np.minimum(adjusted[adjusted > 0], 3)].sum() / total
        events = np.ones(vocab_size, dtype=bool)
        events[[pad_id, bos_id]] = False
        probs[events] += gamma / events.sum()
        probs[~events] = 0.0
        return probs

    @classmethod
    def from_messages(cls, messages: Sequence[str], tokenizer: WordTokenizer) -> KneserNey:
        return cls.train(tokenizer.encode_messages(list(messages)), tokenizer.vocab_size,
                         tokenizer.pad_id, tokenizer.bos_id)

    # --- the scorer interface -------------------------------------------------------
    def start(self) -> Context:
        return (self.bos_id,)

    def step(self, state: Context, word_id: int) -> Context:
        return (*state, word_id)[-2:]

    def probs(self, contexts: Sequence[Context]) -> np.ndarray:
        """p(. | context) for each context of 0-2 ids, shape (len(contexts), V)."""
        out = np.tile(self.unigram, (len(contexts), 1))
        big_v = np.int64(self.vocab_size)
        last = np.array([c[-1] if c else -1 for c in contexts], dtype=np.int64)
        self.bigram.mix(out, last)
        pair = np.array([c[-2] * big_v + c[-1] if len(c) >= 2 else -1 for c in contexts],
                        dtype=np.int64)
        self.trigram.mix(out, pair)
        return out

    def log_probs(self, state: Context) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.probs([state])[0].astype(np.float32))

    def score_messages(self, sequences: Sequence[Sequence[int]]
                       ) -> Iterator[tuple[int, np.ndarray]]:
        """(index, log-probs (len - 1, V)) for each sequence [<bos>, ..., <eos>], in order."""
        for n, seq in enumerate(sequences):
            contexts = [tuple(seq[max(0, i - 1):i + 1]) for i in range(len(seq) - 1)]
            with np.errstate(divide="ignore"):
                yield n, np.log(self.probs(contexts).astype(np.float32))

    # --- files without pickle ---------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """An .npz file of plain arrays (read back with allow_pickle=False)."""
        np.savez(path, vocab_size=np.int64(self.vocab_size), bos_id=np.int64(self.bos_id),
                 unigram=self.unigram, **self.bigram.arrays("bigram"),
                 **self.trigram.arrays("trigram"))

    @classmethod
    def load(cls, path: str | Path) -> KneserNey:
        """A model written by `save`; ValueError when the file is not one."""
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            return cls(int(arrays["vocab_size"]), arrays["unigram"],
                       _Level.from_arrays("bigram", arrays),
                       _Level.from_arrays("trigram", arrays), int(arrays["bos_id"]))
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{path}: not a saved Kneser-Ney model ({err})") from None
