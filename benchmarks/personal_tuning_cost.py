"""On-device cost of the personal fine-tuning (measured, not shipped): seconds per fit and
the bytes a device would keep, by history size.

    python benchmarks/personal_tuning_cost.py [--sizes 50 500 5000]

The shipped int8 model on the NumPy runtime (the device's), one BLAS thread,
`device_model.finetune.fine_tune` with its default settings (the best on `valid`: the LSTM
layer and output bias, lr 3e-4, up to 5 epochs, the most recent 10% held out). Histories: the
first N messages of the `federated` senders with the most messages, in time order, one
sender after another until N (the cost depends on the words trained on, not on whose they
are). Bytes: the trained part as float32 (what a device would store beside the history).
"""
from __future__ import annotations

import os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # one thread, as a phone's background job (before numpy)

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import load_split  # noqa: E402
from device_model.checkpoint import load_weights  # noqa: E402
from device_model.finetune import FineTune, fine_tune, trainable  # noqa: E402
from device_model.lstm import NumpyLSTM  # noqa: E402
from device_model.tokenizer import DeviceTokenizer  # noqa: E402
from model.paths import SHIPPED_MODEL, SHIPPED_TOKENIZER  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500, 5000])
    args = parser.parse_args(argv)
    tokenizer = DeviceTokenizer.load(SHIPPED_TOKENIZER)
    weights, meta = load_weights(SHIPPED_MODEL, tokenizer.sha256)
    model = NumpyLSTM(weights, meta.config)
    settings = FineTune()
    pool = [m for d in sorted(load_split("federated"), key=lambda d: -len(d.messages))
            for m in d.messages]
    print(f"load average {os.getloadavg()[0]:.1f}; settings {settings}")
    stored = sum(model.weights[k].nbytes for k in trainable(model, settings.part))
    for size in args.sizes:
        sequences = tokenizer.encode_messages(pool[:size])
        start, cpu = time.perf_counter(), time.process_time()
        done = fine_tune(model, sequences, settings, tokenizer.pad_id)
        print(json.dumps({"messages": size, "words": sum(len(s) - 2 for s in sequences),
                          "seconds": round(time.perf_counter() - start, 2),
                          "cpu_seconds": round(time.process_time() - cpu, 2),
                          "epochs": done.epochs, "steps": done.steps,
                          "adapted": done.model is not None, "stored_bytes": stored,
                          "load_average": round(os.getloadavg()[0], 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
