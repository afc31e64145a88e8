"""Typo corrections for the suggestion strip: words one edit away from what was typed,
ranked with the language model and a keyboard-aware cost of the edit.

An edit is a substitution, a deletion, an insertion or the transposition of two adjacent
letters (Damerau). Its cost is a log-probability added to the model's score of the word:
hitting a neighbouring key, doubling or dropping a doubled letter and swapping two letters
are common; any other edit is rarer. Candidates come from a deletion index (SymSpell): every
word and every word with one letter deleted, so a lookup is a few dictionary reads.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.metrics import best_k

QWERTY = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_ROW_SHIFT = (0.0, 0.25, 0.75)  # how far each row starts to the right, in keys


def _neighbours() -> dict[str, frozenset[str]]:
    """Keys that touch each letter key on a QWERTY layout (same row and the rows around)."""
    where = {c: (r, col + _ROW_SHIFT[r]) for r, row in enumerate(QWERTY)
             for col, c in enumerate(row)}
    return {c: frozenset(d for d, (r2, x2) in where.items() if d != c and (
        (r2 == r and abs(x2 - x) <= 1) or (abs(r2 - r) == 1 and abs(x2 - x) < 1)))
        for c, (r, x) in where.items()}


NEIGHBOURS = _neighbours()


@dataclass(frozen=True)
class EditCosts:
    """Log-probabilities of single typing errors (natural log; tuned on `valid` only)."""

    neighbour_substitution: float = -3.0
    other_substitution: float = -7.0
    transposition: float = -4.0
    doubled_letter_dropped: float = -3.5
    letter_dropped: float = -5.0
    letter_repeated: float = -3.5
    neighbour_inserted: float = -4.0
    other_inserted: float = -7.0


def edit_cost(typed: str, word: str, costs: EditCosts = EditCosts()) -> float | None:
    """The cost of typing `word` as `typed` with one error, or None if it takes more (or
    none: equal strings are not a correction)."""
    n, m = len(typed), len(word)
    if n == m:
        diff = [i for i in range(n) if typed[i] != word[i]]
        if len(diff) == 1:
            i = diff[0]
            return (costs.neighbour_substitution if typed[i] in NEIGHBOURS.get(word[i], ())
                    else costs.other_substitution)
        if (len(diff) == 2 and diff[1] == diff[0] + 1
                and typed[diff[0]] == word[diff[1]] and typed[diff[1]] == word[diff[0]]):
            return costs.transposition
        return None
    if n == m - 1:  # a letter of `word` was not typed
        i = _first_difference(typed, word)
        if typed[i:] != word[i + 1:]:
            return None
        doubled = word[i] in (word[i - 1:i], word[i + 1:i + 2])
        return costs.doubled_letter_dropped if doubled else costs.letter_dropped
    if n == m + 1:  # an extra letter was typed
        i = _first_difference(word, typed)
        if word[i:] != typed[i + 1:]:
            return None
        extra, around = typed[i], typed[i - 1:i] + typed[i + 1:i + 2]
        if extra in around:
            return costs.letter_repeated
        if any(extra in NEIGHBOURS.get(c, ()) for c in around):
            return costs.neighbour_inserted
        return costs.other_inserted
    return None


def _first_difference(short: str, long: str) -> int:
    i = 0
    while i < len(short) and short[i] == long[i]:
        i += 1
    return i


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


class Corrector:
    """Words of a key list within one edit of a typed key, with the edit's cost."""

    MIN_LENGTH = 3  # shorter typed keys are beginnings of words: no corrections

    def __init__(self, keys: Sequence[str], ids: np.ndarray,
                 costs: EditCosts = EditCosts()) -> None:
        self.costs = costs
        self.index: dict[str, list[int]] = defaultdict(list)  # key or key minus a letter
        self.keys = list(keys)
        self.ids = ids
        for pos, key in enumerate(self.keys):
            if len(key) < self.MIN_LENGTH:
                continue
            self.index[key].append(pos)
            for shorter in _deletions(key):
                self.index[shorter].append(pos)
        self.index = dict(self.index)

    def candidates(self, typed_key: str) -> tuple[np.ndarray, np.ndarray]:
        """(model ids, costs) of the words one edit from `typed_key` (not the key itself)."""
        if len(typed_key) < self.MIN_LENGTH:
            return self.ids[:0], np.zeros(0, dtype=np.float32)
        found: dict[int, float] = {}
        get = self.index.get
        for probe in (typed_key, *_deletions(typed_key)):
            for pos in get(probe, ()):
                if pos in found:
                    continue
                cost = edit_cost(typed_key, self.keys[pos], self.costs)
                if cost is not None:
                    found[pos] = cost
        positions = np.fromiter(found, dtype=np.int64, count=len(found))
        return self.ids[positions], np.fromiter(found.values(), dtype=np.float32,
                                                count=len(found))


TYPED = -1  # in a choice: the typed letters themselves, not a vocabulary word


def choose(scores: np.ndarray, by_key: np.ndarray, word_ids: np.ndarray,
           span: tuple[int, int], typed_key: str, typed_id: int | None,
           corrector: Corrector | None, k: int, other_best: float = -np.inf) -> list[int]:
    """The strip's k choices, best first: ids, or TYPED for the typed letters.

    `scores` are the strip's scores by id, `by_key` the same in key order (`word_ids`),
    `span` the positions of the words whose key starts with `typed_key`, `typed_id` the id
    of the word the typed letters spell exactly (None if they spell no suggestible word),
    `other_best` the best score of completions from elsewhere (the person's own words).
    Completions of the typed letters come first unless a correction scores higher than all
    of them; then the best correction leads, the typed word itself comes second (one tap
    away), and the rest follow by score.
    """
    lo, hi = span
    completions = best_k(by_key[lo:hi], word_ids[lo:hi], k)
    if corrector is None or k <= 0:
        return completions.tolist()
    cand_ids, costs = corrector.candidates(typed_key)
    if not len(cand_ids):
        return completions.tolist()
    corrected = scores[cand_ids] + costs
    best_completion = max(float(scores[completions[0]]) if len(completions) else -np.inf,
                          other_best)
    if best_completion >= corrected.max():
        return completions.tolist()
    pool: dict[int, float] = {int(i): float(scores[i]) for i in completions}
    for i, s in zip(cand_ids.tolist(), corrected.tolist()):
        if s > pool.get(i, -np.inf):
            pool[i] = s
    ranked = sorted(pool, key=lambda i: (-pool[i], i))
    typed = TYPED if typed_id is None else typed_id
    rest = [i for i in ranked[1:] if i != typed]
    return ([ranked[0], typed] + rest)[:k]
