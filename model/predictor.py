"""Next-word suggestions for a keyboard: the model state is cached along the typed words.

The predictor keeps the path of word ids it has read (after <bos>) and the scorer state
after each of them, so typing one more word costs one model step, a keystroke inside a
word costs none, and backspacing over a word reuses an earlier state.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from device_model.checkpoint import load_weights
from device_model.lstm import NumpyLSTM
from device_model.scorer import NumpyScorer
from device_model.tokenizer import DeviceTokenizer
from model.corrections import TYPED, Corrector, choose
from model.cursor_text import no_word_here, sentence_start, split_partial
from model.metrics import PrefixIndex, best_k
from model.paths import TOKENIZER_PATH
from model.personal import PersonalLayer, PersonalModel, PersonalWeights
from model.suggestion_words import SuggestionWords
from model.words import words

if TYPE_CHECKING:  # PyTorch and `tokenizers`: the device runs without them
    from model.lstm import NextWordLSTM
    from model.tokenizer import WordTokenizer

MAX_CONTEXT = 64  # words read when a context is computed from scratch
MAX_NODES = 256  # cached states; older ones are dropped (backspacing that far recomputes)
OWN_WORD_USES = 2  # a word the person typed this often is suggested even off the clean list
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
    """Suggestions from a scorer and a tokenizer; thread-safe, the model can be swapped.

    Without `words` every vocabulary word can be suggested as the model spells it (as
    docs/EVALUATION.md scores it); with `words` only those words (and the person's own), in
    their standard spelling, and with `corrections` also words one typing error away from
    the typed letters.
    """

    def __init__(self, model: Scorer | NumpyLSTM | NextWordLSTM,
                 tokenizer: DeviceTokenizer | WordTokenizer,
                 max_context: int = MAX_CONTEXT, words: SuggestionWords | None = None,
                 corrections: bool = False) -> None:
        self.tokenizer = tokenizer
        self.index = PrefixIndex(tokenizer.id_to_word)
        self.max_context = max_context
        self._lock = threading.RLock()
        self.personal: PersonalLayer | None = None
        self._personal_key: tuple | None = None  # what self._personal_scores was made for
        self._personal_scores: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.words, self.corrections = words, corrections
        self._strip: tuple | None = None  # (log-probs, words version, scores, in key order)
        self._corrector: tuple[int, Corrector] | None = None  # (words version, corrector)
        self._own_version = -1  # the personal model version whose words were allowed
        self.set_model(model)
        self._current_corrector()

    @classmethod
    def for_keyboard(cls, model: Scorer | NumpyLSTM | NextWordLSTM,
                     tokenizer: DeviceTokenizer | WordTokenizer) -> Predictor:
        """The app's predictor: correctly spelled words only (wordfreq's English list) in
        their standard spelling, with typo corrections."""
        return cls(model, tokenizer, words=SuggestionWords.for_tokenizer(tokenizer),
                   corrections=True)

    def allow_words(self, words: Iterable[str]) -> None:
        """Let the strip suggest these vocabulary words too: the extension point of the clean
        word list (words the person typed are allowed already through the personal layer)."""
        if self.words is not None:
            with self._lock:
                self.words.allow(words)

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
            self._strip = None

    def set_personal(self, model: PersonalModel | None,
                     weights: PersonalWeights = PersonalWeights()) -> None:
        """Mix the person's own words and phrasing into every suggestion (None: stop)."""
        layer = PersonalLayer(model, self.tokenizer.id_to_word, weights,
                              self.tokenizer.unk_id) if model is not None else None
        with self._lock:
            self.personal, self._personal_key = layer, None

    def learn(self, text: str) -> list[tuple[str, ...]]:
        """Count one sent message in the personal model (usable from the next keystroke),
        after the layer observed how well it and the global model predicted the message's
        words (PersonalLayer.observe: at Send, one model step per word, no keystroke work);
        returns the grams counted (none without a personal model)."""
        with self._lock:
            layer = self.personal
            if layer is None:
                return []
            if layer.weights.adapts:
                ws = words(text)
                ids = self._ids(ws)
                layer.observe([self._context_scores(ids[:i])[0] for i in range(len(ws))], ws)
            return layer.learn(text)

    def suggest(self, text_before_cursor: str, k: int = 3) -> list[str]:
        """The k best words to insert at the cursor, completing the partial word if any.

        None inside an e-mail address, a web address or a number; after . ! ? the words
        that open a message (the model's begin-of-message context).
        """
        if no_word_here(text_before_cursor):
            return []
        before, partial = split_partial(text_before_cursor)
        opener = sentence_start(before)
        context = [] if opener else words(before)
        with self._lock:
            if self.words is not None:
                found = self._clean_best(context, partial, k)
                return [w if literal or not (w == w.lower() or partial.isupper())
                        else shape(w, partial, opener) for w, literal in found]
            if self.personal is None:
                _, by_spelling = self._context_scores(self._ids(context))
                lo, hi = self.index.span(partial.lower())
                found = [self.tokenizer.id_to_word[i]
                         for i in best_k(by_spelling[lo:hi], self.index.ids[lo:hi], k)]
            else:
                found = self._personal_best(context, partial.lower(), k)
        return [shape(w, partial, opener) if w == w.lower() or partial.isupper() else w
                for w in found]

    def choices(self, log_probs: np.ndarray, partial: str, k: int = 3) -> list[str]:
        """The strip's words (lower case) for the next-word `log_probs` of a context and the
        typed letters, without the personal layer: what `suggest` shows before capitals
        (for benchmarks)."""
        with self._lock:
            if self.words is None:
                ids = self.index.ids[slice(*self.index.span(partial.lower()))]
                return [self.tokenizer.id_to_word[i] for i in best_k(log_probs[ids], ids, k)]
            return [partial if i == TYPED else self.words.shown[i]
                    for i, _ in self._choose(log_probs, partial, k)]

    def _clean_best(self, context: list[str], partial: str, k: int
                    ) -> list[tuple[str, bool]]:
        """(word, is the typed text itself) from the clean list and the person's own words,
        best first; lock held."""
        words = self.words
        if self.personal is None:
            log_probs, _ = self._context_scores(self._ids(context))
            return [(partial, True) if i == TYPED else (words.shown[i], False)
                    for i, _ in self._choose(log_probs, partial, k)]
        layer = self.personal
        if self._own_version != layer.model.version:  # words the person uses: suggestible
            words.allow(w for w, n in layer.model.unigrams.items()
                        if n >= OWN_WORD_USES and w in words.word_to_id)
            self._own_version = layer.model.version
        combined, _, oov = self._personal_context_scores(context)
        lo, hi = layer.oov_span(partial.lower())  # the person's words outside the vocabulary
        own = [(float(oov[j]), layer.model.form(layer.oov_words[j]))
               for j in best_k(oov[lo:hi], np.arange(lo, hi), k)]
        ranked = self._choose(combined, partial, k, own[0][0] if own else -np.inf)
        if any(i == TYPED for i, _ in ranked):  # corrections: as corrections.choose ranks them
            return [(partial, True) if i == TYPED else (words.shown[i], False)
                    for i, _ in ranked]
        found = [(s, layer.model.form(words.shown[i])) for i, s in ranked] + own
        found.sort(key=lambda pair: -pair[0])
        return [(w, False) for _, w in found[:k]]

    def _choose(self, log_probs: np.ndarray, partial: str, k: int,
                other_best: float = -np.inf) -> list[tuple[int, float]]:
        """corrections.choose over the clean words: (id or TYPED, score), best first; lock
        held."""
        words = self.words
        strip = self._strip
        if strip is None or strip[0] is not log_probs or strip[1] != words.version:
            scores = words.scores(log_probs)
            strip = self._strip = (log_probs, words.version, scores, scores[words.ids])
        key = words.key(partial)
        lo, hi = words.span(key)
        typed_id = int(words.ids[lo]) if lo < hi and words.keys[lo] == key else None
        chosen = choose(strip[2], strip[3], words.ids, (lo, hi), key, typed_id,
                        self._current_corrector(), k, other_best)
        return [(i, float(strip[2][i]) if i != TYPED else float("-inf")) for i in chosen]

    def _current_corrector(self) -> Corrector | None:
        if not self.corrections or self.words is None:
            return None
        if self._corrector is None or self._corrector[0] != self.words.version:
            self._corrector = (self.words.version, Corrector(self.words.keys, self.words.ids))
        return self._corrector[1]

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
