"""A yardstick for the fleet: how far *central* fine-tuning of the public pre-trained model
gets on the same `federated` text, pooled and shuffled on one machine.

    .venv/bin/python benchmarks/central_finetune.py [--optimizer sgd] [--lr 0.316]
        [--batch-size 16] [--messages 44000 (0: all)] [--epochs 1] [--schedule constant]
        [--threads 1] [--eval-senders 40]

It trains `--epochs` passes over the first `--messages` of the shuffled federated messages,
then evaluates on the same 40 `valid` senders as the periodic evaluations of a fleet run with
`--seed 0` (`fleet.population.choose_valid`), so its figures sit beside that fleet's valid
curve. A reference for data efficiency only: the product never pools federated text.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from data import load_split  # noqa: E402
from fleet.config import FleetConfig  # noqa: E402
from fleet.evaluation import Evaluator  # noqa: E402
from fleet.population import choose_valid  # noqa: E402
from model.checkpoint import model_from_bytes, model_to_bytes  # noqa: E402
from model.evaluate import machine  # noqa: E402
from model.paths import PRETRAINED_MODEL, TOKENIZER_PATH  # noqa: E402
from model.schedule import SCHEDULES  # noqa: E402
from model.tokenizer import WordTokenizer  # noqa: E402
from model.train import TrainConfig, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizer", default="sgd", help="sgd | adam | adamw")
    p.add_argument("--lr", type=float, default=0.316)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--messages", type=int, default=44_000,
                   help="how many to train on (0: all of them)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over those messages")
    p.add_argument("--schedule", choices=SCHEDULES, default="constant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-senders", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps({"machine": machine(), "args": vars(args)}))
    tokenizer = WordTokenizer.load(TOKENIZER_PATH)
    messages = [m for d in load_split("federated") for m in d.messages]
    random.Random(args.seed).shuffle(messages)
    messages = messages[:args.messages or None]
    model, meta = model_from_bytes(PRETRAINED_MODEL.read_bytes(), tokenizer.sha256)
    evaluate = Evaluator(TOKENIZER_PATH.read_text(),
                         choose_valid(FleetConfig(eval_senders=args.eval_senders)), 1)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         optimizer=args.optimizer, schedule=args.schedule, seed=args.seed,
                         threads=args.threads)
    started = time.time()
    result = train(model, tokenizer.encode_messages(messages), config,
                   pad_id=tokenizer.pad_id, progress=False)
    seconds = time.time() - started
    valid = evaluate(model_to_bytes(model, meta))
    print(f"{args.optimizer} lr {args.lr:g} batch {args.batch_size} {args.schedule}: "
          f"{args.epochs:g} pass(es) over {len(messages):,} federated messages "
          f"({result.steps} steps, {seconds:.0f} s) -> valid "
          f"({valid['senders']} senders) top-1 {100 * valid['top1']:.2f}%, "
          f"perplexity {valid['perplexity']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
