"""The model's architecture in one small dataclass (Gboard-sized by default)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ModelConfig:
    """Hard et al. 2018: 96-dim tied embedding, one 670-unit LSTM projected to 96."""

    vocab_size: int = 10_004
    embed_dim: int = 96
    hidden_size: int = 670
    dropout: float = 0.1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != known:
            raise ValueError(f"model config needs exactly the keys {sorted(known)}")
        return cls(**data)
