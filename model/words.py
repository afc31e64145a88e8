"""Scoring words, exactly as docs/EVALUATION.md defines them."""
import re

WORD_PATTERN = r"[a-z0-9]+(?:'[a-z0-9]+)*"
_WORD = re.compile(WORD_PATTERN)


def words(text: str) -> list[str]:
    """Lower-cased words of `text`; apostrophes are kept only inside a word."""
    return _WORD.findall(text.lower())
