"""The person's own contexts: a kNN-LM memory (Khandelwal et al. 2020) over one device's words.

For each word the person typed, the memory keeps the global model's state just before it
(the LSTM output the softmax reads: `score_messages_with_keys`) beside the word. In a new context the
`k` stored states nearest the current one vote for the words that followed them, each by
exp(-squared distance / T): words the person uses in contexts *like* this one, where the
personal n-gram counts only know contexts spelled exactly alike. `PersonalLayer` mixes the
vote in with weight lambda (`PersonalWeights.memory`).

The keys depend on the global model. Only the most recent `MEMORY` words are kept (3.8 MB
of float32 keys at 96 numbers each). Measured in the personalised evaluation only (`python
benchmarks/personalised.py --compare`): better on `valid`, not on `test`, so the app does
not keep one (BENCHMARKS.md, "Session 9").
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MEMORY = 10_000  # words whose contexts the memory keeps, the most recent ones


class StateMemory:
    """Keys (the global model's states) and the word that followed each, oldest first."""

    def __init__(self, capacity: int = MEMORY) -> None:
        self.capacity = capacity
        self.keys = np.zeros((0, 0), np.float32)
        self.words: list[str] = []
        self._norms = np.zeros(0, np.float32)

    def __len__(self) -> int:
        return len(self.words)

    def add(self, keys: np.ndarray, ws: Sequence[str]) -> None:
        """Remember one message: `keys[i]` is the state before its word `ws[i]`."""
        if not len(ws):
            return
        keys = np.asarray(keys, np.float32)
        if keys.ndim != 2 or len(keys) != len(ws):
            raise ValueError(f"{len(ws)} words need {len(ws)} keys, not {keys.shape}")
        if len(self.words) and keys.shape[1] != self.keys.shape[1]:
            raise ValueError("keys of another model: clear() the memory first")
        self.keys = np.concatenate([self.keys.reshape(-1, keys.shape[1]), keys])[-self.capacity:]
        self.words = [*self.words, *ws][-self.capacity:]
        self._norms = np.einsum("ij,ij->i", self.keys, self.keys)

    def clear(self) -> None:
        self.keys, self.words, self._norms = np.zeros((0, 0), np.float32), [], np.zeros(0)

    def vote(self, key: np.ndarray, k: int, temperature: float) -> dict[str, float]:
        """The words after the `k` stored states nearest `key`, with weights summing to 1."""
        if not self.words:
            return {}
        key = np.asarray(key, np.float32)
        distances = self._norms - 2 * (self.keys @ key) + float(key @ key)
        k = min(k, len(distances))
        near = np.argpartition(distances, k - 1)[:k] if k < len(distances) else np.arange(k)
        weights = np.exp(-(distances[near] - distances[near].min()) / temperature)
        weights /= weights.sum()
        found: dict[str, float] = {}
        for i, weight in zip(near, weights):
            word = self.words[i]
            found[word] = found.get(word, 0.0) + float(weight)
        return found


__all__ = ["MEMORY", "StateMemory"]
