"""The text edits behind the keys and the suggestion strip (pure Python, no Kivy, no torch).

Every edit takes the field's text and cursor index and returns the new text and cursor, so
the rules are the same for the on-screen keys, the strip and the tests.
"""
from __future__ import annotations

from model.cursor_text import WORD_CHARS, sentence_start, split_partial

AUTO_SPACE_PUNCT = ".,!?;:"  # typed right after a tapped suggestion: takes the space's place
_I_FORMS = frozenset({"i", "i'm", "i'll", "i've", "i'd"})


def partial_word(before_cursor: str) -> str:
    """The word being typed at the cursor, as the predictor sees it ('' after a space)."""
    return split_partial(before_cursor)[1]


def strip_order(suggestions: list[str]) -> list[str]:
    """Three slots, most likely in the middle as phone keyboards show them: [2nd, 1st, 3rd]."""
    padded = (list(suggestions) + ["", "", ""])[:3]
    return [padded[1], padded[0], padded[2]]


def _word_tail(after: str) -> int:
    """How many characters of `after` belong to the word the cursor is in."""
    n = 0
    while n < len(after) and after[n] in WORD_CHARS:
        n += 1
    return n


def apply_suggestion(text: str, cursor: int, word: str) -> tuple[str, int]:
    """`text` with the whole word at `cursor` replaced by `word` (or `word` inserted) plus one
    space; returns the new text and cursor. Keeps a capital the user typed."""
    before, after = text[:cursor], text[cursor:]
    partial = partial_word(before)
    head, after = before[:len(before) - len(partial)], after[_word_tail(after):]
    if partial[:1].isupper() and word[:1].islower():
        word = word[:1].upper() + word[1:]
    if not partial and head and not head[-1].isspace():
        head += " "
    if after[:1].isspace():
        return head + word + after, len(head) + len(word) + 1
    return head + word + " " + after, len(head) + len(word) + 1


def capital_i(before_cursor: str) -> str:
    """The pronoun "i" (and i'm, i'll, ...) just typed, as "I"."""
    head, partial = split_partial(before_cursor)
    if partial in _I_FORMS:
        return head + "I" + partial[1:]
    return before_cursor


def auto_capital(before_cursor: str) -> bool:
    """Shift on by itself: at the start of a message or line and after . ! ? and a space."""
    head, partial = split_partial(before_cursor)
    return not partial and sentence_start(head)


def type_key(text: str, cursor: int, char: str, auto_space: bool = False
             ) -> tuple[str, int, bool]:
    """`char` typed at `cursor` with the keyboard's rules; (text, cursor, auto_space).

    `auto_space` says the space before the cursor was put there by a tapped suggestion (or
    by these rules): punctuation then takes its place and is followed by a space. A second
    space after a word ends the sentence (". "); "i" becomes "I" when the word ends.
    """
    before, after = text[:cursor], text[cursor:]
    if char in " \n" + AUTO_SPACE_PUNCT:
        before = capital_i(before)
    if char in AUTO_SPACE_PUNCT and auto_space and before.endswith(" "):
        before = before[:-1] + char + " "
        return before + after, len(before), True
    if char == " " and before.endswith(" ") and before[-2:-1].isalnum():
        before = before[:-1] + ". "
        return before + after, len(before), False
    before += char
    return before + after, len(before), False
