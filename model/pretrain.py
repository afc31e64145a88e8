"""`python -m model.pretrain`: the tokenizer and the first global model, from public text only.

Public means the senders of buckets 0-9 (docs/EVALUATION.md): the server may use them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data import load_split
from model.checkpoint import CheckpointError, load_checkpoint
from model.config import ModelConfig
from model.paths import PRETRAINED_DIR
from model.recipes import add_training_flags, configs_from_flags, train_and_save
from model.tokenizer import TokenizerError, WordTokenizer
from model.train import TrainConfig

# 4 epochs keep `make demo` within 15 minutes on 2 cores; BENCHMARKS.md's pre-trained model
# used `--epochs 8 --dropout 0.2 --threads 1` (best valid loss 4.650, at epoch 6).
DEFAULTS = TrainConfig(epochs=4, batch_size=32, lr=3e-3, schedule="cosine", seed=0)
MODEL_DEFAULTS = ModelConfig(dropout=0.2)
VOCAB_SIZE = 10_000


def messages_of(role: str | tuple[str, ...]) -> list[str]:
    return [m for device in load_split(role) for m in device.messages]


def build_tokenizer(path: Path) -> WordTokenizer:
    """The 10k most frequent words of the public split, saved to `path`."""
    tokenizer = WordTokenizer.build(messages_of("public"), vocab_size=VOCAB_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(path)
    return tokenizer


def load_or_build_tokenizer(path: Path) -> WordTokenizer:
    try:
        return WordTokenizer.load(path)
    except TokenizerError:
        return build_tokenizer(path)


def is_cached(out_dir: Path) -> bool:
    """True when `out_dir` holds a tokenizer and a checkpoint that loads with it."""
    try:
        tokenizer = WordTokenizer.load(out_dir / "tokenizer.json")
        load_checkpoint(out_dir / "model.safetensors", tokenizer.sha256)
        return True
    except (TokenizerError, CheckpointError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=PRETRAINED_DIR)
    parser.add_argument("--force", action="store_true", help="train even if a model is cached")
    add_training_flags(parser, DEFAULTS, MODEL_DEFAULTS)
    args = parser.parse_args(argv)
    if not args.force and is_cached(args.out_dir):
        print(f"pre-trained model cached in {args.out_dir} (use --force to retrain)")
        return 0
    tokenizer = build_tokenizer(args.out_dir / "tokenizer.json")
    model_config, train_config = configs_from_flags(args, tokenizer.vocab_size)
    print(f"pre-training on the public split: {model_config}, {train_config}", file=sys.stderr)
    command = " ".join(["python -m model.pretrain",
                        *(sys.argv[1:] if argv is None else argv)])
    summary = train_and_save(args.out_dir / "model.safetensors", tokenizer, messages_of("public"),
                             messages_of("valid"), model_config, train_config, "public",
                             command=command)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
