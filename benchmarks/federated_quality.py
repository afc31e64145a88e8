"""Federated figures for BENCHMARKS.md: the fleet against the central upper bound, and the
privacy-utility table with what it would take to reach epsilon <= 10.

    .venv/bin/python benchmarks/federated_quality.py [--rounds 100] [--devices-per-round 50]
        [--check-in uniform|by-data] [--max-examples M] [--clip-norm C]
        [--noise 0.1 0.3 1.0] [--dp-clip-norm C] [--dp-check-in ...] [--skip-dp] [--run-dir DIR]

(a) Federated LSTM without DP, trained only on `federated` senders (simulated phones
    through the real runtime and server) from the public pre-trained start; on `test` at
    the end beside the public pre-trained start, the central upper bound (when cached) and
    the n-gram baseline, all measured in this run.
(b) The same fleet with DP for each noise multiplier z (same rounds and devices; clip norm,
    server momentum and check-in order from the `--dp-*` flags):
    top-1 on `test` and epsilon at delta. Epsilon is the server accountant's: the device
    that took part most often, its rounds composed, no amplification by sampling, against
    the server and against model users (`aggregation_server.accounting`); beside it the
    epsilon against the server if the uniform sampling of devices is counted as Poisson
    sampling. Rounds run secure aggregation (the server's default; `--no-secure-aggregation`
    for plain rounds); the table gives each fleet's seconds per round and, for secure
    rounds, the seconds from the close of key advertisement (every device has trained) to
    the new model: the protocol's own phases and the unmasking.
(c) With the accountant (`federated.privacy.epsilon`): what population, devices per round
    and noise would reach epsilon <= 10 with less than 1 point top-1 loss, assuming (as
    McMahan et al. 2018) that utility is set by the noise in the averaged update,
    z * C / devices_per_round, at the same number of rounds.

Slow at full size (each fleet about 20-40 minutes on 2 cores): run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federated.privacy import epsilon  # noqa: E402
from fleet.config import CHECK_INS, FleetConfig  # noqa: E402
from fleet.evaluation import evaluate_split  # noqa: E402
from fleet.report import describe  # noqa: E402
from fleet.run import run_fleet  # noqa: E402
from model.checkpoint import read_metadata  # noqa: E402
from model.evaluate import machine  # noqa: E402
from model.paths import CENTRAL_MODEL, PRETRAINED_MODEL, ROOT, TOKENIZER_PATH  # noqa: E402
from model.schedule import SCHEDULES  # noqa: E402
from model.tokenizer import WordTokenizer  # noqa: E402

logging.getLogger("absl").setLevel(logging.ERROR)
TARGET_EPSILON, MAX_LOSS = 10.0, 0.01  # epsilon <= 10 with less than 1 point top-1 lost


def fleet_config(args: argparse.Namespace) -> FleetConfig:
    """The fleet of (a); the defaults start from Reddi et al. 2021's tuned Stack Overflow
    next-word setting (client SGD lr 10^-0.5, batch 16; server FedAvgM lr 1, momentum 0.9)."""
    return FleetConfig(rounds=args.rounds, devices_per_round=args.devices_per_round,
                       local_epochs=args.local_epochs, client_lr=args.client_lr,
                       client_optimizer=args.client_optimizer, batch_size=16,
                       max_examples=args.max_examples, server_optimizer=args.server_optimizer,
                       server_lr=args.server_lr, server_momentum=args.server_momentum,
                       server_lr_schedule=args.server_lr_schedule,
                       clip_norm=args.clip_norm, delta=args.delta, weighting="uniform",
                       check_in=args.check_in, eval_every=args.eval_every,
                       eval_senders=args.eval_senders, final_eval=False, workers=args.workers,
                       seed=args.seed, population=args.population,
                       max_minutes=args.max_minutes,
                       secure_aggregation=args.secure_aggregation)


def secagg_seconds(fleet_dir: Path) -> float | None:
    """The median seconds per secure round from the close of key advertisement to the new
    model (the protocol's phases after training, unmasking and aggregation), from the
    server's log; None for plain rounds."""
    advertised: dict[int, float] = {}
    spans = []
    for line in (fleet_dir / "server" / "server.log").read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "secagg_phase" and event.get("phase") == "share":
            advertised[event["round_id"]] = event["ts"]
        elif event.get("event") == "round_closed" and event.get("round_id") in advertised:
            spans.append(event["ts"] - advertised[event["round_id"]])
    return float(sorted(spans)[len(spans) // 2]) if spans else None


# --- (c) what it would take ----------------------------------------------------------------------
def delta_for(population: int, delta: float) -> float:
    """delta must stay well below 1 / population."""
    return min(delta, 1.0 / population ** 1.1)


def smallest_population(z: float, per_round: int, rounds: int, delta: float,
                        target: float = TARGET_EPSILON) -> int | None:
    """The smallest population whose Poisson sampling at rate per_round / population gives
    epsilon <= target after `rounds` rounds at noise z (None if not below 10^10)."""
    def eps(population: int) -> float:
        return epsilon(z, 0, delta_for(population, delta), sampling_rate=per_round / population,
                       rounds=rounds)
    low, high = per_round, per_round
    while eps(high) > target:
        low, high = high, high * 4
        if high > 10**10:
            return None
    while high - low > max(1, low // 200):  # to 0.5%
        mid = (low + high) // 2
        low, high = (mid, high) if eps(mid) > target else (low, mid)
    return high


def largest_cap(z: float, delta: float, target: float = TARGET_EPSILON) -> int:
    """The most rounds a device may join at noise z with epsilon <= target (no amplification)."""
    if epsilon(z, 1, delta) > target:
        return 0
    low, high = 1, 2
    while epsilon(z, high, delta) <= target:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if epsilon(z, mid, delta) <= target else (low, mid)
    return low


def requirements(sigma: float, clip_norm: float, rounds: int, delta: float, population: int,
                 zs: tuple[float, ...] = (0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)) -> dict:
    """Options that keep the averaged update's noise z*C/N at most `sigma` (the most the
    benchmark tolerated) and reach epsilon <= 10 with the accountant.

    For each z: N = ceil(z*C/sigma) devices per round; the smallest population for
    epsilon <= 10 with sampling amplification; without it, the participation cap k that
    keeps epsilon <= 10 and the population that T rounds of N devices need with such a cap.
    Also the best epsilon this corpus's `population` allows under the same noise bound.
    """
    options = []
    for z in zs:
        per_round = math.ceil(z * clip_norm / sigma)
        cap = largest_cap(z, delta)
        options.append({
            "noise_multiplier": z, "devices_per_round": per_round,
            "population_with_sampling": smallest_population(z, per_round, rounds, delta),
            "participation_cap_for_eps10": cap,
            "population_with_cap": math.ceil(rounds * per_round / cap) if cap else None})
    best = {"population_with_sampling": None}
    feasible = [o for o in options if o["population_with_sampling"]]
    if feasible:
        best = min(feasible, key=lambda o: o["population_with_sampling"])
    here = []  # this corpus: N of its `population` devices a round, z as large as sigma allows
    for per_round in sorted({max(1, population // 8), max(1, population // 4),
                             max(1, population // 2), population}):
        z = sigma * per_round / clip_norm
        here.append({"noise_multiplier": z, "devices_per_round": per_round,
                     "epsilon_with_sampling": epsilon(z, 0, delta, sampling_rate=per_round /
                                                      population, rounds=rounds)})
    return {"sigma_mean_tolerated": sigma, "clip_norm": clip_norm, "rounds": rounds,
            "target_epsilon": TARGET_EPSILON, "options": options, "best": best,
            "this_corpus": {"population": population, "options": here}}


def tolerated_sigma(rows: list[dict], baseline_top1: float, clip_norm: float,
                    per_round: int) -> tuple[float, bool]:
    """The largest averaged-update noise z*C/N among the DP runs that lost < 1 point top-1
    (True), or the smallest one tried when all lost more (False: requirements are then
    lower bounds)."""
    ok = [r["noise_multiplier"] for r in rows if baseline_top1 - r["top1"] < MAX_LOSS]
    if ok:
        return max(ok) * clip_norm / per_round, True
    return min(r["noise_multiplier"] for r in rows) * clip_norm / per_round, False


# --- printing -------------------------------------------------------------------------------------
def print_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"
              for row in rows]
    text = "\n".join(lines)
    print(text)
    return text


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def fmt_eps(x: float | None, missing: str = "no privacy guarantee (no noise)") -> str:
    return missing if x is None else f"{x:.2f}"


# --- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--devices-per-round", type=int, default=50)
    p.add_argument("--client-lr", type=float, default=0.316)
    p.add_argument("--client-optimizer", default="sgd", help="sgd | adam | adamw")
    p.add_argument("--local-epochs", type=float, default=1.0)
    p.add_argument("--max-examples", type=int, default=500,
                   help="each round a device trains on a random sample of at most M messages")
    p.add_argument("--check-in", choices=CHECK_INS, default="uniform",
                   help="check-in order of (a): uniform, or weighted by messages typed")
    p.add_argument("--dp-check-in", choices=CHECK_INS, default="uniform",
                   help="check-in order of the DP runs (uniform: what sampling assumes)")
    p.add_argument("--server-optimizer", default="fedavgm")
    p.add_argument("--server-lr", type=float, default=1.0)
    p.add_argument("--server-momentum", type=float, default=0.9)
    p.add_argument("--server-lr-schedule", choices=SCHEDULES, default="constant",
                   help="cosine: the server lr falls to 0 over --rounds")
    p.add_argument("--clip-norm", type=float, default=0.5,
                   help="clip norm of (a), and of the DP runs unless --dp-clip-norm "
                        "(median update norm ~0.4: a device with 17 messages, lr 0.316)")
    p.add_argument("--dp-clip-norm", type=float, default=None,
                   help="clip norm of the DP runs (default: --clip-norm)")
    p.add_argument("--dp-server-momentum", type=float, default=None,
                   help="server momentum of the DP runs (default: --server-momentum)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.3, 1.0],
                   help="noise multipliers of the privacy-utility table")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--secure-aggregation", action=argparse.BooleanOptionalAction, default=True,
                   help="rounds with secure aggregation (default: on, as on the server)")
    p.add_argument("--skip-dp", action="store_true", help="only (a)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="end each fleet after the round that passes this many minutes")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-senders", type=int, default=40)
    p.add_argument("--test-senders", type=int, default=0, help="0: all of test")
    p.add_argument("--population", type=int, default=None, help="default: all federated")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-model", type=Path, default=PRETRAINED_MODEL,
                   help="start model (default: the public pre-trained one); a fleet's "
                        "model.safetensors continues that run, with fresh server momentum")
    p.add_argument("--tokenizer", type=Path, default=TOKENIZER_PATH)
    p.add_argument("--central", type=Path, default=CENTRAL_MODEL,
                   help="the central upper bound (skipped if missing)")
    p.add_argument("--run-dir", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = args.run_dir or ROOT / "runs" / f"bench-federated-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, torch {info['torch']}, "
          f"load average {info['load_average_1min']}")
    base = fleet_config(args)
    print(f"fleet: {base}")
    started = time.time()

    fleets: dict[str, dict] = {}
    print("\n(a) federated, no DP")
    fleets["no-dp"] = run_fleet(base, run_dir / "fleet-no-dp", init_model=args.init_model,
                                tokenizer=args.tokenizer)
    print(describe(fleets["no-dp"]))
    dp_changes = {"clip_norm": args.dp_clip_norm or base.clip_norm, "check_in": args.dp_check_in,
                  "server_momentum": base.server_momentum if args.dp_server_momentum is None
                  else args.dp_server_momentum}
    if not args.skip_dp:
        for z in args.noise:
            print(f"\n(b) federated, DP z={z:g}")
            fleets[f"dp-z{z:g}"] = run_fleet(replace(base, noise_multiplier=z, **dp_changes),
                                             run_dir / f"fleet-dp-z{z:g}",
                                             init_model=args.init_model, tokenizer=args.tokenizer)
            print(describe(fleets[f"dp-z{z:g}"]))

    print("\nevaluation on test")
    sha = WordTokenizer.load(args.tokenizer).sha256
    start = ("LSTM, public pre-trained (start)" if args.init_model == PRETRAINED_MODEL
             else f"LSTM, start ({args.init_model})")
    models = [("n-gram (Kneser-Ney 3, public)", "ngram"), (start, str(args.init_model))]
    if args.central.is_file() and read_metadata(args.central.read_bytes()).get(
            "tokenizer_sha256") == sha:
        models.append(("LSTM, central upper bound", str(args.central)))
    else:
        print(f"(no central model with this tokenizer at {args.central}: row skipped)")
    models += [(f"LSTM, federated {name}", str(run_dir / f"fleet-{name}" / "model.safetensors"))
               for name in fleets]
    rows = evaluate_split(models, args.tokenizer, "test", args.test_senders, args.workers)
    by_name = {r["name"]: r for r in rows}

    head = ["model", "top-1", "top-3", "top-1 excl unk", "macro top-1", "KSR", "perplexity",
            "rounds x devices", f"epsilon against the server (delta {args.delta:g})",
            "against model users", "s per round", "of which secure aggregation",
            "wall time (evaluations included)"]
    lines = []
    for r in rows:
        name = r["name"].removeprefix("LSTM, federated ")
        fleet = fleets.get(name)
        extra = ["", "", "", "", "", ""]
        if fleet:
            noised = bool(fleet["noise_multiplier"])
            protocol = secagg_seconds(run_dir / f"fleet-{name}")
            fleet["secagg_seconds_median"] = protocol
            extra = [f"{fleet['rounds_run']} x {base.devices_per_round}",
                     fmt_eps(fleet["epsilon"] if noised else None)
                     + (f"; {fmt_eps(fleet['epsilon_if_sampled'], 'n/a')} if Poisson-sampled"
                        if noised else ""),
                     fmt_eps(fleet["epsilon_model_users"] if noised else None),
                     f"{fleet['round_seconds'] / max(fleet['rounds_run'], 1):.1f}",
                     "plain rounds" if protocol is None else f"{protocol:.1f}",
                     f"{fleet['wall_seconds'] / 60:.1f} min ({fleet['round_seconds'] / 60:.1f} "
                     "in rounds)"]
        lines.append([r["name"], pct(r["top1"]), pct(r["top3"]), pct(r["top1_excl_unk"]),
                      pct(r["macro_top1"]), pct(r["ksr"]), f"{r['perplexity']:.1f}", *extra])
    print(f"\ntest: {rows[0]['senders']} senders, {rows[0]['words']} words")
    table = print_table(head, lines)

    result = {"machine": info, "config": vars(args) | {"run_dir": str(run_dir)},
              "fleet": base.__dict__, "rows": rows, "fleets": fleets, "table": table}
    baseline = by_name["LSTM, federated no-dp"]["top1"]
    dp_rows = [{"noise_multiplier": f["noise_multiplier"],
                "top1": by_name[f"LSTM, federated {name}"]["top1"]}
               for name, f in fleets.items() if f["noise_multiplier"]]
    if dp_rows:
        sigma, measured = tolerated_sigma(dp_rows, baseline, dp_changes["clip_norm"],
                                          base.devices_per_round)
        needs = requirements(sigma, dp_changes["clip_norm"], base.rounds, args.delta,
                             fleets["no-dp"]["population"])
        needs["sigma_is_measured"] = measured
        result["requirements"] = needs
        print_requirements(needs)
    result["seconds"] = round(time.time() - started, 1)
    (run_dir / "benchmark.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\ntotal {result['seconds'] / 60:.1f} min; wrote {run_dir / 'benchmark.json'}")
    return 0


def print_requirements(needs: dict) -> None:
    print(f"\n(c) epsilon <= {needs['target_epsilon']:g} with < 1 point top-1 loss, by the "
          f"accountant, at {needs['rounds']} rounds and clip norm {needs['clip_norm']:g}: the "
          f"averaged update's noise z*C/N must stay at most {needs['sigma_mean_tolerated']:.2g}"
          + (" (the largest the DP runs tolerated)" if needs["sigma_is_measured"] else
             " (every DP run lost more than 1 point: this is the smallest noise tried, so the "
             "sizes below are lower bounds)"))
    print_table(["z", "devices per round", "population (Poisson sampling)",
                 "cap for eps<=10 (no amplification)", "population with that cap"],
                [[f"{o['noise_multiplier']:g}", o["devices_per_round"],
                  o["population_with_sampling"] or "> 1e10",
                  o["participation_cap_for_eps10"], o["population_with_cap"] or "-"]
                 for o in needs["options"]])
    best, here = needs["best"], needs["this_corpus"]
    if best.get("population_with_sampling"):
        print(f"smallest: {best['population_with_sampling']:,} devices, "
              f"{best['devices_per_round']:,} per round at z={best['noise_multiplier']:g}")
    print(f"this corpus has {here['population']} federated senders; at that noise in the "
          "average, Poisson sampling assumed: " +
          "; ".join(f"{o['devices_per_round']} per round (z={o['noise_multiplier']:.2g}) -> "
                    f"epsilon {o['epsilon_with_sampling']:.1f}" for o in here["options"]))


if __name__ == "__main__":
    sys.exit(main())
