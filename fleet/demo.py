"""`python -m fleet.demo` (`make demo`): the federated keyboard end to end, one run folder.

1. the first global model: the public pre-trained model shipped in model/shipped/ (with
   `--pretrain`, pre-trained now on public text by `python -m model.pretrain`);
2. a fleet of simulated phones (`federated` chat users, through the real device runtime and
   a real server with SQLite) trains it for a few minutes without differential privacy;
3. the same fleet, from the same start model, for the same rounds with differential
   privacy (a separate server);
4. a table on `test`: the n-gram baseline, the public pre-trained LSTM and both
   federated LSTMs (with epsilon and delta);
5. the personalised evaluation (docs/EVALUATION.md) of the DP federated model: each `test`
   sender with 20+ messages types the second half of them, with and without the
   personal layer learning on the device.

Leaves report.json, report.md and demo.png in runs/<time>/ (each fleet in a subfolder).
`--quick` is a smoke run of 2-3 minutes (143-159 s at load 6-9): 3 short rounds, part of `test`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

from fleet import FleetError
from fleet.config import FleetConfig
from fleet.demo_report import eps, table_rows, text_table, write_report
from fleet.evaluation import evaluate_split, personalised
from fleet.plots import plot_demo
from fleet.report import describe
from fleet.run import run_fleet
from model.paths import (PRETRAINED_DIR, PRETRAINED_MODEL, ROOT, SHIPPED_MODEL,
                         SHIPPED_TOKENIZER, TOKENIZER_PATH)


@dataclass
class DemoConfig:
    """What the demo runs; the defaults fit in 15 minutes on 2 cores."""

    rounds: int = 60                 # at most: the first fleet stops after `fleet_minutes`
    fleet_minutes: float | None = 2.75
    devices_per_round: int = 20
    max_examples: int = 200          # each round a device trains on a sample of <= 200 messages
    client_lr: float = 0.316         # Reddi et al. 2021 (Stack Overflow next word): SGD
    server_optimizer: str = "fedavgm"  # 10^-0.5 on devices, FedAvgM lr 1, momentum 0.9
    server_lr: float = 1.0
    server_momentum: float = 0.9
    clip_norm: float = 0.5           # without DP (the median update norm is about 0.3)
    noise_multiplier: float = 1.0
    dp_clip_norm: float = 0.1        # with DP: small, so that the noise does little harm
    dp_server_momentum: float = 0.0  # momentum would accumulate the noise
    delta: float = 1e-5
    secure_aggregation: bool = True  # the server's default: it learns only each round's sum
    dropout: float = 0.1
    eval_every: int = 10
    eval_senders: int = 30
    test_senders: int = 0            # 0: all of `test`
    workers: int = 2
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(rounds=3, fleet_minutes=None, devices_per_round=6, max_examples=100,
                   eval_every=3, eval_senders=8, test_senders=10)

    def fleet(self, dp: bool, rounds: int | None = None) -> FleetConfig:
        return FleetConfig(
            rounds=rounds or self.rounds, devices_per_round=self.devices_per_round,
            dropout=self.dropout, client_lr=self.client_lr, max_examples=self.max_examples,
            server_optimizer=self.server_optimizer, server_lr=self.server_lr,
            server_momentum=self.dp_server_momentum if dp else self.server_momentum,
            clip_norm=self.dp_clip_norm if dp else self.clip_norm,
            noise_multiplier=self.noise_multiplier if dp else 0.0, delta=self.delta,
            weighting="uniform", secure_aggregation=self.secure_aggregation,
            eval_every=self.eval_every, eval_senders=self.eval_senders,
            final_eval=False, workers=self.workers, seed=self.seed,
            max_minutes=self.fleet_minutes and (2 * self.fleet_minutes if dp else
                                                self.fleet_minutes))  # DP: a safety net


LEGEND = ("\ntop-1, top-3: how often the next word typed was the first, or among the three "
          "suggestions; macro: the same, averaged per sender; KSR: the share of keystrokes "
          "saved by tapping suggestions; perplexity: lower is better.")


class Stages:
    """Numbered stage lines with their durations."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.seconds = total, 0, {}
        self.started = time.time()

    def start(self, name: str) -> None:
        self.n += 1
        self.name, self.t0 = name, time.time()
        print(f"[{self.n}/{self.total}] {name} ...", flush=True)

    def done(self, note: str = "") -> None:
        self.seconds[self.name] = round(time.time() - self.t0, 1)
        print(f"      done in {self.seconds[self.name]:.0f} s{'; ' + note if note else ''}",
              flush=True)


def pretrained(pretrain: bool) -> tuple[Path, Path, str]:
    """(model, tokenizer, where from): the public pre-trained model shipped in the package,
    or with `pretrain` the one `python -m model.pretrain` trains now (unless cached)."""
    if not pretrain:
        return SHIPPED_MODEL, SHIPPED_TOKENIZER, "shipped"
    from model import pretrain as pretraining
    if pretraining.is_cached(PRETRAINED_DIR):
        return PRETRAINED_MODEL, TOKENIZER_PATH, "cached"
    code = pretraining.main(["--out-dir", str(PRETRAINED_DIR)])
    if code or not pretraining.is_cached(PRETRAINED_DIR):
        raise FleetError(f"pre-training failed (exit code {code})")
    return PRETRAINED_MODEL, TOKENIZER_PATH, "trained"


# --- main -----------------------------------------------------------------------------------------
def run_demo(config: DemoConfig, run_dir: Path, quick: bool, pretrain: bool = False) -> dict:
    from model.evaluate import machine
    stages = Stages(6)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now().isoformat(timespec="seconds")
    print(f"run folder: {run_dir}", flush=True)

    stages.start("pre-trained model (public split)")
    model, tokenizer, source = pretrained(pretrain)
    stages.done(f"{source}: {model}")

    stages.start("federated fleet without differential privacy")
    no_dp = run_fleet(config.fleet(dp=False), run_dir / "fleet-no-dp", init_model=model,
                      tokenizer=tokenizer, title="federated, no DP")
    stages.done(describe(no_dp).replace("\n", "\n      "))

    stages.start(f"the same fleet with differential privacy, {no_dp['rounds_run']} rounds")
    dp = run_fleet(config.fleet(dp=True, rounds=no_dp["rounds_run"]), run_dir / "fleet-dp",
                   init_model=model, tokenizer=tokenizer, title="federated, DP")
    stages.done(describe(dp).replace("\n", "\n      "))

    stages.start("evaluation on test")
    models = [("n-gram (Kneser-Ney 3, public)", "ngram"), ("LSTM, public pre-trained", str(model)),
              ("LSTM, federated, no DP", str(run_dir / "fleet-no-dp" / "model.safetensors")),
              ("LSTM, federated, DP", str(run_dir / "fleet-dp" / "model.safetensors"))]
    rows = evaluate_split(models, tokenizer, "test", config.test_senders, config.workers)
    stages.done()

    stages.start("personalised evaluation of the DP model on test")
    personal = personalised(run_dir / "fleet-dp" / "model.safetensors", tokenizer,
                            config.test_senders)
    stages.done(f"top-1 {100 * personal['global']['top1']:.2f}% alone, "
                f"{100 * personal['personal']['top1']:.2f}% with the personal layer (the "
                "second half of each sender's messages, so not the table's words)")

    stages.start("report")
    privacy = {models[2][0]: "no privacy guarantee (no noise)",
               models[3][0]: f"{eps(dp['epsilon'])} against the server, "
                             f"{eps(dp['epsilon_model_users'])} against model users, "
                             f"delta {config.delta:g}"}
    cells = table_rows(rows, privacy)
    rounds = no_dp["rounds_run"]
    plot_demo(_records(run_dir / "fleet-no-dp"), _records(run_dir / "fleet-dp"),
              run_dir / "demo.png",
              f"{rounds} rounds x {config.devices_per_round} devices "
              f"(population {no_dp['population']}); DP: z={config.noise_multiplier:g}, "
              f"C={config.dp_clip_norm:g}, {eps(dp['epsilon'])} against the server at delta "
              f"{config.delta:g}")
    report = {"started": started, "quick": quick, "config": asdict(config),
              "pretrained": {"model": str(model), "source": source},
              "rows": rows, "privacy": privacy,
              "test": {"senders": rows[0]["senders"], "words": rows[0]["words"]},
              "fleets": {"no_dp": no_dp, "dp": dp}, "personalised": personal,
              "stages": stages.seconds,
              "seconds": round(time.time() - stages.started, 1), "machine": machine()}
    write_report(run_dir, report, cells)
    stages.done()
    print(f"\ntest split ({rows[0]['senders']} senders, {rows[0]['words']} words"
          f"{', a subset' if config.test_senders else ''}); {rounds} rounds x "
          f"{config.devices_per_round} devices per round:\n")
    print(text_table(cells))
    print(LEGEND)
    if quick:
        print("\nA smoke run: too few rounds and senders for the differences between these "
              "rows to mean anything.")
    print(f"\ntotal {report['seconds']:.0f} s. Report: {run_dir / 'report.md'}, "
          f"{run_dir / 'report.json'}, {run_dir / 'demo.png'}")
    return report


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fleet.demo",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of 2-3 minutes: 3 short rounds, part of test")
    p.add_argument("--run-dir", type=Path, default=None, help="default: runs/<time>")
    p.add_argument("--pretrain", action="store_true",
                   help="start from a model pre-trained now by `python -m model.pretrain` "
                        "(default: the pre-trained model shipped in model/shipped/)")
    for name in ("rounds", "fleet_minutes", "devices_per_round", "noise_multiplier",
                 "dp_clip_norm", "test_senders", "workers", "seed"):
        kind = int if name in ("rounds", "devices_per_round", "test_senders", "workers",
                               "seed") else float
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"default: {getattr(DemoConfig, name)} "
                            f"({getattr(DemoConfig.quick(), name)} with --quick)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = DemoConfig.quick() if args.quick else DemoConfig()
    changes = {k: v for k, v in vars(args).items()
               if k not in ("quick", "run_dir", "pretrain") and v is not None}
    config = replace(config, **changes)
    run_dir = args.run_dir or ROOT / "runs" / f"{datetime.now():%Y%m%d-%H%M%S}"
    try:
        run_demo(config, run_dir, args.quick, args.pretrain)
    except (FleetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
