"""Shared pieces of the training commands: flags, a run with validation, the checkpoint."""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from model.checkpoint import CheckpointMeta, save_checkpoint
from model.config import ModelConfig
from model.lstm import NextWordLSTM
from model.tokenizer import WordTokenizer
from model.train import TrainConfig, mean_loss, train


def add_training_flags(parser: argparse.ArgumentParser, defaults: TrainConfig,
                       model_defaults: ModelConfig = ModelConfig()) -> None:
    """Flags for every TrainConfig field and the model's size and dropout."""
    for f in fields(TrainConfig):
        value = getattr(defaults, f.name)
        kind = type(value) if value is not None else int
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=value)
    parser.add_argument("--hidden-size", type=int, default=model_defaults.hidden_size)
    parser.add_argument("--embed-dim", type=int, default=model_defaults.embed_dim)
    parser.add_argument("--dropout", type=float, default=model_defaults.dropout)


def configs_from_flags(args: argparse.Namespace,
                       vocab_size: int) -> tuple[ModelConfig, TrainConfig]:
    train_config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    model_config = ModelConfig(vocab_size=vocab_size, embed_dim=args.embed_dim,
                               hidden_size=args.hidden_size, dropout=args.dropout)
    return model_config, train_config


def train_and_save(out: Path, tokenizer: WordTokenizer, train_messages: list[str],
                   valid_messages: list[str], model_config: ModelConfig,
                   train_config: TrainConfig, data_name: str, version: int = 0,
                   command: str | None = None) -> dict:
    """Train a new model on `train_messages`, keep the epoch with the best `valid` loss, save it.

    Returns a summary (also written as JSON beside the checkpoint).
    """
    torch.manual_seed(train_config.seed)
    model = NextWordLSTM(model_config)
    sequences = tokenizer.encode_messages(train_messages)
    valid = tokenizer.encode_messages(valid_messages)
    valid_losses: list[float] = []
    best: dict[str, torch.Tensor] = {}

    def validate(epoch: int, trained: NextWordLSTM) -> None:
        valid_losses.append(mean_loss(trained, valid, tokenizer.pad_id))
        print(f"epoch {epoch}: valid loss {valid_losses[-1]:.4f}", file=sys.stderr, flush=True)
        if valid_losses[-1] == min(valid_losses):
            best.update({k: v.clone() for k, v in trained.state_dict().items()})

    started = time.time()
    result = train(model, sequences, train_config, pad_id=tokenizer.pad_id, on_epoch=validate)
    final_loss = mean_loss(model, valid, tokenizer.pad_id)
    if best and min(valid_losses) < final_loss:
        model.load_state_dict(best)
    valid_loss = min([final_loss, *valid_losses])
    summary = {
        **({"command": command} if command else {}),
        "data": data_name, "messages": len(sequences),
        "tokens_per_epoch": sum(len(s) - 1 for s in sequences),
        "train_config": train_config.to_dict(), "epoch_losses": result.epoch_losses,
        "valid_loss": valid_loss, "valid_losses_per_epoch": valid_losses,
        "valid_perplexity_capped64": math.exp(valid_loss),
        "seconds": round(time.time() - started, 1),
        "tokens_per_second": round(result.tokens_per_second),
        "parameters": model.num_parameters(),
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{train_config.threads or torch.get_num_threads()} training threads",
    }
    save_checkpoint(out, model, CheckpointMeta(model_config, tokenizer.sha256, version, summary))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary
