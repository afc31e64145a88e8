"""The next-word LSTM: tied input/output embedding, one projected LSTM layer."""
from __future__ import annotations

import warnings

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
