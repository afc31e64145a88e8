"""The keyboard's editing rules (pure Python): keys, automatic capitals, suggestions."""
import pytest

from keyboard_app.ui.editing import apply_suggestion, auto_capital, capital_i, type_key
from model.cursor_text import no_word_here, sentence_start


def typed(text: str, keys: str, auto_space: bool = False) -> str:
    cursor = len(text)
    for char in keys:
        text, cursor, auto_space = type_key(text, cursor, char, auto_space)
    return text


@pytest.mark.parametrize("start, keys, auto, expected", [
    ("see you soon ", ".", True, "see you soon. "),     # a tapped word's space gives way
    ("see you soon ", "?!", True, "see you soon?! "),
    ("see you soon ", ",", True, "see you soon, "),
    ("see you soon ", ".", False, "see you soon ."),    # a space typed by hand stays
    ("on my way", "  ", False, "on my way. "),          # double space ends the sentence
    ("ok. ", " ", False, "ok.  "),                      # not twice
    ("", "  ", False, "  "),
    ("so i", " ", False, "so I "),                      # "i" becomes "I"
    ("so i'm", ",", False, "so I'm,"),
    ("hi", " ", False, "hi "),
    ("mail bob@x.co", "m", False, "mail bob@x.com"),
])
def test_type_key(start, keys, auto, expected):
    assert typed(start, keys, auto) == expected


def test_type_key_in_the_middle_keeps_the_rest():
    assert type_key("ab cd", 2, "x") == ("abx cd", 3, False)


@pytest.mark.parametrize("text, cursor, word, expected", [
    ("hello world", 3, "Help", ("Help world", 5)),           # hel|lo: the whole word
    ("say hello", 5, "hi", ("say hi ", 7)),                  # h|ello at the end
    ("how are y", 9, "you", ("how are you ", 12)),
])
def test_suggestion_replaces_the_whole_word(text, cursor, word, expected):
    assert apply_suggestion(text, cursor, word) == expected


@pytest.mark.parametrize("before, expected", [
    ("", True), ("ok. ", True), ("ok.", False), ("ok ", False), ("why? ", True),
    ("line\n", True), ("He said \"no.\" ", True), ("3.5 ", False), ("ok. th", False)])
def test_auto_capital(before, expected):
    assert auto_capital(before) == expected


def test_capital_i_only_for_the_pronoun():
    assert capital_i("so i") == "so I"
    assert capital_i("hi") == "hi" and capital_i("ski") == "ski"
    assert capital_i("i've") == "I've"


@pytest.mark.parametrize("before, expected", [
    ("mail bob@exa", True), ("www.goo", True), ("see https://x", True), ("at 5", True),
    ("at 5p", True), ("example.co", True), ("hello", False), ("ok ", False), ("don't", False),
    ("end.", False)])
def test_no_words_in_addresses_and_numbers(before, expected):
    assert no_word_here(before) == expected


def test_sentence_start():
    assert sentence_start("") and sentence_start("Hi! ") and sentence_start("\U0001f600 ")
    assert not sentence_start("Hi ") and not sentence_start("e.g")
