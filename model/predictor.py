"""Next-word suggestions for a keyboard: the model state is cached along the typed words.

The predictor keeps the path of word ids it has read (after <bos>) and the scorer state
after each of them, so typing one more word costs one model step, a keystroke inside a
word costs none, and backspacing over a word reuses an earlier state.
"""
from __future__ import annotations

import string
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from device_model.checkpoint import load_weights
from device_model.lstm import NumpyLSTM
from device_model.scorer import NumpyScorer
from device_model.tokenizer import DeviceTokenizer
from model.metrics import PrefixIndex, best_k
from model.paths import TOKENIZER_PATH
from model.personal import PersonalLayer, PersonalModel, PersonalWeights
from model.words import words

if TYPE_CHECKING:  # PyTorch and `tokenizers`: the device runs without them
    from model.lstm import NextWordLSTM
    from model.tokenizer import WordTokenizer

MAX_CONTEXT = 64  # words read when a context is computed from scratch
MAX_NODES = 256  # cached states; older ones are dropped (backspacing that far recomputes)
_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "'")
_I_WORDS = frozenset({"i", "i'm", "i'll", "i've", "i'd"})


class Scorer(Protocol):
    """What the predictor and the evaluation need from a model (LSTM or n-gram)."""

    vocab_size: int

    def start(self) -> Any:
        """The state after <bos>."""

    def step(self, state: Any, word_id: int) -> Any:
        """The state after one more word."""

    def log_probs(self, state: Any) -> np.ndarray:
        """Normalized log-probabilities (V,) of the next event."""

    def score_messages(self, sequences: Sequence[Sequence[int]]
                       ) -> Iterator[tuple[int, np.ndarray]]:
        """(index, log-probs (len - 1, V)) for each sequence [<bos>, ..., <eos>], any order."""


def as_scorer(model: Scorer | NumpyLSTM | NextWordLSTM) -> Scorer:
    """A Scorer for the NumPy LSTM (the device's), the PyTorch one, or any Scorer."""
    if isinstance(model, NumpyLSTM):
        return NumpyScorer(model)
    if hasattr(model, "log_probs"):
        return model
    from model.lstm import LSTMScorer  # PyTorch is imported only when given a torch model
    return LSTMScorer(model)


def __getattr__(name: str) -> Any:
    if name == "LSTMScorer":  # moved to model.lstm; still importable from here, lazily
        from model.lstm import LSTMScorer
        return LSTMScorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def split_partial(text: str) -> tuple[str, str]:
    """(text before the word being typed, that partial word); the partial may be ''."""
    i = len(text)
    while i and text[i - 1] in _WORD_CHARS:
        i -= 1
    while i < len(text) and text[i] == "'":
        i += 1
    return text[:i], text[i:]


def shape(word: str, typed: str, sentence_start: bool) -> str:
    """Capitalise a lower-case suggestion to fit what was typed and where."""
    letters = [c for c in typed if c.isalpha()]
    if len(letters) >= 2 and all(c.isupper() for c in letters):
        return word.upper()
    if word in _I_WORDS:
        return "I" + word[1:]
    if sentence_start or typed[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i in range(n) if a[i] != b[i])


class Predictor:
    """Suggestions from a scorer and a tokenizer; thread-safe, the model can be swapped."""

    def __init__(self, model: Scorer | NumpyLSTM | NextWordLSTM,
                 tokenizer: DeviceTokenizer | WordTokenizer,
                 max_context: int = MAX_CONTEXT) -> None:
        self.tokenizer = tokenizer
        self.index = PrefixIndex(tokenizer.id_to_word)
        self.max_context = max_context
        self._lock = threading.RLock()
        self.personal: PersonalLayer | None = None
        self._personal_key: tuple | None = None  # what self._personal_scores was made for
        self._personal_scores: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.set_model(model)

    @classmethod
    def from_checkpoint(cls, checkpoint_path: str | Path,
                        tokenizer_path: str | Path = TOKENIZER_PATH) -> Predictor:
        """A predictor on the NumPy runtime for a float or int8 checkpoint, checked against
        the tokenizer it was trained with."""
        tokenizer = DeviceTokenizer.load(tokenizer_path)
        weights, meta = load_weights(checkpoint_path, tokenizer.sha256)
        return cls(NumpyLSTM(weights, meta.config), tokenizer)

    def set_model(self, model: Scorer | NumpyLSTM | NextWordLSTM) -> None:
        """Swap in a new model (from any thread); the cached states are dropped."""
        scorer = as_scorer(model)
        if scorer.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(f"model has {scorer.vocab_size} ids, tokenizer "
                             f"{self.tokenizer.vocab_size}")
        with self._lock:
            self.scorer = scorer
            self._path: list[int] = []  # word ids read after <bos>
            self._base = 0  # self._states[j] follows self._path[:self._base + j]
            self._states = [scorer.start()]
            self._scores: list[tuple[np.ndarray, np.ndarray] | None] = [None]

    def set_personal(self, model: PersonalModel | None,
                     weights: PersonalWeights = PersonalWeights()) -> None:
        """Mix the person's own words and phrasing into every suggestion (None: stop)."""
        layer = PersonalLayer(model, self.tokenizer.id_to_word, weights,
                              self.tokenizer.unk_id) if model is not None else None
        with self._lock:
            self.personal, self._personal_key = layer, None

    def learn(self, text: str) -> list[tuple[str, ...]]:
        """Count one sent message in the personal model (usable from the next keystroke);
        returns the grams counted (none without a personal model)."""
        with self._lock:
            return self.personal.learn(text) if self.personal is not None else []

    def suggest(self, text_before_cursor: str, k: int = 3) -> list[str]:
        """The k best words to insert at the cursor, completing the partial word if any."""
        before, partial = split_partial(text_before_cursor)
        context = words(before)
        with self._lock:
            if self.personal is None:
                _, by_spelling = self._context_scores(self._ids(context))
                lo, hi = self.index.span(partial.lower())
                found = [self.tokenizer.id_to_word[i]
                         for i in best_k(by_spelling[lo:hi], self.index.ids[lo:hi], k)]
            else:
                found = self._personal_best(context, partial.lower(), k)
        sentence_start = not context or before.rstrip()[-1:] in (".", "!", "?")
        return [shape(w, partial, sentence_start) if w == w.lower() or partial.isupper() else w
                for w in found]

    def next_word_scores(self, text_before_cursor: str) -> np.ndarray:
        """Log-probabilities (V,) of the word at the cursor, before any typed prefix
        (with the personal layer: over the vocabulary only, its other words left out)."""
        before, _ = split_partial(text_before_cursor)
        context = words(before)
        with self._lock:
            if self.personal is not None:
                return self._personal_context_scores(context)[0].copy()
            return self._context_scores(self._ids(context))[0].copy()

    def _personal_context_scores(self, context: list[str]
                                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(combined log-probs by id, the same in spelling order, log-probs of the personal
        words outside the vocabulary); caller holds the lock. One context is cached."""
        layer = self.personal
        ids = self._ids(context)
        key = (tuple(ids), tuple(context[-2:]), layer.model.version, id(self.scorer))
        if key != self._personal_key:
            if not layer.current():
                layer.refresh()
            combined, oov = layer.combine(self._context_scores(ids)[0], context)
            self._personal_scores = (combined, combined[self.index.ids], oov)
            self._personal_key = key
        return self._personal_scores

    def _personal_best(self, context: list[str], prefix: str, k: int) -> list[str]:
        """The k best vocabulary or personal words starting with `prefix` (lock held)."""
        layer = self.personal
        combined, by_spelling, oov = self._personal_context_scores(context)
        lo, hi = self.index.span(prefix)
        ranked = [(-float(combined[i]), 0, int(i), self.tokenizer.id_to_word[i])
                  for i in best_k(by_spelling[lo:hi], self.index.ids[lo:hi], k)]
        olo, ohi = layer.oov_span(prefix)
        positions = np.arange(olo, ohi)
        for j in best_k(oov[olo:ohi], positions, k):
            ranked.append((-float(oov[j]), 1, int(j), layer.oov_words[j]))
        ranked.sort()
        return [layer.model.form(word) for *_, word in ranked[:k]]

    def _ids(self, context: list[str]) -> list[int]:
        get, unk = self.tokenizer.word_to_id.get, self.tokenizer.unk_id
        return [get(w, unk) for w in context]

    def _context_scores(self, ctx: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(log-probs by id, log-probs in spelling order) after <bos> + ctx; caller holds the lock.

        The cached path may run past `ctx` (after a backspace): it is kept until the text
        diverges from it, so retyping a deleted word costs nothing either.
        """
        keep = _common_prefix(self._path, ctx)
        if keep < self._base or len(ctx) - keep > self.max_context:
            self._base = max(0, len(ctx) - self.max_context)
            self._path, self._states, self._scores = ctx, [self.scorer.start()], [None]
            keep = self._base
        if keep < len(ctx):
            del self._states[keep - self._base + 1:], self._scores[keep - self._base + 1:]
            for word_id in ctx[keep:]:
                self._states.append(self.scorer.step(self._states[-1], word_id))
                self._scores.append(None)
            self._path = ctx
        if len(self._states) > MAX_NODES:
            drop = len(self._states) - MAX_NODES // 2
            del self._states[:drop], self._scores[:drop]
            self._base += drop
        node = len(ctx) - self._base
        if self._scores[node] is None:
            logp = self.scorer.log_probs(self._states[node])
            self._scores[node] = (logp, logp[self.index.ids])
        return self._scores[node]
