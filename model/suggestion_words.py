"""Which words the suggestion strip may offer, and how it spells them.

The model reads any token of its vocabulary (chat text has misspellings and junk), but the
strip only suggests words of a public list of correctly spelled English words (`wordfreq`'s
English list, shipped in its wheel) plus words the person allows (their own words, through
`SuggestionWords.allow`). Informal spellings the model learned from chat are shown in their
standard form ("dont" -> "don't", "im" -> "i'm"; the predictor capitalises "I").
"""
from __future__ import annotations

import json
import logging
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import numpy as np

from model.metrics import FIRST_WORD_ID
from model.paths import SHIPPED_DIR

log = logging.getLogger(__name__)
SHIPPED_WORDS = SHIPPED_DIR / "suggestion_words.json"

MIN_ZIPF = 3.0  # at least once per million words of wordfreq's English sources
SOURCE = (f"wordfreq 3.1.1, English 'best' list: Zipf frequency >= {MIN_ZIPF}, no letter "
          "three times in a row; contractions typed without their apostrophe shown with it")
_ELONGATED = re.compile(r"(.)\1\1")  # "soooo", "hmmm": not a spelling
# apostrophe-less spellings that are words of their own, never rewritten
CONTRACTION_ENDINGS = ("n't", "'m", "'re", "'ve", "'ll", "'d")
S_CONTRACTIONS = frozenset({"he", "she", "that", "what", "who", "there", "here", "how", "where",
                            "when", "why", "everyone", "someone", "something", "everything",
                            "nobody", "somebody", "nothing"})
NOT_CONTRACTIONS = frozenset({"its", "ill", "id", "were", "well", "wed", "shell", "hell",
                              "lets", "shed", "hed", "wee"})


@lru_cache(maxsize=1)
def english_frequencies() -> Mapping[str, float]:
    """wordfreq's English list: word -> Zipf frequency (log10 per billion words)."""
    from wordfreq import get_frequency_dict
    return {w: 9 + np.log10(f) for w, f in get_frequency_dict("en", wordlist="best").items()}


def is_english_word(word: str, zipf: Mapping[str, float]) -> bool:
    """A correctly spelled word: frequent enough in wordfreq's English list, not stretched."""
    return zipf.get(word, 0.0) >= MIN_ZIPF and not _ELONGATED.search(word)


def standard_forms(words: Iterable[str], zipf: Mapping[str, float]) -> dict[str, str]:
    """Informal spelling -> standard spelling, for contractions typed without their
    apostrophe ("dont" -> "don't") when the standard form is the more frequent one (never a
    possessive: "dads" stays "dads")."""
    forms = {}
    for word in words:
        if "'" in word or word in NOT_CONTRACTIONS:
            continue
        best = max((w for w in _apostrophe_variants(word) if w in zipf and _contraction(w)),
                   key=lambda w: zipf[w], default=None)
        if best and zipf[best] > zipf.get(word, 0.0) and zipf[best] >= MIN_ZIPF:
            forms[word] = best
    return forms


def _contraction(word: str) -> bool:
    """n't, 'm, 're, 've, 'll, 'd; 's only after a pronoun or a question word."""
    return word.endswith(CONTRACTION_ENDINGS) or (
        word.endswith("'s") and word[:-2] in S_CONTRACTIONS)


def _apostrophe_variants(word: str) -> list[str]:
    """`word` with one apostrophe inserted before its last 1-2 letters (don't, i'm, you're)."""
    return [word[:i] + "'" + word[i:] for i in (len(word) - 1, len(word) - 2) if i >= 1]


class SuggestionWords:
    """The strip's words over a model's vocabulary: a mask of suggestible ids, the spelling
    shown for each, informal ids merged into their standard form, and typing keys
    (lower case, no apostrophes) sorted for prefix search."""

    def __init__(self, id_to_word: Sequence[str], allowed: Iterable[str],
                 standard: Mapping[str, str] | None = None) -> None:
        self.id_to_word = list(id_to_word)
        self.word_to_id = {w: i for i, w in enumerate(self.id_to_word) if i >= FIRST_WORD_ID}
        self.allowed = set(allowed)
        self.standard = dict(standard or {})
        self.version = 0  # bumped whenever the suggestible words change
        self._build()

    @classmethod
    def english(cls, id_to_word: Sequence[str]) -> SuggestionWords:
        """Suggest only correctly spelled English words (wordfreq), standard spellings."""
        zipf = english_frequencies()
        vocab = id_to_word[FIRST_WORD_ID:]
        return cls(id_to_word, [w for w in vocab if is_english_word(w, zipf)],
                   standard_forms(vocab, zipf))

    @classmethod
    def for_tokenizer(cls, tokenizer) -> SuggestionWords:
        """The clean words for a tokenizer: from the list shipped beside the pre-trained model
        when it was made for this tokenizer (the phone needs no wordfreq), else from wordfreq,
        else (neither available) every vocabulary word."""
        try:
            data = json.loads(SHIPPED_WORDS.read_text(encoding="utf-8"))
            if data.get("tokenizer_sha256") == tokenizer.sha256:
                return cls(tokenizer.id_to_word, data["allowed"], data["standard"])
        except (OSError, ValueError, KeyError):
            pass
        try:
            return cls.english(tokenizer.id_to_word)
        except ImportError:
            log.warning("no word list for this vocabulary: every word can be suggested")
            return cls.everything(tokenizer.id_to_word)

    def to_json(self, tokenizer_sha256: str) -> str:
        """The list as `for_tokenizer` reads it back (written by `python -m model.ship`)."""
        allowed = [w for i, w in enumerate(self.id_to_word)
                   if i >= FIRST_WORD_ID and w in self.allowed]
        return json.dumps({"tokenizer_sha256": tokenizer_sha256, "source": SOURCE,
                           "allowed": allowed, "standard": self.standard}, indent=0) + "\n"

    @classmethod
    def everything(cls, id_to_word: Sequence[str]) -> SuggestionWords:
        """Every vocabulary word, as the model spells it (no filter)."""
        return cls(id_to_word, id_to_word[FIRST_WORD_ID:])

    def allow(self, words: Iterable[str]) -> None:
        """Let the strip suggest these words too (e.g. the person's own words)."""
        new = {w.lower() for w in words} - self.allowed
        if new:
            self.allowed |= new
            self._build()

    def _build(self) -> None:
        n = len(self.id_to_word)
        self.mask = np.zeros(n, dtype=bool)
        self.shown = list(self.id_to_word)
        sources, targets = [], []
        for i in range(FIRST_WORD_ID, n):
            word = self.id_to_word[i]
            form = self.standard.get(word)
            if form is None:
                self.mask[i] |= word in self.allowed
            elif form in self.word_to_id:   # both spellings known: one suggestion
                sources.append(i)
                targets.append(self.word_to_id[form])
                self.mask[self.word_to_id[form]] = True
            else:
                self.shown[i], self.mask[i] = form, True
        self.merge_from = np.array(sources, dtype=np.int64)
        self.merge_into = np.array(targets, dtype=np.int64)
        self.canonical = np.arange(n, dtype=np.int64)  # id -> the id it is suggested as
        self.canonical[self.merge_from] = self.merge_into
        ids = np.flatnonzero(self.mask)
        self.keys = [self.key(self.shown[i]) for i in ids]
        order = sorted(range(len(ids)), key=lambda j: self.keys[j])
        self.keys = [self.keys[j] for j in order]
        self.ids = ids[order]
        self.version += 1

    @staticmethod
    def key(text: str) -> str:
        """What a word is typed as for prefix search: lower case, no apostrophes."""
        return text.lower().replace("'", "")

    def scores(self, log_probs: np.ndarray) -> np.ndarray:
        """Per-id scores for the strip (last axis: ids): informal spellings added into their
        standard form, words that may not be suggested at -inf."""
        out = log_probs.astype(np.float32, copy=True)
        for source, target in zip(self.merge_from.tolist(), self.merge_into.tolist()):
            out[..., target] = np.logaddexp(out[..., target], log_probs[..., source])
        out[..., ~self.mask] = -np.inf
        return out

    def span(self, typed: str) -> tuple[int, int]:
        """[lo, hi) positions in `self.ids` of the words whose key starts with `typed`'s key."""
        prefix = self.key(typed)
        if not prefix:
            return 0, len(self.keys)
        return bisect_left(self.keys, prefix), bisect_left(self.keys, prefix + "\U0010ffff")
