"""Offline evaluation, exactly as docs/EVALUATION.md: quality on a split and keystroke latency.

    python -m model.evaluate CHECKPOINT... [--split valid|test] [--ngram]
        [--ngram-train public|central] [--tokenizer PATH] [--json OUT]
        [--max-senders N] [--latency-keystrokes N]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data import Device, load_split
from model.checkpoint import CheckpointError
from model.compress import load_any
from model.lstm import LSTMScorer, NextWordLSTM
from model.metrics import NextWordMetrics, score_rows
from model.ngram import KneserNey
from model.paths import ROOT, TOKENIZER_PATH
from model.predictor import Predictor, Scorer
from model.suggestion_words import SuggestionWords
from model.tokenizer import TokenizerError, WordTokenizer
from model.words import words

NGRAM_TRAIN = {"public": ("public",), "central": ("public", "federated")}
COLUMNS = [  # (result key, table title, format)
    ("top1", "top-1", "{:.2%}"),
    ("top3", "top-3", "{:.2%}"),
    ("top1_excl_unk", "top-1 excl unk", "{:.2%}"),
    ("top3_excl_unk", "top-3 excl unk", "{:.2%}"),
    ("perplexity", "perplexity", "{:.1f}"),
    ("ksr", "KSR", "{:.2%}"),
    ("macro_top1", "macro top-1", "{:.2%}"),
    ("macro_top3", "macro top-3", "{:.2%}"),
    ("latency_median_ms", "latency median ms", "{:.3f}"),
    ("latency_p99_ms", "latency p99 ms", "{:.3f}"),
]


def evaluate_scorer(scorer: Scorer | NextWordLSTM, tokenizer: WordTokenizer,
                    devices: Sequence[Device], progress: bool = False,
                    clean: SuggestionWords | None = None) -> dict[str, float | int]:
    """Every metric of EVALUATION.md for `scorer` over the messages of `devices`; with
    `clean`, suggestions come only from those words (the app's clean list).

    A NextWordLSTM is wrapped in an LSTMScorer (which puts it in eval mode).
    """
    if isinstance(scorer, NextWordLSTM):
        scorer = LSTMScorer(scorer)
    metrics = NextWordMetrics(tokenizer.id_to_word, tokenizer.unk_id, tokenizer.eos_id,
                              words=clean)
    rows = [(d.sender, ws) for d in devices for ws in map(words, d.messages) if ws]
    with tqdm(total=sum(len(ws) + 1 for _, ws in rows), unit="event", disable=not progress,
              leave=False, file=sys.stderr) as bar:
        for events in score_rows(scorer, metrics, rows, tokenizer.bos_id, tokenizer.eos_id):
            bar.update(events)
    return metrics.result()


def keystroke_texts(devices: Sequence[Device], keystrokes: int) -> list[str]:
    """Messages typed character by character until `keystrokes` prefixes are collected;
    one message from each device in turn, so that many senders' styles are typed."""
    turns = zip_longest(*(d.messages for d in devices))
    texts: list[str] = []
    for message in (m for turn in turns for m in turn if m is not None):
        texts += [message[:i] for i in range(1, len(message) + 1)]
        if len(texts) >= keystrokes:
            break
    return texts[:keystrokes]


def measure_latency(predictor: Predictor, devices: Sequence[Device],
                    keystrokes: int = 2000, warmup: int = 100) -> dict[str, float]:
    """Median and p99 milliseconds of `Predictor.suggest` per keystroke, one torch thread.

    Wall-clock time is the figure; the thread's CPU time is reported beside it, since on a
    busy shared machine the wall-clock tail mostly measures waiting for a core.
    """
    texts = keystroke_texts(devices, keystrokes + warmup)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        wall, cpu = [], []
        for n, text in enumerate(texts):
            start, start_cpu = time.perf_counter(), time.thread_time()
            predictor.suggest(text, 3)
            if n >= warmup:
                cpu.append(time.thread_time() - start_cpu)
                wall.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    ms, cpu_ms = np.array(wall) * 1000, np.array(cpu) * 1000
    return {"latency_median_ms": float(np.median(ms)),
            "latency_p99_ms": float(np.percentile(ms, 99)),
            "latency_cpu_median_ms": float(np.median(cpu_ms)),
            "latency_cpu_p99_ms": float(np.percentile(cpu_ms, 99)),
            "latency_keystrokes": len(ms)}


def machine() -> dict[str, str | int | float]:
    """What a figure was measured on: EVALUATION.md's nproc and CPU model, and what else
    skews timings (threads, memory, the load average when it was taken)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"nproc": os.cpu_count() or 0, "cpu": cpu, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "memory_gib": round(memory / 2**30, 1),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def table(rows: list[dict]) -> str:
    """A plain-text table, one row per model."""
    head = ["model"] + [title for _, title, _ in COLUMNS]
    lines = [[r["name"]] + [_cell(r.get(key), fmt) for key, _, fmt in COLUMNS] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join([cells[0].ljust(widths[0])] +
                               [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])
                     for cells in [head, *lines])


def _cell(value: float | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.evaluate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="*", type=Path, metavar="CHECKPOINT")
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    parser.add_argument("--ngram", action="store_true", help="add the Kneser-Ney trigram baseline")
    parser.add_argument("--ngram-train", choices=tuple(NGRAM_TRAIN), default="public",
                        help="public: buckets 0-9; central: buckets 0-79")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER_PATH)
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the figures (default runs/eval-SPLIT.json)")
    parser.add_argument("--max-senders", type=int, default=None)
    parser.add_argument("--latency-keystrokes", type=int, default=2000, help="0 skips latency")
    parser.add_argument("--clean-words", action="store_true",
                        help="also score each model suggesting only the app's clean word list "
                             "(wordfreq English words, standard spellings)")
    args = parser.parse_args(argv)
    if not args.checkpoints and not args.ngram:
        parser.error("give at least one CHECKPOINT or --ngram")
    if args.max_senders is not None and args.max_senders < 1:
        parser.error("--max-senders must be at least 1")
    try:
        tokenizer = WordTokenizer.load(args.tokenizer)
        models = [(_label(p), load_any(p, tokenizer.sha256)[0]) for p in args.checkpoints]
    except (TokenizerError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    devices = load_split(args.split)[:args.max_senders]
    scorers: list[tuple[str, Scorer]] = [(name, LSTMScorer(m)) for name, m in models]
    if args.ngram:
        train = [m for d in load_split(NGRAM_TRAIN[args.ngram_train]) for m in d.messages]
        print(f"training the Kneser-Ney trigram on {len(train)} {args.ngram_train} messages",
              file=sys.stderr)
        scorers.append((f"kn3-{args.ngram_train}", KneserNey.from_messages(train, tokenizer)))
    rows = []
    clean = SuggestionWords.english(tokenizer.id_to_word) if args.clean_words else None
    for name, scorer in scorers:
        for words_ in (None, clean) if clean else (None,):
            start = time.perf_counter()
            row = {"name": name + ("+clean" if words_ else ""),
                   **evaluate_scorer(scorer, tokenizer, devices,
                                     progress=sys.stderr.isatty(), clean=words_)}
            row["eval_seconds"] = round(time.perf_counter() - start, 1)
            if args.latency_keystrokes > 0:
                row.update(measure_latency(Predictor(scorer, tokenizer, words=words_,
                                                     corrections=words_ is not None),
                                           devices, args.latency_keystrokes))
            rows.append(row)
    print(f"split {args.split}: {rows[0]['messages']} messages, {rows[0]['words']} words, "
          f"{rows[0]['senders']} senders")
    print(table(rows))
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}; torch {info['torch']}; "
          f"latency on 1 thread")
    out = args.json or ROOT / "runs" / f"eval-{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"split": args.split, "max_senders": args.max_senders,
                               "machine": info, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
