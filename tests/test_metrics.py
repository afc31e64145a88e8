"""EVALUATION.md metrics on hand-computed examples (tiny vocabularies, fixed score tables)."""
import math

import numpy as np
import pytest

from model.metrics import NextWordMetrics, PrefixIndex, best_k, ranks

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
VOCAB = SPECIALS + ["a", "ab", "abc", "b", "ba", "c"]  # ids 4..9


def table(*rows: dict[str, float]) -> np.ndarray:
    """Log-probability rows from {word: probability}; unlisted ids get probability 0."""
    out = np.full((len(rows), len(VOCAB)), -np.inf)
    for r, row in enumerate(rows):
        assert math.isclose(sum(row.values()), 1.0)
        for word, p in row.items():
            out[r, VOCAB.index(word)] = math.log(p)
    return out


def three_messages() -> NextWordMetrics:
    m = NextWordMetrics(VOCAB)
    # s1: "ab c" -- ab ranks 0; c ranks 5 (ba ties it with a lower id, so ranks above)
    m.add("s1", ["ab", "c"], table(
        {"<unk>": .1, "<eos>": .05, "a": .2, "ab": .3, "abc": .1, "b": .15, "ba": .05, "c": .05},
        {"<unk>": .25, "<eos>": .1, "a": .2, "ab": .15, "abc": .1, "b": .1, "ba": .05, "c": .05},
        {"<eos>": .5, "a": .5}))
    # s2: "ba zz" -- ba ranks 2 (a, and b which ties with a lower id); zz is unknown
    m.add("s2", ["ba", "zz"], table(
        {"<unk>": .05, "<eos>": .05, "a": .3, "ab": .1, "abc": .1, "b": .15, "ba": .15, "c": .1},
        {"<unk>": .4, "<eos>": .1, "a": .1, "ab": .1, "abc": .1, "b": .1, "ba": .05, "c": .05},
        {"<eos>": .2, "a": .8}))
    # s1: "abc" -- ranks 4; after typing "a" the words are a, ab, abc: tapped at k=1
    m.add("s1", ["abc"], table(
        {"<unk>": .1, "<eos>": .1, "a": .2, "ab": .2, "abc": .05, "b": .2, "ba": .1, "c": .05},
        {"<eos>": .25, "a": .75}))
    return m


def test_top_k_and_unknown_rule():
    r = three_messages().result()
    assert (r["words"], r["in_vocab_words"], r["messages"], r["events"]) == (5, 4, 3, 8)
    assert r["top1"] == pytest.approx(1 / 5)
    assert r["top3"] == pytest.approx(2 / 5)
    assert r["top1_excl_unk"] == pytest.approx(1 / 4)
    assert r["top3_excl_unk"] == pytest.approx(2 / 4)


def test_perplexity_counts_unknown_and_end_events():
    nll = -sum(map(math.log, [.3, .05, .5, .15, .4, .2, .05, .25]))
    assert three_messages().result()["perplexity"] == pytest.approx(math.exp(nll / 8))


def test_keystroke_savings():
    r = three_messages().result()
    # ab: 1 tap; c: 2 (never shown); ba: 1; zz: 3 (unknown); abc: "a" + tap = 2
    assert (r["keystrokes"], r["characters"]) == (9, 15)
    assert r["ksr"] == pytest.approx(1 - 9 / 15)


def test_macro_averages_per_sender():
    r = three_messages().result()
    assert r["senders"] == 2
    assert r["macro_top1"] == pytest.approx((1 / 3 + 0) / 2)
    assert r["macro_top3"] == pytest.approx((1 / 3 + 1 / 2) / 2)


KSR_VOCAB = SPECIALS + ["a", "aa", "ab", "abc", "abd", "abe", "b"]  # ids 4..10


def ksr_row(probs: dict[str, float]) -> np.ndarray:
    row = np.full((2, len(KSR_VOCAB)), math.log(1e-3))
    for word, p in probs.items():
        row[0, KSR_VOCAB.index(word)] = math.log(p)
    return row


def test_ksr_taps_at_the_first_prefix_that_shows_the_word():
    m = NextWordMetrics(KSR_VOCAB)
    # k=0: a, aa, ab, abc above abd; k=1 ("a"): the same four; k=2 ("ab"): ab, abc -> tap
    m.add("s", ["abd"], ksr_row({"a": .3, "aa": .2, "ab": .15, "abc": .1, "abd": .05,
                                 "abe": .05, "b": .1}))
    assert (m.keys, m.chars) == (3, 4)
    assert m.result()["ksr"] == pytest.approx(.25)


def test_ksr_word_never_shown_costs_every_character_and_space():
    m = NextWordMetrics(KSR_VOCAB)
    # after "ab" (k=2, the last k) ab, abc, abd still rank above abe
    m.add("s", ["abe"], ksr_row({"ab": .3, "abc": .3, "abd": .3, "abe": .01}))
    assert (m.keys, m.chars) == (4, 4)
    assert m.result()["ksr"] == 0


def test_suggestions_skip_specials_and_break_ties_by_lower_id():
    scores = np.log(np.array([.0001, .5, .0001, .3, .05, .05, .05, .05, .05, .05]))
    assert ranks(scores[None, :], np.array([6]))[0] == 2  # ids 4, 5 tie and come first
    assert ranks(scores[None, :], np.array([4]))[0] == 0  # <unk> and <eos> are no suggestions
    index = PrefixIndex(VOCAB)
    assert index.words == ["a", "ab", "abc", "b", "ba", "c"]
    lo, hi = index.span("ab")
    assert index.words[lo:hi] == ["ab", "abc"]
    assert index.span("zz")[0] == index.span("zz")[1]
    by_spelling = scores[index.ids]
    assert best_k(by_spelling, index.ids, 3).tolist() == [4, 5, 6]
    assert best_k(by_spelling[lo:hi], index.ids[lo:hi], 3).tolist() == [5, 6]


def test_rows_must_match_words():
    with pytest.raises(ValueError, match="3 score rows"):
        NextWordMetrics(VOCAB).add("s", ["a", "b"], np.zeros((2, len(VOCAB))))
