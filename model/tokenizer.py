"""A word-level tokenizer built with `tokenizers` from public text only."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from device_model.tokenizer import (BOS, EOS, PAD, SPECIALS, UNK,  # noqa: F401 (re-exported)
                                    TokenizerError)
from model.words import WORD_PATTERN


class WordTokenizer:
    """Words to ids and back; ids 0-3 are <pad>, <unk>, <bos>, <eos>."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        for i, special in enumerate(SPECIALS):
            if vocab.get(special) != i:
                raise TokenizerError(f"special symbol {special} must have id {i}")
        self.id_to_word = [""] * len(vocab)
        for word, i in vocab.items():
            self.id_to_word[i] = word
        self.word_to_id = vocab
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = range(4)
        self.sha256 = hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @classmethod
    def build(cls, messages: Iterable[str], vocab_size: int = 10_000) -> WordTokenizer:
        """The `vocab_size` most frequent words of `messages` plus the 4 special symbols."""
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.Split(
            Regex(WORD_PATTERN), behavior="removed", invert=True)
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size + len(SPECIALS), special_tokens=list(SPECIALS),
            min_frequency=1, show_progress=False)
        tokenizer.train_from_iterator(messages, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def from_json(cls, text: str) -> WordTokenizer:
        """A tokenizer from its `tokenizer.json` text."""
        try:
            return cls(Tokenizer.from_str(text))
        except Exception as err:  # tokenizers raises a bare Exception
            raise TokenizerError(f"not a tokenizer.json: {str(err)[:200]}") from None

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        """A tokenizer from a `tokenizer.json` file."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: file not found")
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except (TokenizerError, UnicodeDecodeError) as err:
            raise TokenizerError(f"{path}: {err}") from None

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_word)

    def encode(self, text: str) -> list[int]:
        """Word ids of `text` (unknown words become <unk>), no <bos>/<eos>."""
        return self.tokenizer.encode(text).ids

    def encode_message(self, text: str) -> list[int]:
        """<bos>, the word ids of one message, <eos>."""
        return [self.bos_id, *self.encode(text), self.eos_id]

    def encode_messages(self, texts: list[str]) -> list[list[int]]:
        """encode_message over many messages (batched); messages with no word are dropped."""
        encoded = self.tokenizer.encode_batch(texts)
        return [[self.bos_id, *e.ids, self.eos_id] for e in encoded if e.ids]
