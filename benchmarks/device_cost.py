"""On-device cost of one round: local training time and peak memory, bytes up and down.

    .venv/bin/python benchmarks/device_cost.py [--repeats 5]

Histories: the `federated` senders at the median and the 90th percentile of message
counts. Model: the default ~1.5M-parameter LSTM (the cached public pre-trained one if
present, else freshly initialised: the cost does not depend on the weights). Training:
the server's default round hyper-parameters, one CPU thread, through the device's own
`run_task` (train, delta, clip, noise, encode). Each process is fresh, so its peak
resident memory (ru_maxrss) is its own; it runs the round once cold (first round after the
app starts: lazy torch start-up included) and then `--warm` times (steady state).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from aggregation_server.config import RoundConfig  # noqa: E402  (the server's defaults)
from data import load_split, typical_histories  # noqa: E402
from federated.protocol import Task  # noqa: E402
from model.checkpoint import CheckpointMeta, model_to_bytes, read_metadata  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.evaluate import machine  # noqa: E402
from model.lstm import NextWordLSTM  # noqa: E402
from model.paths import PRETRAINED_MODEL, TOKENIZER_PATH  # noqa: E402
from model.tokenizer import WordTokenizer  # noqa: E402


def artefacts() -> tuple[str, bytes, str]:
    """(tokenizer json, global model checkpoint bytes, where the model came from)."""
    if TOKENIZER_PATH.is_file() and PRETRAINED_MODEL.is_file():
        return TOKENIZER_PATH.read_text(), PRETRAINED_MODEL.read_bytes(), "public pre-trained"
    public = [m for d in load_split("public") for m in d.messages]
    tokenizer = WordTokenizer.build(public, vocab_size=10_000)
    config = ModelConfig(vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    blob = model_to_bytes(NextWordLSTM(config), CheckpointMeta(config, tokenizer.sha256, 1))
    return tokenizer.to_json(), blob, "freshly initialised (no cached pre-trained model)"


def one_run(tokenizer_json: str, blob: bytes, messages: list[str], task: Task, warm: int,
            queue) -> None:
    """In a fresh process: the device's round once cold, then `warm` times; time, memory, bytes."""
    torch.set_num_threads(1)
    from keyboard_app.local_training import run_task
    tokenizer = WordTokenizer.from_json(tokenizer_json)
    base_rss = psutil.Process().memory_info().rss
    times = []
    for _ in range(1 + warm):
        start = time.perf_counter()
        local = run_task(task, blob, tokenizer, messages, seed=0,  # plain round: z*C
                         noise_stddev=task.noise_multiplier * task.clip_norm)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put({"cold_seconds": times[0], "warm_seconds": statistics.median(times[1:]),
               "peak_rss": peak, "base_rss": base_rss,
               "upload_bytes": len(local.body), "examples": local.update.num_examples,
               "steps": local.result.steps, "tokens": local.result.tokens})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per history")
    parser.add_argument("--warm", type=int, default=3, help="warm rounds per process")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    info = machine()
    print("machine:", json.dumps(info))
    tokenizer_json, blob, origin = artefacts()
    config = RoundConfig(noise_multiplier=0.01, min_reports=1, dishonest_share=0.0,
                         secure_aggregation=False)
    task = config.task(1, 1, "", 0.0)
    params = NextWordLSTM(ModelConfig.from_json(read_metadata(blob)["config"])).num_parameters()
    print(f"model: {params:,} parameters, {origin}; task train {task.train}, one thread")
    ctx = mp.get_context("spawn")
    report = {"machine": info, "parameters": params, "model": origin,
              "train": task.train.to_json(),
              "download_bytes_per_round": len(blob),
              "tokenizer_bytes_first_round": len(tokenizer_json.encode()), "histories": {}}
    for label, messages in typical_histories("federated").items():
        runs = []
        for _ in range(args.repeats):
            queue = ctx.Queue()
            proc = ctx.Process(target=one_run, args=(tokenizer_json, blob, messages, task,
                                                     args.warm, queue))
            proc.start()
            runs.append(queue.get())
            proc.join()
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        report["histories"][label] = {"messages": len(messages), **med}
        print(f"{label:6s} history: {len(messages):4d} messages, {med['examples']:.0f} examples, "
              f"{med['steps']:.0f} steps, {med['tokens']:.0f} tokens | local round "
              f"{med['warm_seconds']:.2f} s warm, {med['cold_seconds']:.2f} s first in a new "
              f"process | peak RSS {med['peak_rss'] / 2**20:.0f} MiB "
              f"({(med['peak_rss'] - med['base_rss']) / 2**20:+.0f} MiB over the loaded process) "
              f"| upload {med['upload_bytes'] / 2**20:.2f} MiB")
    print(f"download per round: model {len(blob) / 2**20:.2f} MiB (ETag: only when it changed); "
          f"tokenizer {len(tokenizer_json.encode()) / 2**10:.0f} KiB on first contact only")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
