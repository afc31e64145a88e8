"""The next-word LSTM: tied input/output embedding, one projected LSTM layer."""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model.config import ModelConfig

State = tuple[Tensor, Tensor]
warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")


class NextWordLSTM(nn.Module):
    """Embedding -> LSTM(hidden, projected to embed_dim) -> logits via the tied embedding.

    Gboard used a CIFG-LSTM; PyTorch's LSTM with `proj_size` is the closest stock cell
    and keeps the model at about 1.5M parameters with the default config.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden_size,
                            proj_size=config.embed_dim, batch_first=True)
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.drop = nn.Dropout(config.dropout)
        nn.init.normal_(self.embedding.weight, std=0.05)

    def forward(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Logits (batch, time, vocab) for every position of `ids` (batch, time)."""
        hidden, state = self.lstm(self.drop(self.embedding(ids)), state)
        return self.logits(self.drop(hidden)), state

    def logits(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.embedding.weight, self.output_bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class LSTMScorer:
    """The NextWordLSTM behind the Scorer interface; eval mode, torch.inference_mode."""

    def __init__(self, model: NextWordLSTM, pad_id: int = 0, bos_id: int = 2,
                 batch_tokens: int = 4096) -> None:
        self.model = model.eval()
        self.vocab_size = model.config.vocab_size
        self.pad_id, self.bos_id, self.batch_tokens = pad_id, bos_id, batch_tokens

    @torch.inference_mode()
    def step(self, state: Any, word_id: int) -> Any:
        ids = torch.tensor([[word_id]], dtype=torch.long)
        return self.model.lstm(self.model.embedding(ids), state)[1]

    def start(self) -> Any:
        return self.step(None, self.bos_id)

    @torch.inference_mode()
    def log_probs(self, state: Any) -> np.ndarray:
        return torch.log_softmax(self.model.logits(state[0][0, 0]), dim=-1).numpy()

    def score_messages(self, sequences: Sequence[Sequence[int]]
                       ) -> Iterator[tuple[int, np.ndarray]]:
        """Whole messages through the LSTM in padded batches of similar length."""
        for i, logp, _ in self.score_messages_with_keys(sequences):
            yield i, logp

    @torch.inference_mode()
    def score_messages_with_keys(self, sequences: Sequence[Sequence[int]]
                                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(index, log-probs (len - 1, V), the key before each event (len - 1, embed_dim))."""
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        start = 0
        while start < len(order):
            width = len(sequences[order[start]]) - 1
            batch = order[start:start + max(1, self.batch_tokens // max(width, 1))]
            start += len(batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :len(sequences[i]) - 1] = torch.tensor(sequences[i][:-1])
            hidden, _ = self.model.lstm(self.model.embedding(ids))
            logp = torch.log_softmax(self.model.logits(hidden), dim=-1).numpy()
            keys = hidden.numpy()
            for row, i in enumerate(batch):
                n = len(sequences[i]) - 1
                yield i, logp[row, :n], keys[row, :n]
