"""The text edits behind the suggestion strip (pure Python, no Kivy)."""
from __future__ import annotations


def partial_word(before_cursor: str) -> str:
    """The word being typed at the cursor, as the predictor sees it ('' after a space)."""
    from model.predictor import split_partial  # torch: not needed before a model is loaded
    return split_partial(before_cursor)[1]


def strip_order(suggestions: list[str]) -> list[str]:
    """Three slots, most likely in the middle as phone keyboards show them: [2nd, 1st, 3rd]."""
    padded = (list(suggestions) + ["", "", ""])[:3]
    return [padded[1], padded[0], padded[2]]


def apply_suggestion(text: str, cursor: int, word: str) -> tuple[str, int]:
    """`text` with the partial word at `cursor` replaced by `word` (or `word` appended) plus
    one space; returns the new text and cursor. Keeps a capital the user typed."""
    before, after = text[:cursor], text[cursor:]
    partial = partial_word(before)
    head = before[:len(before) - len(partial)]
    if partial[:1].isupper() and word[:1].islower():
        word = word[:1].upper() + word[1:]
    if not partial and head and not head[-1].isspace():
        head += " "
    if after[:1].isspace():
        return head + word + after, len(head) + len(word) + 1
    return head + word + " " + after, len(head) + len(word) + 1
