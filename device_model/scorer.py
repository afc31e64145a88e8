"""The NumPy LSTM behind `model.predictor.Scorer`: what suggestions and evaluation call."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from device_model.lstm import NumpyLSTM, State, log_softmax, lstm_forward, mm


class NumpyScorer:
    """Start, step and log-probs of a NumpyLSTM for the predictor (no dropout)."""

    def __init__(self, model: NumpyLSTM, bos_id: int = 2, batch_tokens: int = 2048) -> None:
        self.model, self.bos_id, self.batch_tokens = model, bos_id, batch_tokens
        self.vocab_size = model.vocab_size

    def start(self) -> State:
        return self.model.step(None, self.bos_id)

    def step(self, state: State, word_id: int) -> State:
        return self.model.step(state, word_id)

    def log_probs(self, state: State) -> np.ndarray:
        return self.model.log_probs(state)

    def score_messages(self, sequences: Sequence[Sequence[int]]
                       ) -> Iterator[tuple[int, np.ndarray]]:
        """Whole messages through the LSTM in batches of equal length (no padding)."""
        for i, logp, _ in self.score_messages_with_keys(sequences):
            yield i, logp

    def score_messages_with_keys(self, sequences: Sequence[Sequence[int]]
                                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(index, log-probs (len - 1, V), the key before each event (len - 1, embed_dim))."""
        w = self.model.weights
        by_length: dict[int, list[int]] = {}
        for i, seq in enumerate(sequences):
            by_length.setdefault(len(seq) - 1, []).append(i)
        for width, members in sorted(by_length.items()):
            step = max(1, self.batch_tokens // max(width, 1))
            for start in range(0, len(members), step):
                batch = members[start:start + step]
                ids = np.array([sequences[i][:-1] for i in batch], dtype=np.int64)
                hs = lstm_forward(w, w["embedding.weight"][ids.T]).hs[1:]
                logits = mm(hs.transpose(1, 0, 2).reshape(-1, hs.shape[2]),
                            w["embedding.weight"].T).reshape(len(batch), width, -1)
                logits += w["output_bias"]
                logp = log_softmax(logits)
                for row, i in enumerate(batch):
                    yield i, logp[row], hs[:, row]
