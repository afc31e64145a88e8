"""The next-word metrics of docs/EVALUATION.md, from per-position score vectors.

A scorer gives, for every position of a message, a vector of log-probabilities over the
whole vocabulary. Suggestions are vocabulary words only (ids >= FIRST_WORD_ID: never
<pad>, <unk>, <bos>, <eos>), ranked by score, ties broken by the lower id (the more
frequent public word), exactly as `model.predictor.Predictor` shows them.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from model.suggestion_words import SuggestionWords

FIRST_WORD_ID = 4  # ids 0-3 are <pad>, <unk>, <bos>, <eos>
SUGGESTIONS = 3
_TOP = "\U0010ffff"


class PrefixIndex:
    """The suggestible vocabulary sorted by spelling: bisect gives the words with a prefix."""

    def __init__(self, id_to_word: Sequence[str], first_word_id: int = FIRST_WORD_ID) -> None:
        order = sorted(range(first_word_id, len(id_to_word)), key=lambda i: id_to_word[i])
        self.words = [id_to_word[i] for i in order]
        self.ids = np.array(order, dtype=np.int64)

    def span(self, prefix: str) -> tuple[int, int]:
        """[lo, hi) positions in `self.words` of the words starting with `prefix`."""
        if not prefix:
            return 0, len(self.words)
        return bisect_left(self.words, prefix), bisect_left(self.words, prefix + _TOP)


def best_k(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The `k` ids with the highest scores (ties: lower id first), best first."""
    if k <= 0 or len(scores) == 0:
        return ids[:0]
    if len(scores) > k:
        top = np.argpartition(-scores, k - 1)[:k]
        cand = np.flatnonzero(scores >= scores[top].min())
    else:
        cand = np.arange(len(scores))
    order = np.lexsort((ids[cand], -scores[cand]))[:k]
    return ids[cand[order]]


def ranks(scores: np.ndarray, targets: np.ndarray,
          first_word_id: int = FIRST_WORD_ID) -> np.ndarray:
    """Per row of `scores` (n, V): how many suggestible words rank above `targets[row]`."""
    words = scores[:, first_word_id:]
    target = scores[np.arange(len(targets)), targets][:, None]
    cols = np.arange(first_word_id, scores.shape[1])[None, :]
    above = (words > target).sum(axis=1)
    tied = ((words == target) & (cols < targets[:, None])).sum(axis=1)
    return above + tied


class NextWordMetrics:
    """Accumulates top-k, perplexity, KSR and per-sender figures over scored messages."""

    def __init__(self, id_to_word: Sequence[str], unk_id: int = 1, eos_id: int = 3,
                 first_word_id: int = FIRST_WORD_ID, words: SuggestionWords | None = None
                 ) -> None:
        """`words`: suggest only those words, in their standard spelling (a target typed
        informally counts as its standard form); perplexity stays the model's own."""
        self.word_to_id = {w: i for i, w in enumerate(id_to_word) if i >= first_word_id}
        self.unk_id, self.eos_id, self.first = unk_id, eos_id, first_word_id
        self.clean = words
        self.index = PrefixIndex(id_to_word, first_word_id) if words is None else words
        self._spans: dict[int, list[tuple[int, int]]] = {}
        self.words = self.in_vocab = self.messages = 0
        self.top1 = self.top3 = 0
        self.nll = 0.0
        self.chars = self.keys = 0
        self.per_sender: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])

    def ids_of(self, words: list[str]) -> np.ndarray:
        return np.array([self.word_to_id.get(w, self.unk_id) for w in words], dtype=np.int64)

    def add(self, sender: str, words: list[str], log_probs: np.ndarray) -> None:
        """One message: `log_probs` (len(words) + 1, V); row i scores word i given the words
        before it, the last row scores the end of the message."""
        n = len(words)
        if n == 0:
            return
        if log_probs.shape[0] != n + 1:
            raise ValueError(f"{n} words need {n + 1} score rows, got {log_probs.shape[0]}")
        ids = self.ids_of(words)
        known = ids != self.unk_id
        shown, targets = log_probs, ids
        if self.clean is not None:
            shown, targets = self.clean.scores(log_probs[:n]), self.clean.canonical[ids]
        rank = ranks(shown[:n], targets, self.first)
        hit1 = int((known & (rank < 1)).sum())
        hit3 = int((known & (rank < SUGGESTIONS)).sum())
        events = np.append(ids, self.eos_id)
        self.nll -= float(log_probs[np.arange(n + 1), events].astype(np.float64).sum())
        self.words += n
        self.in_vocab += int(known.sum())
        self.messages += 1
        self.top1, self.top3 = self.top1 + hit1, self.top3 + hit3  # only known words hit
        sender_row = self.per_sender[sender]
        sender_row[0] += n
        sender_row[1] += hit1
        sender_row[2] += hit3
        for i, word in enumerate(words):
            self.chars += len(word) + 1
            self.keys += self._keystrokes(word, int(targets[i]), int(rank[i]), shown[i])

    def _keystrokes(self, word: str, wid: int, rank: int, row: np.ndarray) -> int:
        """Keystrokes to enter `word` with 3 prefix-matching suggestions (EVALUATION.md)."""
        if wid == self.unk_id or row[wid] == -np.inf:  # unknown, or never suggested
            return len(word) + 1
        if rank < SUGGESTIONS:
            return 1
        spans = self._spans.get(wid)
        if spans is None:
            spans = self._spans[wid] = [self.index.span(word[:k]) for k in range(1, len(word))]
        target = row[wid]
        for k, (lo, hi) in enumerate(spans, start=1):
            ids = self.index.ids[lo:hi]
            scores = row[ids]
            above = int((scores > target).sum() + ((scores == target) & (ids < wid)).sum())
            if above < SUGGESTIONS:
                return k + 1
        return len(word) + 1

    def counts(self) -> dict[str, float]:
        """The sums behind top-1, top-3, KSR and perplexity: what a device's federated
        evaluation report carries (`federated.evaluation.FIELDS`)."""
        return {"words": self.words, "messages": self.messages, "top1": self.top1,
                "top3": self.top3, "characters": self.chars,
                "keystrokes_saved": self.chars - self.keys, "loss": self.nll}

    def result(self) -> dict[str, float | int]:
        """The figures, as fractions (accuracy, KSR) and a perplexity."""
        def share(a: int, b: int) -> float:
            return a / b if b else float("nan")

        senders = [row for row in self.per_sender.values() if row[0]]
        events = self.words + self.messages
        return {
            "top1": share(self.top1, self.words),
            "top3": share(self.top3, self.words),
            "top1_excl_unk": share(self.top1, self.in_vocab),
            "top3_excl_unk": share(self.top3, self.in_vocab),
            "perplexity": perplexity(self.nll, events),
            "ksr": 1 - self.keys / self.chars if self.chars else float("nan"),
            "macro_top1": float(np.mean([r[1] / r[0] for r in senders])) if senders
            else float("nan"),
            "macro_top3": float(np.mean([r[2] / r[0] for r in senders])) if senders
            else float("nan"),
            "words": self.words, "in_vocab_words": self.in_vocab, "messages": self.messages,
            "events": events, "senders": len(senders), "characters": self.chars,
            "keystrokes": self.keys,
        }


def perplexity(nll: float, events: int) -> float:
    """exp(nll / events); infinite for a model too broken for a float (nan: no event)."""
    if not events:
        return float("nan")
    return math.exp(nll / events) if nll / events < 709 else math.inf


def score_rows(scorer: Any, metrics: NextWordMetrics, rows: Sequence[tuple[str, list[str]]],
               bos_id: int, eos_id: int) -> Iterator[int]:
    """Score each (sender, words) message with `scorer` (anything with `score_messages`,
    PyTorch or NumPy) into `metrics`; yields each message's number of events (progress)."""
    sequences = [[bos_id, *metrics.ids_of(ws).tolist(), eos_id] for _, ws in rows]
    for i, log_probs in scorer.score_messages(sequences):
        metrics.add(rows[i][0], rows[i][1], log_probs)
        yield len(sequences[i]) - 1
