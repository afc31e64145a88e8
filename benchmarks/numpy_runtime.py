"""The NumPy device runtime against the PyTorch reference, side by side in one run.

    .venv/bin/python benchmarks/numpy_runtime.py [--repeats 3] [--keystrokes 2000] [--json F]

Keystroke latency (Predictor.suggest on `test` text typed character by character) and one
local round (the server's default task on the federated senders at the median and the
90th percentile of history size), each in a fresh process per runtime, the two runtimes
alternating, one thread (OPENBLAS_NUM_THREADS=1, torch.set_num_threads(1)). The NumPy
processes never import torch. Peak memory is each process's VmHWM (peak resident set). The
model is the cached pre-trained one when there is one, else a fresh default-size model
(timings do not depend on the weights). Targets (issue 19): NumPy keystrokes median
<= 1 ms and p99 <= 3 ms, a NumPy round <= 1.5x the PyTorch round.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads (children inherit)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

if TYPE_CHECKING:  # children import only what their runtime needs (their memory is measured)
    from federated.protocol import Task

RUNTIMES = ("numpy", "torch")
TARGET_MEDIAN_MS, TARGET_P99_MS, TARGET_ROUND_RATIO = 1.0, 3.0, 1.5


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS now, VmHWM peak).

    Not ru_maxrss: Linux carries that over from the parent across exec, so a spawned
    child would report the benchmark parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_now() -> int:
    return _status_bytes("VmRSS")


def _peak_rss() -> int:
    return _status_bytes("VmHWM")


def _predictor(runtime: str, model_path: str, tokenizer_path: str):
    from model.predictor import Predictor
    if runtime == "numpy":
        return Predictor.from_checkpoint(model_path, tokenizer_path)
    import torch
    torch.set_num_threads(1)
    from model.checkpoint import load_checkpoint
    from model.tokenizer import WordTokenizer
    tokenizer = WordTokenizer.load(tokenizer_path)
    return Predictor(load_checkpoint(model_path, tokenizer.sha256)[0], tokenizer)


def keystrokes_child(runtime: str, model_path: str, tokenizer_path: str, texts: list[str],
                     warmup: int, queue) -> None:
    """In a fresh process: time Predictor.suggest over `texts` (the first `warmup` untimed)."""
    start = time.perf_counter()
    predictor = _predictor(runtime, model_path, tokenizer_path)
    load_seconds, loaded_rss = time.perf_counter() - start, _rss_now()
    wall, cpu = [], []
    for n, text in enumerate(texts):
        t0, c0 = time.perf_counter(), time.thread_time()
        predictor.suggest(text, 3)
        if n >= warmup:
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - t0)
    ms, cpu_ms = np.array(wall) * 1e3, np.array(cpu) * 1e3
    queue.put({"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
               "cpu_median_ms": float(np.median(cpu_ms)),
               "cpu_p99_ms": float(np.percentile(cpu_ms, 99)), "load_seconds": load_seconds,
               "loaded_rss": loaded_rss, "peak_rss": _peak_rss(),
               "torch_loaded": "torch" in sys.modules})


def torch_round(task: Task, blob: bytes, tokenizer_json: str, messages: list[str], seed: int,
                noise_stddev: float) -> bytes:
    """The PyTorch reference of `keyboard_app.local_training.run_task` (what devices ran
    before the NumPy runtime): load, `model.train.train`, delta, clip and noise, encode."""
    import torch
    from federated.wire import encode_update
    from keyboard_app.local_training import (example_limit, make_update, sample_messages,
                                             train_config)
    from model.checkpoint import model_from_bytes
    from model.tokenizer import WordTokenizer
    from model.train import train
    from device_model.tensorfile import load
    torch.set_num_threads(1)
    tokenizer = WordTokenizer.from_json(tokenizer_json)
    config = train_config(task.train, seed)
    sample = sample_messages(messages, example_limit(task.train, len(messages)), config.seed)
    model, _ = model_from_bytes(blob, tokenizer_sha256=tokenizer.sha256)
    global_tensors, _ = load(blob)
    sequences = tokenizer.encode_messages(sample)
    train(model, sequences, config, pad_id=tokenizer.pad_id, progress=False)
    local = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    delta = {k: (local[k] - global_tensors[k]).astype(np.float32) for k in sorted(local)}
    update, _ = make_update(delta, task, len(sequences), noise_stddev)
    return encode_update(update)


def numpy_round(task: Task, blob: bytes, tokenizer_json: str, messages: list[str], seed: int,
                noise_stddev: float) -> bytes:
    """The device's round as the app runs it."""
    from device_model.tokenizer import DeviceTokenizer
    from keyboard_app.local_training import run_task
    tokenizer = DeviceTokenizer.from_json(tokenizer_json)
    return run_task(task, blob, tokenizer, messages, noise_stddev=noise_stddev, seed=seed).body


def round_child(runtime: str, task: Task, blob: bytes, tokenizer_json: str,
                messages: list[str], warm: int, queue) -> None:
    """In a fresh process: the round once cold, then `warm` times."""
    base_rss = _rss_now()
    run = numpy_round if runtime == "numpy" else torch_round
    times, body = [], b""
    for _ in range(1 + warm):
        start = time.perf_counter()
        body = run(task, blob, tokenizer_json, messages, 0, 0.01)
        times.append(time.perf_counter() - start)
    queue.put({"cold_seconds": times[0], "warm_seconds": statistics.median(times[1:]),
               "base_rss": base_rss, "peak_rss": _peak_rss(), "upload_bytes": len(body),
               "torch_loaded": "torch" in sys.modules})


def _in_fresh_process(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per runtime")
    parser.add_argument("--keystrokes", type=int, default=2000)
    parser.add_argument("--warm", type=int, default=3, help="warm rounds per process")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES),
                        help="e.g. only numpy, under a NumPy built without BLAS as a phone's is")
    args = parser.parse_args()
    runtimes = args.runtimes
    import tempfile

    from aggregation_server.config import RoundConfig
    from benchmarks.device_cost import artefacts, histories
    from data import load_split
    from model.evaluate import keystroke_texts, machine
    from device_model.lstm import HAS_BLAS
    blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
    info = {**machine(), "numpy": np.__version__, "numpy_from": str(Path(np.__file__).parent),
            "numpy_blas": blas.get("name") if HAS_BLAS else "none (products by einsum)",
            "blas_threads": os.environ["OPENBLAS_NUM_THREADS"]}
    print("machine:", json.dumps(info))
    tokenizer_json, blob, origin = artefacts()
    folder = Path(tempfile.mkdtemp(prefix="numpy-runtime-"))
    (folder / "tokenizer.json").write_text(tokenizer_json)
    (folder / "model.safetensors").write_bytes(blob)
    print(f"model: {origin}, {len(blob):,} bytes")
    report: dict = {"machine": info, "model": origin, "keystrokes": {}, "rounds": {}}
    texts = keystroke_texts(load_split("test"), args.keystrokes + 100)
    runs: dict[str, list[dict]] = {r: [] for r in runtimes}
    for _ in range(args.repeats):
        for runtime in runtimes:
            runs[runtime].append(_in_fresh_process(
                keystrokes_child, runtime, str(folder / "model.safetensors"),
                str(folder / "tokenizer.json"), texts, 100))
    for runtime in runtimes:
        med = report["keystrokes"][runtime] = _median_of(runs[runtime])
        print(f"keystrokes {runtime:5s}: median {med['median_ms']:.3f} ms, p99 "
              f"{med['p99_ms']:.3f} ms (thread CPU {med['cpu_median_ms']:.3f} / "
              f"{med['cpu_p99_ms']:.3f} ms) over {args.keystrokes} | model load "
              f"{med['load_seconds']:.2f} s | RSS loaded {med['loaded_rss'] / 2**20:.0f} MiB, "
              f"peak {med['peak_rss'] / 2**20:.0f} MiB | torch imported: {med['torch_loaded']}")
    task = RoundConfig(secure_aggregation=False).task(1, 1, "", 0.0)
    print(f"round task: {task.train}, clip {task.clip_norm}")
    for label, messages in histories().items():
        runs = {r: [] for r in runtimes}
        for _ in range(args.repeats):
            for runtime in runtimes:
                runs[runtime].append(_in_fresh_process(round_child, runtime, task, blob,
                                                       tokenizer_json, messages, args.warm))
        meds = {r: _median_of(runs[r]) for r in runtimes}
        report["rounds"][label] = {"messages": len(messages), **meds}
        for runtime in runtimes:
            med = meds[runtime]
            grew = (med["peak_rss"] - med["base_rss"]) / 2**20
            print(f"{label:6s} history ({len(messages)} messages) {runtime:5s}: warm round "
                  f"{med['warm_seconds']:.2f} s, first {med['cold_seconds']:.2f} s | peak RSS "
                  f"{med['peak_rss'] / 2**20:.0f} MiB ({grew:+.0f} over the started process) "
                  f"| upload {med['upload_bytes']:,} bytes")
        if len(runtimes) == 2:
            ratio = meds["numpy"]["warm_seconds"] / meds["torch"]["warm_seconds"]
            print(f"{label:6s} history: NumPy / PyTorch warm round time = {ratio:.2f} "
                  f"(target <= {TARGET_ROUND_RATIO})")
    print("load average now:", ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
