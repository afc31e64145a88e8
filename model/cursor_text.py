"""What the text before the cursor says about the word being typed (plain Python, no torch).

The predictor and the keyboard's editing rules share these: where the partial word starts,
whether a sentence starts here, and whether the cursor is inside something that is not a
word (an e-mail address, a web address, a number), where no word should be suggested.
"""
from __future__ import annotations

import re
import string

WORD_CHARS = frozenset(string.ascii_letters + string.digits + "'")
SENTENCE_END = ".!?"
_SENTENCE_END_AT = re.compile(r"[.!?][\"')\]]*$")
_ANY_WORD = re.compile(r"[A-Za-z0-9]")
_DOMAIN_DOT = re.compile(r"[A-Za-z0-9]\.[A-Za-z]")


def split_partial(text: str) -> tuple[str, str]:
    """(text before the word being typed, that partial word); the partial may be ''."""
    i = len(text)
    while i and text[i - 1] in WORD_CHARS:
        i -= 1
    while i < len(text) and text[i] == "'":
        i += 1
    return text[:i], text[i:]


def sentence_start(before_word: str) -> bool:
    """True when a word typed after `before_word` opens a sentence: before any word of the
    message, at the start of a line, or after . ! ? (and closing quotes or brackets) and a
    space."""
    stripped = before_word.rstrip(" \t")
    if not _ANY_WORD.search(stripped) or stripped.endswith("\n"):
        return True
    return stripped != before_word and bool(_SENTENCE_END_AT.search(stripped))


def current_token(before_cursor: str) -> str:
    """The run of non-space characters that ends at the cursor ('' after a space)."""
    if not before_cursor or before_cursor[-1].isspace():
        return ""
    return before_cursor.split()[-1]


def no_word_here(before_cursor: str) -> bool:
    """True inside an e-mail address, a web address or a number: no words to suggest."""
    token = current_token(before_cursor)
    if not token:
        return False
    lowered = token.lower()
    return ("@" in token or "://" in token or lowered.startswith("www.")
            or any(c.isdigit() for c in token) or bool(_DOMAIN_DOT.search(token)))
