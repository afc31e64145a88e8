"""Typo corrections and the clean word list behind the suggestion strip."""
import numpy as np
import pytest

from model.corrections import NEIGHBOURS, TYPED, Corrector, EditCosts, choose, edit_cost
from model.suggestion_words import SuggestionWords, is_english_word, standard_forms, \
    english_frequencies

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def test_neighbours_are_the_touching_keys():
    assert NEIGHBOURS["g"] == frozenset("tyfhvb")
    assert NEIGHBOURS["q"] == frozenset("wa")
    assert "m" in NEIGHBOURS["n"] and "m" not in NEIGHBOURS["b"]


@pytest.mark.parametrize("typed, word, kind", [
    ("thw", "the", "neighbour_substitution"), ("thx", "the", "other_substitution"),
    ("teh", "the", "transposition"), ("recieve", "receive", "transposition"),
    ("tomorow", "tomorrow", "doubled_letter_dropped"), ("hllo", "hello", "letter_dropped"),
    ("helllo", "hello", "letter_repeated"), ("hellp", "help", "letter_repeated"),
    ("hwello", "hello", "neighbour_inserted"), ("hexllo", "hello", "other_inserted"),
    ("hello", "hello", None), ("hel", "hello", None), ("hlleo", "hello", None),
    ("abc", "xyz", None)])
def test_edit_cost_names_the_error(typed, word, kind):
    costs = EditCosts()
    assert edit_cost(typed, word, costs) == (kind and getattr(costs, kind))


def table(words: list[str], scores: dict[str, float]):
    id_to_word = SPECIALS + words
    logp = np.full(len(id_to_word), -30.0, dtype=np.float32)
    for w, s in scores.items():
        logp[id_to_word.index(w)] = s
    return id_to_word, logp


def strip(words_: SuggestionWords, logp, typed, corrector=None, k=3):
    scores = words_.scores(logp)
    key = words_.key(typed)
    lo, hi = words_.span(key)
    typed_id = int(words_.ids[lo]) if lo < hi and words_.keys[lo] == key else None
    got = choose(scores, scores[words_.ids], words_.ids, (lo, hi), key, typed_id,
                 corrector, k)
    return [typed if i == TYPED else words_.shown[i] for i in got]


def test_corrections_lead_when_no_likely_completion_and_keep_the_typed_word():
    id_to_word, logp = table(["the", "then", "they", "tomorrow", "tomato", "thy"],
                             {"the": -1, "then": -3, "they": -2.5, "tomorrow": -4,
                              "tomato": -9, "thy": -12})
    w = SuggestionWords(id_to_word, id_to_word[4:])
    c = Corrector(w.keys, w.ids)
    assert strip(w, logp, "tomorow", c) == ["tomorrow", "tomorow"]
    assert strip(w, logp, "teh", c)[:2] == ["the", "teh"]
    assert strip(w, logp, "th", c) == ["the", "they", "then"]       # completions alone
    assert strip(w, logp, "th", None) == ["the", "they", "then"]
    assert strip(w, logp, "thy", c)[:2] == ["they", "thy"]         # a real word stays


def test_clean_list_hides_junk_and_shows_standard_spellings():
    zipf = english_frequencies()
    assert is_english_word("tomorrow", zipf) and not is_english_word("tommorow", zipf)
    assert not is_english_word("abcdefghijklmnopqrstuvwxyz", zipf)
    assert not is_english_word("soooo", zipf)
    forms = standard_forms(["dont", "im", "its", "ill", "were", "cant", "hello"], zipf)
    assert forms == {"dont": "don't", "im": "i'm", "cant": "can't"}
    id_to_word, logp = table(["don't", "dont", "done", "tommorow", "tomorrow", "im", "in"],
                             {"dont": -1.0, "don't": -1.5, "done": -2, "tommorow": -0.5,
                              "tomorrow": -3, "im": -2, "in": -4})
    w = SuggestionWords.english(id_to_word)
    scores = w.scores(logp)
    assert scores[id_to_word.index("don't")] == pytest.approx(np.logaddexp(-1.0, -1.5))
    shown = strip(w, logp, "", k=10)
    assert "tommorow" not in shown and "dont" not in shown and "im" not in shown
    assert shown[0] == "don't" and "i'm" in shown
    assert strip(w, logp, "don")[0] == "don't"        # apostrophes are optional to type
    assert strip(w, logp, "im") == ["i'm"]
    w.allow(["tommorow"])                             # the person's own word
    assert "tommorow" in strip(w, logp, "", k=10)
