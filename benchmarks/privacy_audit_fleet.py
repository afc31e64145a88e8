"""The privacy audit through the real fleet (issue 13), for BENCHMARKS.md.

    .venv/bin/python benchmarks/privacy_audit_fleet.py [--rounds 24] [--devices-per-round 25]
        [--population 100] [--sigma-means 0 0.0016 0.005] [--direction-canaries 16]
        [--run-dir DIR]

1. Canary exposure (Carlini et al. 2019): canaries "my secret code is w1 w2 w3" go into
   chosen simulated devices' histories, 1, 4 and 16 copies on one device, and 4 and 16
   spread over four devices, beside never-inserted canaries. Setups: central fine-tuning of
   the start model on the pooled histories (the control), and fleets (real device
   runtime, real HTTP, real server) with clipping only and with noise. Exposure by rank
   among `--fillings` random secrets, and the suggestion strip (does typing the prefix,
   then each secret word, suggest the next secret word among the three?).
2. One-run empirical epsilon (Andrew et al. 2024): `--direction-canaries` extra devices
   in every fleet send a fixed random direction of norm C instead of training; from the
   final model delta, cosines of the inserted against `--held-out-directions` never-sent
   directions -> Gaussians -> epsilon, beside the accountant's epsilon for that run.
3. Utility at the noise of large cohorts (an extrapolation, McMahan et al. 2018): each
   fleet's noise is given as `sigma_mean`, the noise per coordinate of the round's
   average; `privacy_audit.planner` says which cohorts, populations and epsilons carry
   that noise. Top-1 on `test` of every fleet against the fleet without noise.

Writes audit.json, audit.md and exposure.png into the run folder. Runs of the same seed
(same population and canaries) made separately are merged with
`benchmarks/privacy_audit_fleet.py --report RUN_DIR... --out DIR`; a fleet is measured
again at an earlier round with `--remeasure FLEET_DIR ROUND OUT_DIR`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from federated import privacy  # noqa: E402
from federated.wire import tensors_from_bytes  # noqa: E402
from fleet.config import FleetConfig  # noqa: E402
from fleet.evaluation import evaluate_split  # noqa: E402
from fleet.population import choose_population  # noqa: E402
from fleet.run import run_fleet  # noqa: E402
from model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from model.evaluate import machine  # noqa: E402
from model.paths import PRETRAINED_MODEL, ROOT, TOKENIZER_PATH  # noqa: E402
from model.predictor import Predictor  # noqa: E402
from model.tokenizer import WordTokenizer  # noqa: E402
from model.train import TrainConfig, train  # noqa: E402
from privacy_audit import canaries as audit  # noqa: E402
from privacy_audit import empirical, planner  # noqa: E402

logging.getLogger("absl").setLevel(logging.ERROR)
LAYOUT = ((1, 1), (4, 1), (4, 4), (16, 1), (16, 4))  # (copies, devices)


def column(copies: int, devices: int) -> str:
    return f"{copies}x, {'1 device' if devices == 1 else f'{devices} devices'}"


# --- set-up -------------------------------------------------------------------------------------
def plan_canaries(args: argparse.Namespace, tokenizer: WordTokenizer, population: list
                  ) -> tuple[list[audit.Canary], list[str]]:
    """Canaries on devices whose every message fits in a round's sample."""
    rng = np.random.default_rng([args.seed, 13])
    fits = [d.sender for d in population if 20 <= len(d.messages) <= args.max_examples - 20]
    needed = args.canaries_per_cell * sum(n for _, n in LAYOUT)
    if len(fits) < needed:
        raise SystemExit(f"error: only {len(fits)} devices with 20..{args.max_examples - 20} "
                         f"messages, {needed} needed: raise --population")
    hosts = list(rng.permutation(fits)[:needed])
    layout = []
    for copies, devices in LAYOUT:
        for i in range(args.canaries_per_cell):
            layout.append((f"{column(copies, devices)} #{i + 1}", copies,
                           [hosts.pop() for _ in range(devices)]))
    candidates = audit.candidate_words(tokenizer, skip=100, count=args.candidates)
    return (audit.make_canaries(candidates, layout, args.held_out_canaries, args.secret_length,
                                rng), candidates)


def fleet_noise_multiplier(config: FleetConfig, sigma_mean: float) -> float:
    """The fleet's noise multiplier z whose round average of `devices_per_round` reports
    carries `sigma_mean` per coordinate, with the noise devices size themselves
    (`federated.privacy.device_noise_stddev`: z*C in plain rounds, z*C/sqrt(h) in secure
    ones)."""
    if sigma_mean <= 0:
        return 0.0
    n = config.devices_per_round
    per_z = privacy.device_noise_stddev(config.clip_norm, 1.0, min(config.reports_needed, n),
                                        secure=config.secure_aggregation)
    return sigma_mean * n / (math.sqrt(n) * per_z)


# --- measurements -------------------------------------------------------------------------------
def measure(name: str, model_path: Path, start: dict, tokenizer: WordTokenizer,
            canaries: list[audit.Canary], candidates: list[str], args: argparse.Namespace,
            direction_seeds: list[int]) -> dict:
    """Exposure, suggestion strip and (for fleets) the direction canaries' cosines."""
    model, _ = load_checkpoint(model_path, tokenizer.sha256)
    exposure = audit.exposures(model, tokenizer, canaries, candidates, args.fillings,
                               np.random.default_rng([args.seed, 7]))
    predictor = Predictor(model, tokenizer)
    strip = [audit.suggestion_check(predictor, c) for c in canaries]
    out = {"setup": name, "model": str(model_path), "exposures": audit.as_rows(exposure),
           "suggestions": strip}
    if direction_seeds:
        final, _ = tensors_from_bytes(model_path.read_bytes())
        delta = {k: final[k] - start[k] for k in start}
        held = list(range(10_000, 10_000 + args.held_out_directions))
        inserted, held_out = empirical.cosines(delta, direction_seeds), empirical.cosines(
            delta, held)
        out["directions"] = {"inserted": inserted.tolist(), "held_out": held_out.tolist(),
                             **empirical.empirical_epsilon(inserted, held_out, args.delta,
                                                           sum(v.size for v in delta.values()))}
    return out


def accountant(fleet_dir: Path, summary: dict, direction_index: list[int], delta: float
               ) -> dict:
    """The accountant's epsilon for the direction canaries of this run: each round one
    Gaussian mechanism whose noise is the sum's (every report carries the device's noise,
    as in the simulation; the noise each device added is read from its state), composed
    over the canary's own participations (the most of any canary)."""
    states = []
    for index in direction_index:
        path = fleet_dir / "devices" / f"{index:04d}" / "state.json"
        states.append(json.loads(path.read_text()) if path.is_file() else {})
    joined = [s.get("rounds_joined", 0) for s in states]
    stddev = max((s.get("noise_stddev") or 0.0) for s in states)
    clip = summary["config"]["clip_norm"]
    reports = summary["config"]["devices_per_round"]
    z_sum = stddev * math.sqrt(reports) / clip
    return {"participations": joined, "device_noise_stddev": stddev,
            "noise_multiplier_of_sum": z_sum,
            "sigma_mean": stddev * math.sqrt(reports) / reports,
            "epsilon": privacy.composed_epsilon([z_sum] * max(joined), delta),
            "epsilon_median_canary": privacy.composed_epsilon(
                [z_sum] * int(np.median(joined)), delta),
            "server_epsilon": summary.get("epsilon"), "delta": delta}


def central_control(args: argparse.Namespace, population: list, tokenizer: WordTokenizer,
                    run_dir: Path) -> Path:
    """The start model fine-tuned on the pooled histories (canaries included)."""
    model, meta = load_checkpoint(args.init_model, tokenizer.sha256)
    messages = [m for d in population for m in d.messages]
    config = TrainConfig(epochs=args.central_epochs, batch_size=32, lr=args.central_lr,
                         optimizer="adam", seed=args.seed, threads=args.workers)
    started = time.time()
    result = train(model, tokenizer.encode_messages(messages), config,
                   pad_id=tokenizer.pad_id, progress=False)
    path = run_dir / "central" / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dataclasses.replace(meta, training={"audit": "central control", **config.to_dict(),
                                        "messages": len(messages),
                                        "seconds": round(time.time() - started, 1),
                                        "loss": result.mean_loss})
    save_checkpoint(path, model, meta)
    return path


# --- reporting ----------------------------------------------------------------------------------
def exposure_table(results: list[dict], canaries: list[audit.Canary]) -> str:
    cols = [column(c, d) for c, d in LAYOUT]
    head = ["setup", "sigma_mean", *cols, "never inserted (mean / max)",
            "secret words suggested (inserted)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        by = {}
        for e in r["exposures"]:
            by.setdefault(e["name"].split(" #")[0] if e["copies"] else "held", []).append(
                e["exposure"])
        held = by.get("held", [])
        strip = [s for s in r["suggestions"] if s["copies"]]
        cells = [" / ".join(f"{v:.1f}" for v in by.get(c, [])) for c in cols]
        sigma = r.get("sigma_mean")
        lines.append("| " + " | ".join([
            r["setup"], "-" if sigma is None else f"{sigma:.2g}", *cells,
            f"{np.mean(held):.1f} / {max(held):.1f}",
            f"{sum(s['words_suggested'] for s in strip)} of "
            f"{sum(s['length'] for s in strip)}"]) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fleets = [r for r in results if r.get("sigma_mean") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [max(r["sigma_mean"], 1e-5) for r in fleets]
    for copies, devices in LAYOUT:
        name = column(copies, devices)
        ys = [np.mean([e["exposure"] for e in r["exposures"] if e["name"].startswith(name)])
              for r in fleets]
        ax.plot(xs, ys, marker="o", label=name)
    ax.plot(xs, [np.mean([e["exposure"] for e in r["exposures"] if not e["copies"]])
                 for r in fleets], "k--", marker="x", label="never inserted")
    central = [r for r in results if r.get("sigma_mean") is None]
    if central:
        ax.axhline(np.mean([e["exposure"] for e in central[0]["exposures"] if e["copies"] == 16]),
                   color="grey", ls=":", label="central control, 16x (mean)")
    ax.set_xscale("log")
    ax.set(xlabel="noise per coordinate of the round's average (1e-5 = clipping only)",
           ylabel="exposure (bits)", title="canary exposure against noise")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def large_cohort_levels(rounds: int, clip_norm: float) -> list[dict]:
    """sigma_mean of rounds of 1,000 and 5,000 devices at the z the accountant needs for
    epsilon <= 10 and <= 2 over `rounds`, populations 10^5 and 10^6 (delta 1/(10 N))."""
    rows = []
    for population in (10**5, 10**6):
        for cohort in (1000, 5000):
            for target in (10.0, 2.0):
                p = planner.plan(planner.Setting(population, cohort, rounds,
                                                 0.1 / population, target, clip_norm))
                plain, sampled = p.options
                rows.append({"population": population, "cohort": cohort,
                             "target_epsilon": target, "delta": 0.1 / population,
                             "cap": p.setting.cap, "z": plain.noise_multiplier,
                             "sigma_mean": plain.sigma_mean,
                             "z_if_sampled": sampled.noise_multiplier,
                             "sigma_mean_if_sampled": sampled.sigma_mean})
    return rows


def epsilon_table(results: list[dict]) -> str:
    lines = ["| setup | sigma_mean | z of the sum | canary participations (min-max) | "
             "inserted cosine mean / std | held-out std (null 1/sqrt(d)) | empirical epsilon "
             "(Gaussian fit) | empirical epsilon (mean shift) | accountant epsilon (most / "
             "median canary) | server's epsilon |", "|" + "---|" * 10]
    for r in results:
        d, a = r.get("directions"), r.get("accountant")
        if not d:
            continue
        joined = a["participations"]
        server = a.get("server_epsilon")
        lines.append(
            f"| {r['setup']} | {r['sigma_mean']:.2g} | {a['noise_multiplier_of_sum']:.3g} | "
            f"{min(joined)}-{max(joined)} | {d['inserted_mean']:.2e} / {d['inserted_std']:.2e} "
            f"| {d['held_out_std']:.2e} ({d['null_std']:.2e}) | {d['epsilon']:.3g} | "
            f"{d['epsilon_mean_shift']:.3g} | {a['epsilon']:.3g} / "
            f"{a.get('epsilon_median_canary', float('nan')):.3g} | "
            f"{'-' if server is None else f'{server:.3g}'} |")
    return "\n".join(lines)


def utility_table(results: list[dict], tests: list[dict], large: list[dict]) -> str:
    """Top-1 on test of each fleet against the fleet without noise, and which large-cohort
    settings carry about that noise in their average (the extrapolation)."""
    by_name = {t["name"]: t for t in tests}
    base = by_name.get("fleet, clipping only")
    lines = ["| fleet (25 devices a round) | sigma_mean | top-1 (test) | top-3 | perplexity | "
             "change in top-1 | large cohorts whose average carries about this noise "
             "(no amplification) |", "|" + "---|" * 7]
    for r in results:
        t = by_name.get(r["setup"])
        if not t or r.get("sigma_mean") is None:
            continue
        near = [f"{x['cohort']:,} of {x['population']:.0e}, eps<={x['target_epsilon']:g} "
                f"(z={x['z']:.2f}, {x['sigma_mean']:.2g})" for x in large
                if r["sigma_mean"] and abs(math.log(x["sigma_mean"] / r["sigma_mean"])) < 0.25]
        change = "" if base is None else f"{100 * (t['top1'] - base['top1']):+.2f}"
        lines.append(f"| {r['setup']} | {r['sigma_mean']:.2g} | {100 * t['top1']:.2f}% | "
                     f"{100 * t['top3']:.2f}% | {t['perplexity']:.1f} | {change} | "
                     f"{'; '.join(near) or '-'} |")
    if "start" in by_name:
        t = by_name["start"]
        lines.append(f"| start model (public pre-trained) | - | {100 * t['top1']:.2f}% | "
                     f"{100 * t['top3']:.2f}% | {t['perplexity']:.1f} | | |")
    return "\n".join(lines)


def remeasure(fleet_dir: Path, version: int, out: Path, args: argparse.Namespace) -> int:
    """Measure a fleet of this script at an earlier model version (its server keeps them):
    exposure, suggestions and direction cosines of `models/<version>`, the accountant over
    the rounds up to it. Writes `out/audit.json` for `--report`."""
    source = json.loads((fleet_dir.parent / "audit.json").read_text())
    summary = json.loads((fleet_dir / "summary.json").read_text())
    tokenizer = WordTokenizer.load(args.tokenizer)
    canaries = [audit.Canary(**{**c, "secret": tuple(c["secret"]),
                                "devices": tuple(c["devices"])}) for c in source["canaries"]]
    candidates = audit.candidate_words(tokenizer, skip=100, count=args.candidates)
    seeds = list(range(args.direction_canaries))
    start, _ = tensors_from_bytes(Path(args.init_model).read_bytes())
    model = fleet_dir / "server" / "models" / f"{version:06d}.safetensors"
    name = next(r["setup"] for r in source["results"] if r.get("directions"))
    row = measure(f"{name}, at round {version}", model, start, tokenizer, canaries,
                  candidates, args, seeds)
    first = summary["population"] - len(seeds)
    rounds = [json.loads(x) for x in (fleet_dir / "rounds.jsonl").read_text().splitlines()]
    joined = [sum(first + i in r.get("checked_in", []) and r.get("outcomes") == {
        "uploaded": r["reports"]} for r in rounds if 0 < r["round"] <= version)
        for i in range(len(seeds))]
    full = accountant(fleet_dir, summary, list(range(first, first + len(seeds))), args.delta)
    z_sum = full["noise_multiplier_of_sum"]
    row["accountant"] = {**full, "participations": joined, "server_epsilon": None,
                         "epsilon": privacy.composed_epsilon([z_sum] * max(joined), args.delta),
                         "epsilon_median_canary": privacy.composed_epsilon(
                             [z_sum] * int(np.median(joined)), args.delta)}
    row["sigma_mean"] = full["sigma_mean"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(
        {**{k: source[k] for k in ("canaries", "large_cohorts", "args")},
         "machine": machine(), "results": [row]}, indent=2, default=str) + "\n")
    print(exposure_table([row], canaries))
    return 0


def merge_reports(run_dirs: list[Path], out: Path | None) -> int:
    """Merge run folders of this script (same seed and canaries) into the three tables
    and the plot."""
    reports = [json.loads((Path(d) / "audit.json").read_text()) for d in run_dirs]
    canaries = [audit.Canary(**{**c, "secret": tuple(c["secret"]),
                                "devices": tuple(c["devices"])})
                for c in reports[0]["canaries"]]
    if any(r["canaries"] != reports[0]["canaries"] for r in reports):
        raise SystemExit("error: the run folders have different canaries (seed or population)")
    results = sorted((x for r in reports for x in r["results"]),
                     key=lambda x: -1 if x.get("sigma_mean") is None else x["sigma_mean"])
    tests = [t for r in reports for t in r.get("test", [])]
    text = "\n\n".join([exposure_table(results, canaries), epsilon_table(results),
                         utility_table(results, tests, reports[0]["large_cohorts"])])
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        plot(results, out / "exposure.png")
        (out / "audit.md").write_text(text + "\n")
        print(f"wrote {out}/audit.md and exposure.png")
    return 0


# --- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=24)
    p.add_argument("--devices-per-round", type=int, default=25)
    p.add_argument("--population", type=int, default=100, help="federated senders in the fleet")
    p.add_argument("--max-examples", type=int, default=256)
    p.add_argument("--client-lr", type=float, default=0.316)
    p.add_argument("--clip-norm", type=float, default=0.5)
    p.add_argument("--sigma-means", type=float, nargs="*", default=[0.0, 0.0016, 0.005],
                   help="one fleet per noise per coordinate of the round's average (0: "
                        "clipping only)")
    p.add_argument("--direction-canaries", type=int, default=16)
    p.add_argument("--held-out-directions", type=int, default=200)
    p.add_argument("--canaries-per-cell", type=int, default=2)
    p.add_argument("--held-out-canaries", type=int, default=10)
    p.add_argument("--secret-length", type=int, default=3)
    p.add_argument("--candidates", type=int, default=2000)
    p.add_argument("--fillings", type=int, default=10_000)
    p.add_argument("--central-epochs", type=float, default=2.0)
    p.add_argument("--central-lr", type=float, default=1e-3)
    p.add_argument("--skip-central", action="store_true")
    p.add_argument("--skip-test", action="store_true", help="no evaluation on test")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-model", type=Path, default=PRETRAINED_MODEL)
    p.add_argument("--tokenizer", type=Path, default=TOKENIZER_PATH)
    p.add_argument("--run-dir", type=Path, default=None)
    return p.parse_args(argv)


def base_config(args: argparse.Namespace) -> FleetConfig:
    return FleetConfig(rounds=args.rounds, devices_per_round=args.devices_per_round,
                       client_lr=args.client_lr, batch_size=16, max_examples=args.max_examples,
                       server_optimizer="fedavgm", server_lr=1.0, server_momentum=0.9,
                       clip_norm=args.clip_norm, delta=args.delta, weighting="uniform",
                       check_in="uniform", eval_every=0, final_eval=False,
                       secure_aggregation=False,  # the same sum, devices in processes: faster
                       workers=args.workers, seed=args.seed, population=args.population)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--report"]:
        # --report RUN_DIR... [--out DIR]: merge finished runs into the tables and the plot
        rest = sys.argv[2:]
        out = Path(rest[rest.index("--out") + 1]) if "--out" in rest else None
        dirs = [Path(x) for x in rest if x != "--out" and Path(x) != out]
        return merge_reports(dirs, out)
    if argv is None and sys.argv[1:2] == ["--remeasure"]:
        # --remeasure FLEET_DIR VERSION OUT_DIR [flags of the run]
        fleet, version, out = Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
        return remeasure(fleet, version, out, parse_args(sys.argv[5:]))
    args = parse_args(argv)
    run_dir = args.run_dir or ROOT / "runs" / f"audit-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.workers)
    tokenizer = WordTokenizer.load(args.tokenizer)
    base = base_config(args)
    population = choose_population(base)
    canaries, candidates = plan_canaries(args, tokenizer, population)
    extra = audit.insertions(canaries)
    seeds = list(range(args.direction_canaries))
    start, _ = tensors_from_bytes(Path(args.init_model).read_bytes())
    report: dict = {"machine": machine(), "args": vars(args) | {"run_dir": str(run_dir)},
                    "canaries": [asdict(c) for c in canaries], "results": [],
                    "large_cohorts": large_cohort_levels(args.rounds, args.clip_norm)}
    save = lambda: (run_dir / "audit.json").write_text(  # noqa: E731
        json.dumps(report, indent=2, default=str) + "\n")
    save()
    print(f"machine load {report['machine']['load_average_1min']}; {len(canaries)} canaries "
          f"on {len(extra)} devices; run folder {run_dir}", flush=True)
    started = time.time()
    if not args.skip_central:
        from fleet.population import with_audit_devices
        pooled = with_audit_devices(population, extra, [], args.seed)
        path = central_control(args, pooled, tokenizer, run_dir)
        row = measure("central fine-tuning (control)", path, start, tokenizer, canaries,
                      candidates, args, [])
        row["minutes"] = round((time.time() - started) / 60, 1)
        report["results"].append(row)
        save()
        print(exposure_table(report["results"], canaries), flush=True)
    for sigma in args.sigma_means:
        name = "fleet, clipping only" if sigma == 0 else f"fleet, DP sigma_mean {sigma:g}"
        config = replace(base, noise_multiplier=fleet_noise_multiplier(base, sigma))
        fleet_dir = run_dir / (f"fleet-sigma{sigma:g}")
        t0 = time.time()
        summary = run_fleet(config, fleet_dir, init_model=args.init_model,
                            tokenizer=args.tokenizer, extra_messages=extra,
                            direction_seeds=seeds, progress=False, title=name)
        row = measure(name, fleet_dir / "model.safetensors", start, tokenizer, canaries,
                      candidates, args, seeds)
        index = list(range(summary["population"] - len(seeds), summary["population"]))
        row["accountant"] = accountant(fleet_dir, summary, index, args.delta)
        row["sigma_mean"] = row["accountant"]["sigma_mean"]
        row["fleet_noise_multiplier"] = config.noise_multiplier
        row["minutes"] = round((time.time() - t0) / 60, 1)
        row["rounds_run"], row["round_seconds"] = summary["rounds_run"], summary["round_seconds"]
        report["results"].append(row)
        save()
        d = row["directions"]
        print(f"{name}: {row['minutes']} min; empirical epsilon {d['epsilon']:.3g} "
              f"(accountant {row['accountant']['epsilon']:.3g})", flush=True)
        print(exposure_table(report["results"], canaries), flush=True)
        plot(report["results"], run_dir / "exposure.png")
    if not args.skip_test:
        models = [("start", str(args.init_model))] + [(r["setup"], r["model"])
                                                      for r in report["results"]]
        report["test"] = evaluate_split(models, args.tokenizer, "test", 0, args.workers)
        save()
    (run_dir / "audit.md").write_text(exposure_table(report["results"], canaries) + "\n")
    report["seconds"] = round(time.time() - started, 1)
    save()
    print(f"done in {report['seconds'] / 60:.1f} min; wrote {run_dir}/audit.json, audit.md, "
          "exposure.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
