"""The word tokenizer without the `tokenizers` library: same file, same ids.

`model.tokenizer.WordTokenizer` builds the tokenizer with `tokenizers` and saves its JSON.
This reads that JSON and encodes exactly as `tokenizers` does for this configuration:
special symbols are cut out of the raw text first, the rest is lower-cased and split into
the matches of `WORD_PATTERN`, and each word is looked up (unknown: <unk>). Any other
configuration is refused rather than approximated.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from model.words import WORD_PATTERN

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
_EXPECTED = {"normalizer": {"type": "Lowercase"},
             "pre_tokenizer": {"type": "Split", "pattern": {"Regex": WORD_PATTERN},
                               "behavior": "Removed", "invert": True}}


class TokenizerError(ValueError):
    """A tokenizer file is missing or not a tokenizer of this project."""


def _vocab(spec: dict) -> dict[str, int]:
    """The WordLevel vocabulary of a parsed tokenizer.json, checked."""
    for key, value in _EXPECTED.items():
        if spec.get(key) != value:
            raise TokenizerError(f"unsupported {key} {json.dumps(spec.get(key))[:120]}")
    model = spec.get("model")
    if not isinstance(model, dict) or model.get("type") != "WordLevel":
        raise TokenizerError("the model must be WordLevel")
    vocab = model.get("vocab")
    if model.get("unk_token") != UNK or not isinstance(vocab, dict):
        raise TokenizerError("a WordLevel model needs a vocab and the unk_token <unk>")
    ids = sorted(vocab.values()) if all(type(i) is int for i in vocab.values()) else None
    if ids != list(range(len(vocab))):
        raise TokenizerError("vocab ids must be 0..n-1, each once")
    for i, special in enumerate(SPECIALS):
        if vocab.get(special) != i:
            raise TokenizerError(f"special symbol {special} must have id {i}")
    return vocab


def _added(spec: dict, vocab: dict[str, int]) -> dict[str, int]:
    """The added (special) tokens, matched in the raw text before lower-casing."""
    added = {}
    for token in spec.get("added_tokens") or []:
        plain = isinstance(token, dict) and not any(
            token.get(k) for k in ("single_word", "lstrip", "rstrip", "normalized"))
        if not plain or vocab.get(token.get("content")) != token.get("id"):
            raise TokenizerError(f"unsupported added token {json.dumps(token)[:120]}")
        added[token["content"]] = token["id"]
    return added


class DeviceTokenizer:
    """Words to ids and back (the API of `model.tokenizer.WordTokenizer`, reading only)."""

    def __init__(self, text: str) -> None:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise TokenizerError(f"not a tokenizer.json: {err}") from None
        if not isinstance(spec, dict):
            raise TokenizerError("not a tokenizer.json: not a JSON object")
        self.word_to_id = _vocab(spec)
        self._added = _added(spec, self.word_to_id)
        longest_first = sorted(self._added, key=lambda s: (-len(s), s))
        self._split = re.compile("|".join(map(re.escape, longest_first))) if longest_first else None
        self._word = re.compile(WORD_PATTERN)
        self.id_to_word = [""] * len(self.word_to_id)
        for word, i in self.word_to_id.items():
            self.id_to_word[i] = word
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = range(4)
        self._text = text
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> DeviceTokenizer:
        """A tokenizer from its `tokenizer.json` text."""
        return cls(text)

    @classmethod
    def load(cls, path: str | Path) -> DeviceTokenizer:
        """A tokenizer from a `tokenizer.json` file."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: file not found")
        try:
            return cls(path.read_text(encoding="utf-8"))
        except (TokenizerError, UnicodeDecodeError) as err:
            raise TokenizerError(f"{path}: {err}") from None

    def to_json(self) -> str:
        return self._text

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_word)

    def _words(self, text: str) -> list[int]:
        get, unk = self.word_to_id.get, self.unk_id
        return [get(w, unk) for w in self._word.findall(text.lower())]

    def encode(self, text: str) -> list[int]:
        """Word ids of `text` (unknown words become <unk>), no <bos>/<eos>."""
        if self._split is None:
            return self._words(text)
        ids, start = [], 0
        for match in self._split.finditer(text):
            ids += self._words(text[start:match.start()])
            ids.append(self._added[match.group()])
            start = match.end()
        return ids + self._words(text[start:])

    def encode_message(self, text: str) -> list[int]:
        """<bos>, the word ids of one message, <eos>."""
        return [self.bos_id, *self.encode(text), self.eos_id]

    def encode_messages(self, texts: list[str]) -> list[list[int]]:
        """encode_message over many messages; messages with no word are dropped."""
        encoded = (self.encode(t) for t in texts)
        return [[self.bos_id, *ids, self.eos_id] for ids in encoded if ids]
