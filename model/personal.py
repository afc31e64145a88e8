"""The personal layer: one person's words and phrasing, learned on the device at once.

`PersonalModel` counts the person's own words (unigrams, and 2- and 3-grams within a
message, a message starting with the context <s>), keyed by the words themselves, so it
survives a new global model and a new tokenizer. It is plain data: `grams()` and
`add_gram()` are all a store needs, `to_dict()`/`from_dict()` make it JSON.

`PersonalLayer` binds a model to one global vocabulary and mixes it with the global
model's probabilities p_g(w | h), an interpolated Pitman-Yor n-gram whose base is the
global model (d discount, th concentration of each level; n, T: count and distinct
followers of the context; the trigram level on top works the same way):

    p(w | u v) = (c3(u v w) - d3)+ / (n3 + th3) + (th3 + d3 T3) / (n3 + th3) * p2(w | v)
    p2(w | v)  = (c2(v w) - d2)+ / (n2 + th2)   + (th2 + d2 T2) / (n2 + th2) * p1(w)
    p1(w)      = lam c1(w) / N + rho r(w) + (1 - lam - rho) pg(w),  lam = gamma N / (N + beta)
    pg(w)      = ps(w | h) for a vocabulary word; for a word outside the vocabulary
                 ps(<unk> | h) c1(w) / (N_oov + kappa)
    ps(w | h)  = p_g(w | h) a(w) / sum_v p_g(v | h) a(v),
    a(w)       = ((o(w) + mu q(w)) / ((W + mu) q(w)))^b

where r(w) is a cache of the person's last RECENT words, each weighing `decay` times less
per word typed since (what the person is talking about now), and rho its weight. So the
person's weight grows with how much they typed (N words in all, n in a context),
and a word typed once (even outside the vocabulary) can be suggested in the next message.
ps is the global model scaled to the person's own word frequencies (unigram scaling, the
closed form of a personal output bias log a(w) on the frozen global model): over the W words
the device observed so far, o(w) is how often the person typed w (a word outside the
vocabulary counts as <unk>) and q(w) the global model's mean probability of w before each
of them, so a(w) > 1 for the words the person uses more than the global model expects in
the person's contexts and a(w) = (mu / (W + mu))^b for words never typed; mu pseudo-words of
the global model's own frequencies smooth it, and b (`scaling`) damps it (b = 0, the
default: ps = p_g; b = 0.3 helped on `valid`, not on `test`).
Last, log p(w) = s log p_mix(w) + (1 - s) log pg(w) - log Z: the mixture is tempered by
the (scaled) global model (a log-linear blend with sharpness s; s = 1 is the plain mixture).
Only the words the person used are touched per context: a keystroke stays sub-millisecond.

How much of the layer suits this person is learned on the device (`Adaptation`, kept with
the counts), from every message it learns, before counting it (`PersonalLayer.observe`):
- the sharpness s is the one of `PersonalWeights.adapt` (0.3 ... 1) under which the person's
  words so far were most likely (the summed log p(w | h) of each: a maximum-likelihood
  choice among a few experts), the default s starting `prior` nats ahead (a person with
  few words keeps it);
- a gate: among the person's words where exactly one of the layer (as it was then) and the
  global model alone had the word as its first suggestion, let L be the layer's and G the
  global model's (unscaled); while G - L > z sqrt(G + L) (a sign test: the global model is
  better by z standard deviations), the layer steps back to the global model alone (its unknown
  word's mass still shared among the person's new words). So a person the layer does not
  help gets, after a while, what they got without it; with z = 0 (the default, chosen on
  `valid`) the gate closes as soon as the global model is ahead, a larger z waits for
  stronger evidence.
- with b > 0, the scaling's counts o, q and W (`Adaptation.observed`, `expected`, `words`).
A new device learns all of it while its history is first learned, message by message as typed.

With `PersonalWeights.memory` > 0 (0 by default: better on `valid`, not on `test`), a memory of
the person's contexts (`model.personal_memory.StateMemory`, a kNN-LM over the global model's
states) votes too: combine(..., key) returns log((1 - lambda) p + lambda p_memory). Only the
personalised evaluation fills one.
"""
from __future__ import annotations

import base64
import hashlib
import math
import re
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from model.personal_memory import StateMemory
from model.words import WORD_PATTERN

BOS = "<s>"  # the context before a message's first word
Gram = tuple[str, ...]  # (w,), (v, w), (u, v, w), (t, u, v, w); the first may be BOS
_WORD = re.compile(WORD_PATTERN)
_WORD_ANY_CASE = re.compile(WORD_PATTERN, re.IGNORECASE)
_TOP = "\U0010ffff"
DICTIONARY_HEADER = "# Private Keyboard personal dictionary, version 1"
MAX_DICTIONARY_WORDS = 50_000
MAX_WORD_LENGTH = 48
MAX_COUNT = 1_000_000
RECENT = 300  # words in the recent-words cache
ORDER = 3  # counts of 1- to 3-grams (contexts of up to 2 words)


class DictionaryError(ValueError):
    """A personal dictionary file that cannot be imported (nothing was changed)."""


@dataclass(frozen=True)
class PersonalWeights:
    """How much the person's counts weigh against the global model (tuned on `valid`)."""

    # The defaults were chosen on `valid` (benchmarks/personalised.py --tune; BENCHMARKS.md).
    levels: tuple[tuple[float, float], ...] = ((0.8, 10.0), (0.8, 0.5))  # (d, theta) of the
    # bigram and trigram levels: one level per context length, at most ORDER - 1
    gamma: float = 0.05  # the most the person's unigram can weigh
    beta: float = 1000.0  # words typed at which the unigram weighs gamma / 2
    kappa: float = 1.0  # unknown-word mass kept for words the person has not typed yet
    recency: float = 0.05  # rho: the weight of the recent-words cache
    decay: float = 0.98  # per word typed since
    sharpness: float = 0.7  # s: log p(w) = s log p_mix + (1 - s) log p_g - log Z (log-linear);
    # with `adapt`, the s used before the device has seen any of the person's words
    adapt: tuple[float, ...] = (0.3, 0.5, 0.7, 0.85, 1.0)  # the s the device chooses among
    # (the most likely so far); () keeps `sharpness`
    prior: float = 5.0  # nats of log-likelihood `sharpness` starts ahead of the others by
    gate: float | None = 0.0  # z of the gate's sign test (None: no gate)
    scaling: float = 0.0  # b: how much the global model is scaled to the person's word
    # frequencies (0: not at all; 0.3 was best on `valid` but not on `test`: BENCHMARKS.md)
    scaling_prior: float = 100.0  # mu: pseudo-words of the global model's own frequencies
    memory: float = 0.0  # lambda: the weight of the memory of the person's own contexts (a
    # kNN-LM over `StateMemory`, evaluation only; 0.1 was best on `valid` but not on `test`)
    memory_k: int = 32  # neighbours the memory looks at
    memory_temperature: float = 10.0  # T: a neighbour weighs exp(-distance^2 / T)

    def __post_init__(self) -> None:
        ok = 1 <= len(self.levels) < ORDER and all(
            0 <= d < 1 and theta >= 0 and theta + d > 0 for d, theta in self.levels)
        if not (ok and 0 <= self.gamma < 1 and self.beta > 0 and self.kappa > 0
                and 0 <= self.recency and self.gamma + self.recency < 1
                and 0 < self.decay <= 1 and 0 < self.sharpness <= 1
                and all(0 < x <= 1 for x in self.adapt)
                and (not self.adapt or self.sharpness in self.adapt)
                and (self.gate is None or self.gate >= 0) and self.prior >= 0
                and 0 <= self.scaling <= 1 and self.scaling_prior > 0
                and 0 <= self.memory < 1 and self.memory_k >= 1
                and self.memory_temperature > 0):
            raise ValueError(f"personal weights out of range: {self}")

    @property
    def adapts(self) -> bool:
        """Whether the device learns from the person's words how much of the layer to use."""
        return bool(self.adapt) or self.gate is not None or self.scaling > 0


@dataclass
class Adaptation:
    """What the device learned of how much of the layer suits its person (see the module's
    docstring): the summed log-likelihood of the person's words under each sharpness of
    `grid`, how many words only the layer (as it was then) and only the global model
    alone had as the first suggestion, and the unigram scaling's counts: the words observed,
    how often each was typed, and the global model's summed probabilities (by id) there."""

    grid: tuple[float, ...]
    log_lik: list[float]
    layer_only: int = 0
    global_only: int = 0
    words: int = 0  # W
    observed: dict[str, int] = field(default_factory=dict)  # o(w)
    expected: np.ndarray | None = None  # W q(w), by vocabulary id
    vocabulary: str = ""  # the fingerprint of the vocabulary `expected` is by

    @classmethod
    def new(cls, grid: Sequence[float]) -> Adaptation:
        return cls(tuple(grid), [0.0] * len(grid))

    def to_dict(self) -> dict:
        found = {"grid": list(self.grid), "log_lik": list(self.log_lik),
                 "layer_only": self.layer_only, "global_only": self.global_only,
                 "words": self.words, "observed": dict(self.observed),
                 "vocabulary": self.vocabulary}
        if self.expected is not None:  # float32, base64: 53 kB for 10k words
            found["expected"] = base64.b64encode(
                self.expected.astype("<f4").tobytes()).decode("ascii")
        return found

    @classmethod
    def from_dict(cls, data: dict) -> Adaptation:
        """From `to_dict`'s data; ValueError when it is not that."""
        grid = tuple(float(x) for x in data["grid"])
        log_lik = [float(x) for x in data["log_lik"]]
        found = cls(grid, log_lik, int(data["layer_only"]), int(data["global_only"]),
                    int(data.get("words", 0)),
                    {str(w): int(n) for w, n in data.get("observed", {}).items()},
                    vocabulary=str(data.get("vocabulary", "")))
        if data.get("expected") is not None:
            found.expected = np.frombuffer(base64.b64decode(data["expected"], validate=True),
                                           dtype="<f4").astype(np.float64)
        if (len(grid) != len(log_lik) or min(found.layer_only, found.global_only, found.words,
                                             *found.observed.values()) < 0
                or found.expected is not None and not np.all(found.expected >= 0)):
            raise ValueError("malformed adaptation")
        return found


def message_words(text: str) -> list[tuple[str, str, bool]]:
    """(scoring word, how it was written, whether it opens a sentence) for each word of a
    message (the words of model.words)."""
    found = []
    for m in _WORD_ANY_CASE.finditer(text):
        if _WORD.fullmatch(m.group(0).lower()):
            opens = not text[:m.start()].rstrip() or text[:m.start()].rstrip()[-1] in ".!?"
            found.append((m.group(0).lower(), m.group(0), opens))
    return found


def is_word(word: str) -> bool:
    """A scoring word (lower case, as model.words.words gives them) of sensible length."""
    return 0 < len(word) <= MAX_WORD_LENGTH and _WORD.fullmatch(word) is not None


class PersonalModel:
    """Counts of the person's unigrams, bigrams and trigrams, keyed by words."""

    def __init__(self) -> None:
        self.unigrams: Counter[str] = Counter()
        self.followers: dict[tuple[str, ...], Counter[str]] = {}  # (v,) and (u, v) contexts
        self.forms: dict[str, str] = {}  # words the person writes with capitals ("iPhone")
        self.total = 0  # words learned (N)
        self.recent: deque[str] = deque(maxlen=RECENT)  # the last words, oldest first
        self.version = 0  # bumped on every change
        self.adaptation: Adaptation | None = None  # how much of the layer suits the person

    # --- learning ----------------------------------------------------------------------
    def learn(self, text: str) -> list[Gram]:
        """Count one sent message; returns the grams counted (each once more)."""
        grams: list[Gram] = []
        before: list[str] = [BOS]  # the context, cut where a too long word was skipped
        for word, written, opens in message_words(text):
            if len(word) > MAX_WORD_LENGTH:  # a run of characters, not a word to learn
                before = []
                continue
            grams.append((word,))
            for k in range(1, min(len(before), ORDER - 1) + 1):
                grams.append((*before[-k:], word))
            if not opens:  # mid-sentence: how the person writes it, not a capitalised start
                self._note_form(word, written)
            before.append(word)
        for gram in grams:
            self.add_gram(gram, 1)
        self.recent.extend(g[0] for g in grams if len(g) == 1)
        return grams

    def remember_recent(self, words: Iterable[str]) -> None:
        """Refill the recent-words cache (a store loading what it kept), counting nothing."""
        self.recent.extend(w for w in words if is_word(w))
        self.version += 1

    def _note_form(self, word: str, written: str) -> None:
        if written == word:
            self.forms.pop(word, None)
        elif written != word.upper() or len(word) > 1 and written.isupper():
            self.forms[word] = written

    def add_gram(self, gram: Gram, count: int) -> None:
        """Add `count` to one gram (a store loading, an import, or learning)."""
        if count <= 0:
            return
        if len(gram) == 1:
            self.unigrams[gram[0]] += count
            self.total += count
        else:
            self.followers.setdefault(gram[:-1], Counter())[gram[-1]] += count
        self.version += 1

    def set_form(self, word: str, form: str) -> None:
        if form.lower() == word and form != word:
            self.forms[word] = form
            self.version += 1

    def remove(self, word: str) -> int:
        """Forget `word` everywhere (its count, and every context it appears in); returns
        the count it had."""
        had = self.unigrams.pop(word, 0)
        self.total -= had
        self.recent = deque((w for w in self.recent if w != word), maxlen=RECENT)
        self.forms.pop(word, None)
        if self.adaptation is not None:
            self.adaptation.observed.pop(word, None)
        for context in [c for c in self.followers if word in c]:
            del self.followers[context]
        for context, counter in list(self.followers.items()):
            if counter.pop(word, None) is not None and not counter:
                del self.followers[context]
        self.version += 1
        return had

    def clear(self) -> None:
        """Forget everything (the version still moves on, so cached scores are dropped)."""
        version = self.version
        self.__init__()
        self.version = version + 1

    # --- reading -----------------------------------------------------------------------
    def grams(self) -> Iterator[tuple[Gram, int]]:
        """Every (gram, count): unigrams, then bigrams and trigrams."""
        for word, n in self.unigrams.items():
            yield (word,), n
        for context, counter in self.followers.items():
            for word, n in counter.items():
                yield (*context, word), n

    def words(self, outside: Iterable[str] | None = None) -> list[tuple[str, int]]:
        """(word, count), most used first; only words not in `outside` if given."""
        skip = set(outside or ())
        return sorted(((w, n) for w, n in self.unigrams.items() if w not in skip),
                      key=lambda item: (-item[1], item[0]))

    def form(self, word: str) -> str:
        """How the person writes `word` ("iPhone"), or the word itself."""
        return self.forms.get(word, word)

    def to_dict(self) -> dict:
        """Plain JSON-able data (every gram with its count, and the written forms)."""
        found = {"grams": [[*gram, n] for gram, n in self.grams()], "forms": dict(self.forms)}
        if self.adaptation is not None:
            found["adaptation"] = self.adaptation.to_dict()
        return found

    @classmethod
    def from_dict(cls, data: dict) -> PersonalModel:
        model = cls()
        for *gram, n in data.get("grams", []):
            model.add_gram(tuple(gram), int(n))
        for word, form in data.get("forms", {}).items():
            model.set_form(word, form)
        if data.get("adaptation"):
            model.adaptation = Adaptation.from_dict(data["adaptation"])
        return model


# --- the personal dictionary file -------------------------------------------------------
def dictionary_text(model: PersonalModel) -> str:
    """The plain-text export: a header, then `word<TAB>count[<TAB>written form]` lines."""
    lines = [DICTIONARY_HEADER,
             "# word<TAB>times used[<TAB>how it is written]; lines starting with # are notes"]
    for word, n in model.words():
        form = model.forms.get(word)
        lines.append(f"{word}\t{n}" + (f"\t{form}" if form else ""))
    return "\n".join(lines) + "\n"


def parse_dictionary(text: str) -> list[tuple[str, int, str | None]]:
    """(word, count, written form) from a dictionary file; DictionaryError with the line
    number when anything in it is not as `dictionary_text` writes it."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != DICTIONARY_HEADER:
        raise DictionaryError("This is not a personal dictionary file: its first line must "
                              f"be '{DICTIONARY_HEADER}'.")
    entries: dict[str, tuple[str, int, str | None]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) not in (2, 3):
            raise DictionaryError(f"Line {number}: {_show(line)} should be a word, a tab, "
                                  "then how many times it was used (and optionally a tab and "
                                  "how it is written). Fix that line or export the dictionary "
                                  "again.")
        word, count, form = fields[0], fields[1], fields[2] if len(fields) == 3 else None
        if not is_word(word):
            raise DictionaryError(f"Line {number}: {_show(word)} is not a word (lower-case "
                                  f"letters, digits and inner apostrophes, at most "
                                  f"{MAX_WORD_LENGTH} characters).")
        if not count.isdigit() or not 1 <= int(count) <= MAX_COUNT:
            raise DictionaryError(f"Line {number}: the count {_show(count)} is not a whole "
                                  f"number from 1 to {MAX_COUNT}.")
        if form is not None and form.lower() != word:
            raise DictionaryError(f"Line {number}: the written form {_show(form)} is not "
                                  f"{_show(word)} with capitals.")
        entries[word] = (word, int(count), form)
        if len(entries) > MAX_DICTIONARY_WORDS:
            raise DictionaryError(f"The file has more than {MAX_DICTIONARY_WORDS} words.")
    return list(entries.values())


def _show(text: str) -> str:
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


# --- the layer over a global vocabulary ----------------------------------------------------
@dataclass
class _Followers:
    """One context's counts as arrays: vocabulary ids, and positions among the OOV words."""

    ids: np.ndarray
    counts: np.ndarray
    oov: np.ndarray
    oov_counts: np.ndarray
    n: int
    distinct: int


class PersonalLayer:
    """A PersonalModel over one global vocabulary: combined log-probabilities, fast.

    Words the person typed that the vocabulary lacks are kept in `oov_words` (sorted, for
    prefix search); `combine` scores them beside the vocabulary. Call `refresh()` after the
    model changed (learning does it through `learn`).
    """

    def __init__(self, model: PersonalModel, id_to_word: Sequence[str],
                 weights: PersonalWeights = PersonalWeights(), unk_id: int = 1,
                 first_word_id: int = 4) -> None:
        self.model, self.weights = model, weights
        self.unk_id, self.first = unk_id, first_word_id
        self.word_to_id = {w: i for i, w in enumerate(id_to_word) if i >= first_word_id}
        self.vocab_size = len(id_to_word)
        self.vocabulary = hashlib.sha256("\n".join(id_to_word).encode()).hexdigest()[:16]
        self._version = -1
        self._scaling_for: tuple = ()  # what self._scaling (log a(w)) was computed for
        self._scaling = np.zeros(0)
        self.memory: StateMemory | None = None  # the person's contexts (model.personal_memory)
        self.refresh()

    def learn(self, text: str) -> list[Gram]:
        """Learn one message and bring the arrays up to date."""
        grams = self.model.learn(text)
        self.refresh(grams)
        return grams

    def refresh(self, grams: Sequence[Gram] | None = None) -> None:
        """Rebuild the arrays (or, given the grams just counted, update them in place)."""
        model = self.model
        new_oov = grams is None or self._version < 0 or any(len(g) == 1 and g[0] not in self.word_to_id
                                       and g[0] not in self._oov_pos for g in grams)
        if new_oov:
            self.unigram = np.zeros(self.vocab_size)
            oov = sorted(w for w in model.unigrams if w not in self.word_to_id)
            self.oov_words = oov
            self._oov_pos = {w: i for i, w in enumerate(oov)}
            self.oov_counts = np.array([model.unigrams[w] for w in oov], dtype=np.float64)
            for word, n in model.unigrams.items():
                if word in self.word_to_id:
                    self.unigram[self.word_to_id[word]] = n
            self._cache: dict[tuple[str, ...], _Followers | None] = {}
        else:
            for gram in grams:
                if len(gram) == 1:
                    word = gram[0]
                    if word in self.word_to_id:
                        self.unigram[self.word_to_id[word]] = model.unigrams[word]
                    else:
                        self.oov_counts[self._oov_pos[word]] = model.unigrams[word]
                else:
                    self._cache.pop(gram[:-1], None)
        self.oov_total = float(self.oov_counts.sum())
        self._recent: dict[float, tuple[np.ndarray, ...]] = {}
        self._version = model.version

    def _recent_arrays(self, decay: float) -> tuple[np.ndarray, ...]:
        """The recent-words cache as vocabulary ids, their weights, OOV positions, their
        weights (the weights summing to 1); computed once per change of the model."""
        if decay in self._recent:
            return self._recent[decay]
        recent = self.model.recent
        weights: dict[str, float] = {}
        for age, word in enumerate(reversed(recent)):
            weights[word] = weights.get(word, 0.0) + decay ** age
        total = sum(weights.values()) or 1.0
        vocab = [(self.word_to_id[w], x / total) for w, x in weights.items()
                 if w in self.word_to_id]
        oov = [(self._oov_pos[w], x / total) for w, x in weights.items() if w in self._oov_pos]
        found = (np.array([i for i, _ in vocab], dtype=np.int64), np.array([x for _, x in vocab]),
                 np.array([i for i, _ in oov], dtype=np.int64), np.array([x for _, x in oov]))
        self._recent[decay] = found
        return found

    def current(self) -> bool:
        """Whether the arrays follow the model (False after a change made elsewhere)."""
        return self._version == self.model.version

    def _followers(self, context: tuple[str, ...]) -> _Followers | None:
        if context in self._cache:
            return self._cache[context]
        counter = self.model.followers.get(context)
        found = None
        if counter:
            ids, counts, oov, oov_counts = [], [], [], []
            for word, n in counter.items():
                i = self.word_to_id.get(word)
                if i is not None:
                    ids.append(i)
                    counts.append(n)
                elif word in self._oov_pos:
                    oov.append(self._oov_pos[word])
                    oov_counts.append(n)
            found = _Followers(np.array(ids, dtype=np.int64), np.array(counts, dtype=np.float64),
                               np.array(oov, dtype=np.int64),
                               np.array(oov_counts, dtype=np.float64),
                               sum(counter.values()), len(counter))
        self._cache[context] = found
        return found

    def combine(self, log_probs: np.ndarray, context: Sequence[str],
                key: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(log-probs over the vocabulary, log-probs of `oov_words`) of the next word after
        the message's words `context`, from the global model's `log_probs` (V,): the layer
        at the sharpness this device chose, or the global model alone while it is gated;
        with the global model's `key` (its LSTM output, `score_messages_with_keys`), the
        memory's vote mixed in."""
        if self.gated():
            found = tuple(map(_log, self._base(log_probs)))
        else:
            logs = tuple(map(_log, self._parts(self._scaled(log_probs), context)))
            found = _temper(logs, self.sharpness())
        return self._recalled(*found, key)

    def _recalled(self, scores: np.ndarray, oov: np.ndarray, key: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """log((1 - lambda) p + lambda p_memory): the memory's vote for this context mixed
        into the log-probs `scores`, `oov` (unchanged without a memory or a key)."""
        w, memory = self.weights, self.memory
        if key is None or memory is None or not w.memory or not len(memory):
            return scores, oov
        vote = memory.vote(key, w.memory_k, w.memory_temperature)
        scores, oov = scores + math.log1p(-w.memory), oov + math.log1p(-w.memory)
        for word, weight in vote.items():
            i = self.word_to_id.get(word)
            row, j = (scores, i) if i is not None else (oov, self._oov_pos.get(word))
            if j is not None and self.model.unigrams.get(word):  # a word removed since: not
                row[j] = np.logaddexp(row[j], math.log(w.memory * weight))  # offered from here
        return scores, oov

    def sharpness(self) -> float:
        """s: the most likely of `weights.adapt` on the person's words so far (ties, and
        before any word: `weights.sharpness`), or `weights.sharpness` without adapting."""
        w, found = self.weights, self._adaptation()
        if found is None or not found.grid:
            return w.sharpness
        return max(zip(found.log_lik, found.grid),
                   key=lambda pair: (pair[0] + w.prior * (pair[1] == w.sharpness),
                                     pair[1] == w.sharpness))[1]

    def gated(self) -> bool:
        """Whether the global model alone has been better at top-1 on the person's words so
        far than the layer by the gate's sign test (then the layer steps back)."""
        found, z = self.model.adaptation, self.weights.gate
        return (z is not None and found is not None and found.global_only - found.layer_only
                > z * math.sqrt(found.global_only + found.layer_only))

    def _adaptation(self) -> Adaptation | None:
        """The model's adaptation if it is over this layer's sharpness grid."""
        found = self.model.adaptation
        return found if found is not None and found.grid == self.weights.adapt else None

    def observe(self, rows: Sequence[np.ndarray], ws: Sequence[str]) -> None:
        """Learn how much of the layer suits the person from one message about to be
        learned: `ws` its words, `rows[i]` the global model's log-probs before `ws[i]`."""
        w = self.weights
        if not w.adapts:
            return
        if not self.current():
            self.refresh()
        found = self._adaptation() or Adaptation.new(w.adapt)
        self.model.adaptation = found
        s_now = self.sharpness()
        for i, word in enumerate(ws):
            wid = self.word_to_id.get(word)
            j = self._oov_pos.get(word) if wid is None else None
            if wid is None and j is None:  # a word nobody could have suggested yet
                continue
            logs = tuple(map(_log, self._parts(self._scaled(rows[i]), ws[:i])))
            for k, s in enumerate(w.adapt):
                scores, oov = _temper(logs, s)
                found.log_lik[k] += float(scores[wid] if j is None else oov[j])
            mine = self._is_first(_temper(logs, s_now), wid, j)
            theirs = self._is_first(tuple(map(_log, self._base(rows[i]))), wid, j)
            found.layer_only += mine and not theirs
            found.global_only += theirs and not mine
        if w.scaling and ws:
            _count_words(found, rows, ws, self.vocabulary)
        self.model.version += 1

    def _is_first(self, scored: tuple[np.ndarray, np.ndarray], wid: int | None,
                  j: int | None) -> bool:
        """Whether the word (vocabulary id `wid` or OOV position `j`) is the first
        suggestion of `scored`."""
        scores, oov = scored
        target = scores[wid] if j is None else oov[j]
        return bool(scores[self.first:].max() <= target and (not len(oov) or oov.max() <= target))

    def _scaled(self, log_probs: np.ndarray) -> np.ndarray:
        """log ps(w | h): the global model's log-probs scaled to the person's frequencies."""
        log_a = self._log_scaling()
        if log_a is None:
            return log_probs
        scaled = log_probs + log_a
        top = float(scaled.max())
        return scaled - (top + math.log(float(np.exp(scaled - top).sum())))

    def _log_scaling(self) -> np.ndarray | None:
        """log a(w) by vocabulary id (None: no scaling yet); once per change of the model."""
        w, found = self.weights, self._adaptation()
        if (not w.scaling or found is None or not found.words or found.expected is None
                or found.vocabulary != self.vocabulary
                or len(found.expected) != self.vocab_size):
            return None
        key = (self.model.version, id(found), found.words, w.scaling, w.scaling_prior)
        if self._scaling_for != key:
            typed = np.zeros(self.vocab_size)
            for word, n in found.observed.items():
                typed[self.word_to_id.get(word, self.unk_id)] += n
            mean = np.maximum(found.expected / found.words, 1e-30)  # q(w)
            self._scaling = w.scaling * np.log((typed + w.scaling_prior * mean)
                                               / ((found.words + w.scaling_prior) * mean))
            self._scaling_for = key
        return self._scaling

    def _base(self, log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (vocabulary, OOV words) of the global model `log_probs` with its
        unknown word's mass shared among the person's OOV words."""
        kappa = self.weights.kappa
        probs = np.exp(log_probs.astype(np.float64))
        oov = probs[self.unk_id] * self.oov_counts / (self.oov_total + kappa)
        probs[self.unk_id] *= kappa / (self.oov_total + kappa)  # the rest of <unk>
        return probs, oov

    def _parts(self, log_probs: np.ndarray, context: Sequence[str]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities (vocabulary, OOV words) of the mixture p_mix over `log_probs`,
        then of `log_probs` alone (`_base`)."""
        w = self.weights
        n_all = self.model.total
        probs, oov = self._base(log_probs)
        base, base_oov = probs.copy(), oov.copy()
        lam = w.gamma * n_all / (n_all + w.beta) if n_all else 0.0
        rho = w.recency if self.model.recent else 0.0
        probs *= 1 - lam - rho
        oov *= 1 - lam - rho
        if lam:
            probs += self.unigram * (lam / n_all)
            oov += self.oov_counts * (lam / n_all)
        if rho:
            ids, weights, oov_ids, oov_weights = self._recent_arrays(w.decay)
            probs[ids] += rho * weights
            oov[oov_ids] += rho * oov_weights
        before = [BOS, *context[-len(w.levels):]]
        for k, (d, theta) in enumerate(w.levels, start=1):
            if k > len(before):
                break
            stats = self._followers(tuple(before[-k:]))
            if stats is None:
                continue
            denominator = stats.n + theta
            probs *= (theta + d * stats.distinct) / denominator
            oov *= (theta + d * stats.distinct) / denominator
            probs[stats.ids] += np.maximum(stats.counts - d, 0) / denominator
            oov[stats.oov] += np.maximum(stats.oov_counts - d, 0) / denominator
        return probs, oov, base, base_oov

    def oov_span(self, prefix: str) -> tuple[int, int]:
        """[lo, hi) positions in `oov_words` of the words starting with `prefix`."""
        if not prefix:
            return 0, len(self.oov_words)
        return (bisect_left(self.oov_words, prefix),
                bisect_left(self.oov_words, prefix + _TOP))

    def oov_index(self, word: str) -> int | None:
        """Position of a personal word outside the vocabulary in `oov_words`, or None."""
        return self._oov_pos.get(word)


def _count_words(found: Adaptation, rows: Sequence[np.ndarray], ws: Sequence[str],
                 vocabulary: str) -> None:
    """Add one message to the unigram scaling's counts: its words `ws`, and the global
    model's probabilities `rows[i]` (log) before each (over the vocabulary with fingerprint
    `vocabulary`; counts over another vocabulary start again)."""
    if (found.expected is None or found.vocabulary != vocabulary
            or len(found.expected) != len(rows[0])):
        found.expected, found.words, found.observed = np.zeros(len(rows[0])), 0, {}
        found.vocabulary = vocabulary
    for row, word in zip(rows, ws):
        found.expected += np.exp(row.astype(np.float64))
        found.observed[word] = found.observed.get(word, 0) + 1
    found.words += len(ws)


def _log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(x)


def _temper(logs: tuple[np.ndarray, ...], s: float) -> tuple[np.ndarray, np.ndarray]:
    """log p = s log p_mix + (1 - s) log p_g - log Z over the vocabulary and the OOV words,
    from the logs of `PersonalLayer._parts`."""
    mix, mix_oov, base, base_oov = logs
    if s >= 1:
        return mix, mix_oov
    scores = s * mix + (1 - s) * base
    oov_scores = s * mix_oov + (1 - s) * base_oov
    norm = total_log_prob(scores, oov_scores)
    return scores - norm, oov_scores - norm


def total_log_prob(log_probs: np.ndarray, oov_log_probs: np.ndarray) -> float:
    """log of the probability mass over the vocabulary and the OOV words (about 0)."""
    both = np.concatenate([log_probs, oov_log_probs])
    top = float(both.max())
    return top + math.log(float(np.exp(both - top).sum()))


__all__ = ["Adaptation", "BOS", "DictionaryError", "PersonalLayer", "PersonalModel", "PersonalWeights",
           "dictionary_text", "parse_dictionary", "message_words", "is_word"]
