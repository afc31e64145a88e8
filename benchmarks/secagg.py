"""Secure aggregation cost for the ~1.5M-parameter model: device masking time, bytes per
device against a plain float32 upload, and the server's unmasking time.

    .venv/bin/python benchmarks/secagg.py [--rounds 10:auto,50:auto,100:auto,100:10] [--repeats 3]

Each round is simulated in full, in one process and one thread: n real `SecAggClient`s
(each with its Ed25519 identity key) and one `SecAggServerRound`, every message through
its wire form (JSON or safetensors), the consistency round (signed survivor lists) included.
A tenth of the clients (every 10th id) drop out after sharing their keys, before sending
a masked input: the costly case for the server, which must then reconstruct their mask
keys and remove their pairwise masks from their surviving neighbours' inputs. The degree
is the one `choose_degree` picks for n (dropout 0.1, no corrupt clients, 2^-40) or the
given one. Updates are clipped, noised float32 vectors of the model's size (DP-FedAvg
with C = 1, z = 1, m = n). Figures are medians: over the round's devices for device work,
over `--repeats` runs of the unmasking step for the server.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cryptography  # noqa: E402
import numpy as np  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from federated.privacy import noise_stddev, privatize  # noqa: E402
from federated.secagg import (SecAggConfig, SecAggClient, SecAggServerRound, crypto,  # noqa: E402
                              flatten)
from federated.secagg.messages import MaskedInput  # noqa: E402
from federated.wire import Update, encode_update  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.evaluate import machine as machine_info  # noqa: E402


def model_shapes() -> dict[str, tuple[int, ...]]:
    """The default model's tensor names and shapes."""
    import torch
    from model.lstm import NextWordLSTM
    torch.set_num_threads(1)
    return {k: tuple(v.shape) for k, v in NextWordLSTM(ModelConfig()).state_dict().items()}


def jbytes(message) -> int:
    return len(json.dumps(message.to_dict()).encode())


def device_update(shapes, client: int, stddev: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(client)
    delta = {k: rng.normal(0, 1e-3, s).astype(np.float32) for k, s in shapes.items()}
    return privatize(delta, 1.0, stddev, rng)[0]


def run_round(n: int, degree: int | None, shapes, repeats: int) -> dict:
    stddev = noise_stddev(1.0, 1.0, n)
    d = sum(int(np.prod(s)) for s in shapes.values())
    config = SecAggConfig.create(1, n, d, clip_norm=1.0, noise_stddev=stddev, degree=degree)
    identities = {i: Ed25519PrivateKey.generate() for i in range(1, n + 1)}
    server = SecAggServerRound(config, {i: crypto.identity_bytes(key)
                                        for i, key in identities.items()})
    clients = {i: SecAggClient(config, i, identity=identities[i]) for i in range(1, n + 1)}
    sent = {i: 0 for i in clients}
    received = {i: len(json.dumps(config.to_dict())) for i in clients}
    times: dict[str, list[float]] = {"advertise": [], "share": [], "mask": [], "consistency": [],
                                     "unmask": []}

    def step(i: int, name: str, make, relay=None):
        if relay is not None:
            received[i] += jbytes(relay)
        start = time.perf_counter()
        message = make()
        times[name].append(time.perf_counter() - start)
        if isinstance(message, MaskedInput):
            blob = message.to_bytes()
            sent[i] += len(blob)
            server.receive_masked_input(i, blob)
        else:
            body = json.dumps(message.to_dict())
            sent[i] += len(body.encode())
            server.receive_json(i, body)

    for i, c in clients.items():
        step(i, "advertise", c.advertise_keys)
    relays = server.close_advertise()
    for i, c in clients.items():
        step(i, "share", lambda: c.share_keys(relays[i]), relays[i])
    relays = server.close_share_keys()
    dropped = {i for i in clients if i % 10 == 0}
    plain_sum, plain_bytes = np.zeros(d), 0
    for i, c in clients.items():
        if i in dropped:
            continue
        update = device_update(shapes, i, stddev)
        plain_bytes = len(encode_update(Update(update, 1, 1, 10)))
        vector = flatten(update, shapes)
        plain_sum += vector
        step(i, "mask", lambda: c.masked_input(relays[i], vector), relays[i])
    relays = server.close_masked_input()
    for i in relays:
        step(i, "consistency", lambda: clients[i].consistency(relays[i]), relays[i])
    relays = server.close_consistency()
    for i in relays:
        step(i, "unmask", lambda: clients[i].unmask(relays[i]), relays[i])
    unmask_times, result = [], None
    for _ in range(repeats):
        trial = copy.deepcopy(server)
        start = time.perf_counter()
        result = trial.finish()
        unmask_times.append(time.perf_counter() - start)
    survivors = [i for i in clients if i not in dropped]
    error = float(np.abs(result.total - plain_sum).max())
    return {
        "n": n, "degree": config.degree, "threshold": config.threshold, "dropped": len(dropped),
        "dimension": d, "bits": config.encoding.bits,
        "mask_s": statistics.median(times["mask"]),
        "device_total_s": sum(statistics.median(times[k]) for k in times),
        "sent_bytes": statistics.median(sent[i] for i in survivors),
        "received_bytes": statistics.median(received[i] for i in survivors),
        "plain_upload_bytes": plain_bytes,
        "upload_ratio": statistics.median(sent[i] for i in survivors) / plain_bytes,
        "server_unmask_s": statistics.median(unmask_times),
        "max_error": error, "error_bound": len(survivors) * config.encoding.step / 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", default="10:auto,50:auto,100:auto,100:10",
                        help="comma-separated n:degree (degree 'auto' = choose_degree)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    shapes = model_shapes()
    info = machine_info() | {"numpy": np.__version__, "cryptography": cryptography.__version__}
    print(json.dumps(info))
    rows = []
    for spec in args.rounds.split(","):
        n, degree = spec.split(":")
        row = run_round(int(n), None if degree == "auto" else int(degree), shapes, args.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| n | k | t | dropped | device masking (s) | device all phases (s) | sent (MB) "
          "| received (kB) | sent / plain | server unmasking (s) | max error / bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['degree']} | {r['threshold']} | {r['dropped']} | "
              f"{r['mask_s']:.3f} | {r['device_total_s']:.3f} | {r['sent_bytes'] / 1e6:.3f} | "
              f"{r['received_bytes'] / 1e3:.1f} | {r['upload_ratio']:.4f} | "
              f"{r['server_unmask_s']:.2f} | {r['max_error'] / r['error_bound']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rounds": rows}, indent=1))


if __name__ == "__main__":
    main()
