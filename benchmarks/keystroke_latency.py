"""Keystroke latency of Predictor.suggest, as docs/EVALUATION.md defines it.

    .venv/bin/python benchmarks/keystroke_latency.py [--keystrokes N]

Types `test` messages character by character with the default-size model on one thread
and prints the median and p99 time from keystroke to three suggestions. A cached checkpoint
runs on the device's NumPy runtime (`Predictor.from_checkpoint`), a fresh model on PyTorch;
benchmarks/numpy_runtime.py compares the two side by side. Uses the
pre-trained model in .cache/pretrained when it exists, else a randomly initialised
default-size model with a 10k public vocabulary (latency does not depend on the weights).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread for NumPy too, before it loads
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import load_split  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.evaluate import machine, measure_latency  # noqa: E402
from model.lstm import NextWordLSTM  # noqa: E402
from model.paths import (PRETRAINED_MODEL, SHIPPED_MODEL, SHIPPED_TOKENIZER,  # noqa: E402
                         TOKENIZER_PATH)
from model.predictor import Predictor  # noqa: E402
from model.tokenizer import WordTokenizer  # noqa: E402

TARGET_MEDIAN_MS, TARGET_P99_MS = 1.0, 3.0


def predictor() -> tuple[Predictor, str]:
    """The shipped pre-trained model (int8), else the cached one, else a random
    default-size model."""
    if SHIPPED_MODEL.is_file() and SHIPPED_TOKENIZER.is_file():
        return Predictor.from_checkpoint(SHIPPED_MODEL, SHIPPED_TOKENIZER), \
            f"shipped {SHIPPED_MODEL.name}"
    if PRETRAINED_MODEL.is_file() and TOKENIZER_PATH.is_file():
        return Predictor.from_checkpoint(PRETRAINED_MODEL, TOKENIZER_PATH), \
            f"pre-trained {PRETRAINED_MODEL}"
    tokenizer = WordTokenizer.build(m for d in load_split("public") for m in d.messages)
    torch.manual_seed(0)
    model = NextWordLSTM(ModelConfig(vocab_size=tokenizer.vocab_size))
    return Predictor(model, tokenizer), "randomly initialised (no pre-trained model found)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keystrokes", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pred, source = predictor()
    config = pred.scorer.model.config
    info = machine()
    print(f"machine: nproc={info['nproc']}, cpu={info['cpu']}, torch {info['torch']}, "
          f"threads={info['threads']}")
    print(f"model: {source}; vocab {config.vocab_size}, embed {config.embed_dim}, "
          f"hidden {config.hidden_size}, {pred.scorer.model.num_parameters():,} parameters")
    test = load_split("test")
    met = True
    for name, strip in (("every vocabulary word", pred),
                        ("the app's strip: clean words + corrections",
                         Predictor.for_keyboard(pred.scorer, pred.tokenizer))):
        result = measure_latency(strip, test, args.keystrokes)
        print(f"Predictor.suggest, {name}, over {result['latency_keystrokes']} keystrokes of "
              f"test text: median {result['latency_median_ms']:.3f} ms, p99 "
              f"{result['latency_p99_ms']:.3f} ms (target: median <= {TARGET_MEDIAN_MS} ms, "
              f"p99 <= {TARGET_P99_MS} ms)")
        print(f"  thread CPU time per keystroke: median {result['latency_cpu_median_ms']:.3f} "
              f"ms, p99 {result['latency_cpu_p99_ms']:.3f} ms; load average "
              f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} on {info['nproc']} cores")
        met &= result["latency_median_ms"] <= TARGET_MEDIAN_MS and \
            result["latency_p99_ms"] <= TARGET_P99_MS
    print("within target" if met else "OUTSIDE target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
