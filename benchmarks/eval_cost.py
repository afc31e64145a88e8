"""On-device cost of one federated evaluation round: time, peak memory, bytes up and down.

    .venv/bin/python benchmarks/eval_cost.py [--repeats 3] [--warm 3] [--max-words 200]

Histories: the `valid` senders at the median and the 90th percentile of message counts.
Model: the shipped int8 model (model/shipped/), scored as the phone scores it (NumPy
runtime, one thread: `keyboard_app.evaluation_task.run_evaluation`: pick the most recent
messages within the word cap, score the current and the previous version, scale, clip and
noise the report). Each process is fresh, so its peak resident memory (VmHWM) is its
own; it runs the evaluation once cold (the model built from its file) and then `--warm`
times. Bytes: the report's JSON body up; down, one model file per version the device does
not hold yet (the previous version, at most: 6.2 MB in float32 from /v1/models/<v>).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from data import typical_histories  # noqa: E402
from federated.evaluation import select_messages  # noqa: E402
from model.paths import SHIPPED_MODEL, SHIPPED_TOKENIZER  # noqa: E402
from model.words import words  # noqa: E402


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM: its own, not inherited at fork like
    ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def one_run(messages: list[str], max_words: int, versions: int, warm: int) -> dict:
    """In a fresh process: one cold and `warm` warm evaluations; seconds and peak memory."""
    from device_model.tokenizer import DeviceTokenizer
    from federated.protocol import EvaluateParams, Task
    from keyboard_app.evaluation_task import run_evaluation
    base = peak_mb()
    tokenizer = DeviceTokenizer.load(SHIPPED_TOKENIZER)
    blob = SHIPPED_MODEL.read_bytes()
    task = Task(round_id=1, model_version=0, model_sha256="0" * 64, deadline=0.0, train=None,
                min_examples=1, clip_norm=1.0, noise_multiplier=1.0, min_reports=1,
                dishonest_share=0.0, secure_aggregation=False, kind="evaluate",
                evaluate=EvaluateParams(tuple((v, "0" * 64) for v in range(versions)),
                                        max_words))
    seconds = []
    for _ in range(1 + warm):
        started = time.perf_counter()
        report = run_evaluation(task, [blob] * versions, tokenizer, messages, noise_stddev=1.0)
        seconds.append(time.perf_counter() - started)
    return {"cold_seconds": seconds[0], "warm_seconds": statistics.median(seconds[1:]),
            "peak_rss_mb": peak_mb(),
            "rss_after_imports_mb": base, "report_bytes": len(json.dumps(report.body)),
            "messages": report.messages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per history")
    parser.add_argument("--warm", type=int, default=3, help="warm evaluations per process")
    parser.add_argument("--max-words", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    from model.evaluate import machine
    rows = []
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for label, messages in typical_histories("valid").items():
            chosen = select_messages(messages, args.max_words)
            for versions in (1, 2):
                runs = [pool.apply(one_run, (messages, args.max_words, versions, args.warm))
                        for _ in range(args.repeats)]
                row = {"history": label, "messages_stored": len(messages),
                       "words_scored": sum(len(words(m)) for m in chosen),
                       "versions": versions,
                       **{k: statistics.median(r[k] for r in runs) for k in runs[0]},
                       "model_downloads": versions - 1}  # the previous version's file
                rows.append(row)
                print(f"{label:6s} ({len(messages)} messages, {row['words_scored']} words "
                      f"scored), {versions} version(s): cold {row['cold_seconds']:.2f} s, "
                      f"warm {row['warm_seconds']:.2f} s, peak RSS {row['peak_rss_mb']:.0f} MB "
                      f"({row['rss_after_imports_mb']:.0f} MB after imports), up "
                      f"{row['report_bytes']:.0f} B, down {row['model_downloads']} model file(s)",
                      flush=True)
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, load {info['load_average_1min']}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "machine": info}, indent=2) + "\n")


if __name__ == "__main__":
    main()
