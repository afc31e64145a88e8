"""Compressed uploads (issue 17, `federated.compression`): bytes up and down per device and
round, the device's time to compress and the server's time to decode, and the quality of
the same fleets with float32 and compressed uploads, without and with noise.

    .venv/bin/python benchmarks/compression.py sizes [--repeats 7]
    .venv/bin/python benchmarks/compression.py quality --rounds 4 --devices-per-round 10 \
        --max-examples 100 [--run-dir runs/compression]
    .venv/bin/python benchmarks/compression.py kept-norms [--devices 40 --seeds 20]

`sizes`: the project's LSTM (1,554,628 parameters), a secure round of 20 reports out of 26
tasks (h = 14 honest at the default dishonest share), z = 1, C = 1. Bytes are the real
wire forms: a float32 plain update (`encode_update`), a secure round's masked input
(`MaskedInput.to_bytes`, fixed point, 32 bits unless the noise needs 64), the compressed
plain upload (the plain form: every coordinate, the full noise, requantized and deflated;
with z = 1 and without noise) and masked input; downloads: the float32 checkpoint the
server sends today and its int8 form (`/v1/models/<v>/compact`). Flower 1.42's SecAgg+ is
not installed here: its row is 64 bits per parameter (the issue's figure for its
defaults), computed, not measured. Times are medians of `--repeats` runs in one thread:
the device's flatten + clip-checked rotation, rounding and discrete Gaussian noise (a
plain upload: also the requantization and deflate, `encode_compressed_update`), the
server's centring, inverse rotation and scatter of a modular sum (a plain upload: its
checks, inflate, multiply back, inverse rotation).

`kept-norms`: how often the kept-subspace clip (`federated.compression.kept_clip_norm`)
binds on real updates, for several slacks s: `--devices` `federated` senders (never `valid`
or `test`) each train one local round of the demo's DP fleet (at most 100 messages) from the
shipped model on the device's NumPy runtime; each update, clipped to C, meets `--seeds`
round seeds; the ratio r = ||x[S]|| / (sqrt(kept / d) ||x||) binds at slack s when
r > s ||x|| / C (always r > s when the update was clipped to C, as DP updates are).

`quality`: four fleets of the demo's configuration (`fleet.demo.DemoConfig`: FedAvgM, 10%
dropout, secure rounds unless --no-secure-aggregation; with noise: z = 1, C = 0.1, no
momentum), float32 and compressed (compressed fleets also download the int8 model), each
from the shipped model with the same seeds, one after the other, then evaluated on all of
`test`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.secagg import model_shapes  # noqa: E402
from federated import privacy  # noqa: E402
from federated.compression import round_seed  # noqa: E402
from federated.secagg import FixedPoint, flatten, unflatten  # noqa: E402
from federated.secagg.messages import MaskedInput  # noqa: E402
from federated.wire import (Update, decode_compressed_update,  # noqa: E402
                           encode_compressed_update, encode_update)
from model.evaluate import machine  # noqa: E402

TARGET, CAPACITY, HONEST_SHARE = 20, 26, 1 / 3
FLOWER_BITS = 64
KEPT_SLACKS = (1.0, 1.05, 1.1, 1.15, 1.2, 1.3, 1.5)


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def download_bytes() -> dict[str, int]:
    """The shipped model as the server sends it today (float32) and in its int8 form."""
    import torch
    from model.checkpoint import model_to_bytes
    from model.compress import load_any, model_to_int8_bytes
    from model.paths import SHIPPED_MODEL
    torch.set_num_threads(1)
    model, meta = load_any(SHIPPED_MODEL)
    return {"float32": len(model_to_bytes(model, meta)),
            "int8": len(model_to_int8_bytes(model, meta))}


def sizes(repeats: int) -> dict[str, Any]:
    shapes = model_shapes()
    d = sum(int(np.prod(s)) for s in shapes.values())
    rng = np.random.default_rng(0)
    delta = {k: rng.normal(0, 1e-3, s).astype(np.float32) for k, s in shapes.items()}
    clipped, _ = privacy.clip(delta, 1.0)
    update = Update(clipped, 1, 0, 100)
    sigma_float = privacy.device_noise_stddev(1.0, 1.0, TARGET, secure=True)
    fixed = FixedPoint.choose(1.0, sigma_float, CAPACITY, d)
    seed = round_seed(1, "ab" * 32)
    secure = privacy.round_compression(seed, d, 1.0, 1.0, TARGET, CAPACITY, secure=True)
    full = privacy.round_compression(seed, d, 1.0, 1.0, TARGET, CAPACITY, secure=True,
                                     scheme="ddg16-full")
    plain = privacy.round_compression(seed, d, 1.0, 1.0, TARGET, CAPACITY, secure=False)
    sigma, _, _ = privacy.compressed_noise(secure, 1.0, TARGET, secure=True)
    sigma_plain, _, _ = privacy.compressed_noise(plain, 1.0, TARGET, secure=False)
    flat = flatten(clipped, shapes)
    words = secure.encode(flat, sigma, rng)
    noised = privacy.add_noise(clipped, sigma_float, rng)

    def plain_body(noise: float) -> bytes:
        return encode_compressed_update(update, *plain.encode_plain(
            flatten(clipped, shapes), noise, rng), seed, plain.levels)

    body, quiet = plain_body(sigma_plain), plain_body(0.0)

    def plain_decode() -> np.ndarray:
        decoded, step = decode_compressed_update(body, plain.kept, seed, plain.levels, 2 ** 62)
        return unflatten(plain.decode_integers(decoded.tensors["values"] * float(step))
                         .astype(np.float32), shapes)

    up = {
        "float32 plain update": len(encode_update(update)),
        "float32 secure masked input": len(MaskedInput(1, 1, fixed.encode(flatten(
            noised, shapes))).to_bytes()),
        "compressed plain update (z = 1)": len(body),
        "compressed plain update (no noise)": len(quiet),
        "compressed secure masked input": len(MaskedInput(1, 1, words).to_bytes()),
        "compressed ddg16-full secure masked input": len(MaskedInput(1, 1, full.encode(
            flat, privacy.compressed_noise(full, 1.0, TARGET, secure=True)[0], rng)).to_bytes()),
        f"Flower SecAgg+ reference ({FLOWER_BITS} bits/param, computed)": d * FLOWER_BITS // 8,
    }
    times = {
        "device: compress (flatten, rotate, round, noise, mod 2^16)": median_seconds(
            lambda: secure.encode(flatten(clipped, shapes), sigma, rng), repeats),
        "device: plain upload (flatten, rotate, round, noise, requantize, deflate)":
            median_seconds(lambda: plain_body(sigma_plain), repeats),
        "device: float32 fixed-point encode (today)": median_seconds(
            lambda: fixed.encode(flatten(noised, shapes)), repeats),
        "server: decode a modular sum (centre, un-rotate, scatter, unflatten)": median_seconds(
            lambda: unflatten(secure.decode_sum(words).astype(np.float32), shapes), repeats),
        "server: decode a plain upload (check, inflate, multiply, un-rotate, unflatten)":
            median_seconds(plain_decode, repeats),
        "server: float32 decode (today)": median_seconds(
            lambda: unflatten(fixed.decode(fixed.encode(flat)).astype(np.float32), shapes),
            repeats),
    }
    return {"machine": machine(), "parameters": d, "kept": secure.kept, "block": secure.block,
            "scale_secure": secure.scale, "scale_plain": plain.scale, "fixed_point_bits":
            fixed.bits, "sigma_secure": sigma, "sigma_plain": sigma_plain,
            "upload_bytes": up, "download_bytes": download_bytes(), "median_seconds": times,
            "repeats": repeats}


def print_sizes(result: dict[str, Any]) -> None:
    d = result["parameters"]
    print(json.dumps(result["machine"]))
    print(f"\n{d:,} parameters; compressed secure rounds keep {result['kept']:,} coordinates "
          f"(blocks of {result['block']:,}), 16-bit words; plain uploads every coordinate, "
          "31 levels, deflated\n")
    print("| per device and round | bytes | bits per parameter | vs float32 plain |")
    print("|---|---|---|---|")
    base = result["upload_bytes"]["float32 plain update"]
    for name, n in {**{f"up: {k}": v for k, v in result["upload_bytes"].items()},
                    **{f"down: model, {k}": v for k, v in result["download_bytes"].items()}
                    }.items():
        print(f"| {name} | {n:,} | {8 * n / d:.2f} | {n / base:.3f} |")
    print(f"\n| median of {result['repeats']} (one thread) | seconds |\n|---|---|")
    for name, s in result["median_seconds"].items():
        print(f"| {name} | {s:.3f} |")


def quality(rounds: int, devices: int, max_examples: int, run_dir: Path,
            reuse: bool = False, secure: bool = True, scheme: str = "ddg16",
            noises: tuple[bool, ...] = (False, True), seed: int = 0) -> list[dict[str, Any]]:
    from fleet.demo import DemoConfig
    from fleet.evaluation import evaluate_split
    from fleet.run import run_fleet
    from model.paths import SHIPPED_MODEL, SHIPPED_TOKENIZER
    demo = DemoConfig(rounds=rounds, fleet_minutes=None, devices_per_round=devices,
                      max_examples=max_examples, eval_every=0, secure_aggregation=secure,
                      seed=seed)
    models, fleets = [("pre-trained (shipped)", str(SHIPPED_MODEL))], {}
    for noise in noises:
        for compression in (scheme, "none"):
            name = f"{'DP' if noise else 'no DP'}, " + (
                "float32" if compression == "none" else
                "compressed" if compression == "ddg16" else f"compressed ({compression})")
            folder = run_dir / name.replace(", ", "-").replace(" ", "_")
            config = replace(demo.fleet(noise, rounds), compression=compression)
            if reuse and (folder / "summary.json").is_file():  # a fleet already run
                summary = json.loads((folder / "summary.json").read_text())
            else:
                summary = run_fleet(config, folder, init_model=SHIPPED_MODEL,
                                    tokenizer=SHIPPED_TOKENIZER, progress=False)
            fleets[name] = {"wall_seconds": summary["wall_seconds"],
                            "rounds_closed": summary["rounds_closed"],
                            "reports": summary["reports"], "epsilon": summary["epsilon"],
                            "epsilon_model_users": summary["epsilon_model_users"]}
            print(name, json.dumps(fleets[name]), flush=True)
            models.append((name, str(folder / "model.safetensors")))
    rows = evaluate_split(models, SHIPPED_TOKENIZER, "test")
    for row in rows:
        row.update(fleets.get(row["name"], {}))
    return rows


def kept_norms(devices: int, seeds: int, slacks: tuple[float, ...]) -> dict[str, Any]:
    """The kept part's norm against its expectation, on real local updates (module doc)."""
    import hashlib

    from data import load_split
    from device_model.tokenizer import DeviceTokenizer
    from federated.compression import Compression, kept_clip_norm
    from federated.protocol import TrainParams
    from fleet.demo import DemoConfig
    from keyboard_app.local_training import local_delta, sample_messages, train_config
    from model.checkpoint import model_to_bytes
    from model.compress import load_any
    from model.paths import SHIPPED_MODEL, SHIPPED_TOKENIZER
    fleet = DemoConfig(max_examples=100).fleet(True)
    params = TrainParams(fleet.local_epochs, fleet.batch_size, fleet.client_lr,
                         fleet.client_optimizer, fleet.max_examples)
    global_bytes = model_to_bytes(*load_any(SHIPPED_MODEL))
    sha = hashlib.sha256(SHIPPED_MODEL.read_bytes()).hexdigest()  # the seeds: reproducible
    tokenizer = DeviceTokenizer.load(SHIPPED_TOKENIZER)
    population = load_split("federated")
    picked = np.random.default_rng(0).choice(len(population), devices, replace=False)
    shapes, flats = model_shapes(), []
    for i, index in enumerate(sorted(picked)):
        config = train_config(params, seed=i)
        delta, _, _ = local_delta(global_bytes, tokenizer, sample_messages(
            population[index].messages, params.max_examples, i), config)
        flats.append(flatten(delta, shapes).astype(np.float64))
    d, norms = flats[0].size, [float(np.linalg.norm(x)) for x in flats]
    clips = (fleet.clip_norm, DemoConfig().clip_norm)  # the DP fleets' C, the others'
    ratios, binds = [], {(c, s): 0 for c in clips for s in slacks}
    cut = dict.fromkeys(binds, 0.0)  # the share of the kept part's norm the clip removes
    for r in range(seeds):
        spec = Compression.plan(round_seed(r + 1, sha), d, 1.0, 1.0, 26, 14)
        for x, norm in zip(flats, norms):
            share = float(np.linalg.norm(spec.selected(x / norm)))  # of a unit update
            ratios.append(share / np.sqrt(spec.kept / d))
            for c, s in binds:  # the update clipped to c: its kept part is share * min(norm, c)
                over = share * min(norm, c) / kept_clip_norm(c, d, spec.kept, s)
                binds[c, s] += over > 1
                cut[c, s] += max(0.0, 1 - 1 / over)
    pairs = len(ratios)
    return {"machine": machine(), "devices": devices, "seeds": seeds, "pairs": pairs,
            "update_norm_quantiles": np.quantile(norms, [0, .1, .5, .9, 1]).round(4).tolist(),
            "ratio_quantiles": np.quantile(ratios, [0, .01, .1, .5, .9, .99, 1]
                                           ).round(4).tolist(),
            "binds": {f"C={c:g}": {f"s={s:g}": binds[c, s] / pairs for s in slacks}
                      for c in clips},
            "mean_norm_removed": {f"C={c:g}": {f"s={s:g}": round(cut[c, s] / pairs, 6)
                                               for s in slacks} for c in clips}}


def print_quality(rows: list[dict[str, Any]]) -> None:
    print("\n| model | top-1 | top-3 | perplexity | rounds closed | epsilon (server / users) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        eps = "" if "epsilon" not in r else (
            "no noise" if r["epsilon"] is None or r["epsilon"] == float("inf")
            else f"{r['epsilon']:.2f} / {r['epsilon_model_users']:.2f}")
        print(f"| {r['name']} | {100 * r['top1']:.2f}% | {100 * r['top3']:.2f}% | "
              f"{r['perplexity']:.1f} | {r.get('rounds_closed', '')} | {eps} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sizes")
    s.add_argument("--repeats", type=int, default=7)
    k = sub.add_parser("kept-norms")
    k.add_argument("--devices", type=int, default=40)
    k.add_argument("--seeds", type=int, default=20)
    q = sub.add_parser("quality")
    q.add_argument("--rounds", type=int, default=8)
    q.add_argument("--devices-per-round", type=int, default=20)
    q.add_argument("--max-examples", type=int, default=200)
    q.add_argument("--run-dir", type=Path, default=Path("runs/compression"))
    q.add_argument("--no-secure-aggregation", dest="secure", action="store_false",
                   help="plain rounds (each device adds the full noise z*C itself)")
    q.add_argument("--scheme", choices=("ddg16", "ddg16-full"), default="ddg16")
    q.add_argument("--noise", choices=("both", "dp", "none"), default="both",
                   help="which fleets: with and without noise, or one of them")
    q.add_argument("--seed", type=int, default=0,
                   help="the fleets' seed (who checks in, dropout, training, noise)")
    q.add_argument("--reuse", action="store_true",
                   help="keep the fleets already run in --run-dir; run only the others")
    args = p.parse_args(argv)
    if args.what == "sizes":
        result = sizes(args.repeats)
        print_sizes(result)
        return 0
    if args.what == "kept-norms":
        print(json.dumps(kept_norms(args.devices, args.seeds, KEPT_SLACKS), indent=1))
        return 0
    args.run_dir.mkdir(parents=True, exist_ok=True)
    print(json.dumps(machine()), flush=True)
    noises = {"both": (False, True), "dp": (True,), "none": (False,)}[args.noise]
    rows = quality(args.rounds, args.devices_per_round, args.max_examples, args.run_dir,
                   args.reuse, args.secure, args.scheme, noises, args.seed)
    (args.run_dir / "quality.json").write_text(json.dumps(rows, indent=1))
    print_quality(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
