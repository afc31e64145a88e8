"""`python -m model.train_central`: the central upper bound, trained on buckets 0-79 pooled.

A reference only (docs/EVALUATION.md): it sees federated text on one machine, which the
product never does. It uses the public tokenizer, so it compares with every other model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model.paths import CENTRAL_MODEL, TOKENIZER_PATH
from model.pretrain import load_or_build_tokenizer, messages_of
from model.recipes import add_training_flags, configs_from_flags, train_and_save
from model.train import TrainConfig

DEFAULTS = TrainConfig(epochs=4, batch_size=64, lr=3e-3, schedule="cosine", seed=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CENTRAL_MODEL)
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER_PATH)
    add_training_flags(parser, DEFAULTS)
    args = parser.parse_args(argv)
    tokenizer = load_or_build_tokenizer(args.tokenizer)
    model_config, train_config = configs_from_flags(args, tokenizer.vocab_size)
    print(f"central training on public + federated: {model_config}, {train_config}",
          file=sys.stderr)
    summary = train_and_save(args.out, tokenizer, messages_of(("public", "federated")),
                             messages_of("valid"), model_config, train_config, "public+federated")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
