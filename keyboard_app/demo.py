"""`python -m keyboard_app.demo` (`make demo`): the federated keyboard end to end, one run folder.

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
`--quick` is a smoke run of about a minute: 3 short rounds, part of `test`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

from federated.privacy import device_noise_stddev
from keyboard_app.simulate import (FleetConfig, FleetError, describe, evaluate_split, run_fleet,
                                   save_figure)
from model.paths import (PRETRAINED_DIR, PRETRAINED_MODEL, ROOT, SHIPPED_MODEL,
                         SHIPPED_TOKENIZER, TOKENIZER_PATH)
from model.personal_eval import markdown


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
                   eval_every=3, eval_senders=5, test_senders=10)

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


# --- the report -----------------------------------------------------------------------------------
def table_rows(rows: list[dict], privacy: dict[str, str]) -> list[list[str]]:
    head = ["model", "top-1", "top-3", "macro top-1", "KSR", "perplexity", "privacy"]
    out = [head]
    for r in rows:
        out.append([r["name"], f"{r['top1']:.2%}", f"{r['top3']:.2%}", f"{r['macro_top1']:.2%}",
                    f"{r['ksr']:.2%}", f"{r['perplexity']:.1f}", privacy.get(r["name"], "")])
    return out


def text_table(cells: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, len(row) - 1) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))) for row in cells)


def markdown_table(cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells[1:]])


def plot(no_dp: list[dict], dp: list[dict], path: Path, title: str) -> None:
    """valid top-1 and perplexity of both fleets against rounds; epsilon of the DP fleet."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (acc, ppl, eps) = plt.subplots(1, 3, figsize=(15, 4.2))
    for records, label in ((no_dp, "federated, no DP"), (dp, "federated, DP")):
        evaluated = [r for r in records if r.get("valid")]
        rounds = [r["round"] for r in evaluated]
        acc.plot(rounds, [100 * r["valid"]["top1"] for r in evaluated], marker="o", label=label)
        ppl.plot(rounds, [r["valid"]["perplexity"] for r in evaluated], marker="o", label=label)
    acc.set(xlabel="round", ylabel="top-1 (%)", title="top-1 on valid (subset)")
    ppl.set(xlabel="round", ylabel="perplexity", title="perplexity on valid (subset)")
    acc.legend()
    points = [(r["round"], r["epsilon"]) for r in dp if r.get("epsilon") is not None]
    if points:
        eps.plot(*zip(*points), marker=".", color="tab:red")
    eps.set(xlabel="round", ylabel=f"epsilon (delta = {dp[0]['delta']:g})",
            title="privacy spent by the DP fleet (most any device)")
    save_figure(fig, (acc, ppl, eps), title, path)


def write_report(run_dir: Path, report: dict, cells: list[list[str]]) -> None:
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    no_dp, dp = report["fleets"]["no_dp"], report["fleets"]["dp"]
    cfg = report["config"]
    n, share = cfg["devices_per_round"], dp["privacy"]["dishonest_share"]
    per_device = device_noise_stddev(cfg["dp_clip_norm"], cfg["noise_multiplier"], n,
                                     secure=cfg["secure_aggregation"], dishonest_share=share)
    sigma = per_device * n ** 0.5 / n  # the noise of the round's average, per weight
    params = dp["num_params"]
    lines = [
        f"# Federated keyboard demo ({report['started']})", "",
        f"Test split: {report['test']['senders']} senders, {report['test']['words']} words"
        + (" (a subset: quick run)" if cfg["test_senders"] else "") + ".", "",
        markdown_table(cells), "",
        f"- Fleets: {no_dp['rounds_run']} rounds"
        + (f" (DP fleet: {dp['rounds_run']}, stopped by its time limit)"
           if dp["rounds_run"] != no_dp["rounds_run"] else "")
        + f" of {cfg['devices_per_round']} devices out of "
        f"{no_dp['population']} `federated` senders, dropout {cfg['dropout']}, each device "
        f"training on a random sample of at most {cfg['max_examples']} messages, local SGD lr "
        f"{cfg['client_lr']}; server {cfg['server_optimizer']} lr {cfg['server_lr']} "
        f"(momentum {cfg['server_momentum']} without DP, {cfg['dp_server_momentum']} with DP).",
        f"- Rounds {'with' if cfg['secure_aggregation'] else 'without'} secure aggregation. "
        f"DP: every update clipped to L2 norm {cfg['dp_clip_norm']} (without DP: "
        f"{cfg['clip_norm']}) and noised on the device with standard deviation "
        f"{per_device:.3g} per weight, sized so that the honest reports of a round carry "
        f"noise multiplier z = {cfg['noise_multiplier']} even when {share:.0%} of them come "
        "from devices that add none. Privacy spent by the device that took part most often "
        "(the server's accountant, its rounds composed, no amplification by sampling): "
        f"{_eps(dp['epsilon'])} against the server, {_eps(dp['epsilon_model_users'])} against "
        f"model users, at delta {cfg['delta']:g} ("
        + ("secure rounds: the server sees only the sum, so both are the same; "
           if cfg["secure_aggregation"] else
           "plain rounds: the server sees each update with only its own noise; ")
        + "assumed: an honest-but-curious server that follows the protocol, and at most "
        f"{share:.0%} of a round's reports from devices adding no noise; "
        f"{_eps(dp['epsilon_if_sampled'])} against the server if the uniform sampling of "
        "devices were counted as Poisson sampling).",
        f"- The noise in each DP round's average has standard deviation {sigma:.2g} "
        f"in each of the model's {params:,} weights (norm {sigma * params ** 0.5:.2g}), "
        f"against an average update of norm at most C = {cfg['dp_clip_norm']}: with "
        f"{cfg['devices_per_round']} devices per round out of {no_dp['population']}, "
        "differential privacy at this epsilon can add little. `benchmarks/federated_quality.py` "
        "computes with the accountant what population would reach epsilon <= 10 with less "
        "than 1 point of top-1 lost.",
        f"- Stages (seconds): {json.dumps(report['stages'])}; total {report['seconds']:.0f} s "
        f"on {report['machine']['nproc']} cores ({report['machine']['cpu']}).", "",
        "![valid accuracy and epsilon](demo.png)", "",
        "## The DP model for one person, with the personal layer", "",
        "`test` senders with 20+ messages type the second half of their messages, the "
        "personal layer having learned the first half and learning each message after it is "
        "sent (docs/EVALUATION.md, \"Personalised evaluation\").", "",
        markdown(report["personalised"]), ""]
    (run_dir / "report.md").write_text("\n".join(lines))


def personalised(model: Path, tokenizer: Path, max_senders: int) -> dict:
    """The personalised evaluation of `model` on `test` (the first `max_senders` if > 0)."""
    from data import load_split
    from model.checkpoint import load_checkpoint
    from model.personal import PersonalWeights
    from model.personal_eval import MIN_MESSAGES, evaluate_personalised
    from model.predictor import LSTMScorer
    from model.tokenizer import WordTokenizer
    words = WordTokenizer.load(tokenizer)
    lstm, _ = load_checkpoint(model, words.sha256)
    devices = [d for d in load_split("test")
               if len(d.messages) >= MIN_MESSAGES][:max_senders or None]
    result = evaluate_personalised(LSTMScorer(lstm), words, devices, [PersonalWeights()])
    summary = result.summary(0)
    summary.pop("per_sender_top1_gain")
    return summary


def _eps(value: float | None) -> str:
    return "no privacy guarantee (no noise)" if value is None else f"epsilon {value:.2f}"


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
                   init_model=model, tokenizer=tokenizer, title="federated, DP",
                   start_valid=no_dp["start_valid"])  # same start model, same senders
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
                f"{100 * personal['personal']['top1']:.2f}% with the personal layer")

    stages.start("report")
    privacy = {models[2][0]: "no privacy guarantee (no noise)",
               models[3][0]: f"{_eps(dp['epsilon'])} against the server, "
                             f"{_eps(dp['epsilon_model_users'])} against model users, "
                             f"delta {config.delta:g}"}
    cells = table_rows(rows, privacy)
    rounds = no_dp["rounds_run"]
    plot(_records(run_dir / "fleet-no-dp"), _records(run_dir / "fleet-dp"), run_dir / "demo.png",
         f"{rounds} rounds x {config.devices_per_round} devices "
         f"(population {no_dp['population']}); DP: z={config.noise_multiplier:g}, "
         f"C={config.dp_clip_norm:g}, {_eps(dp['epsilon'])} against the server at delta "
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
    print(f"\ntotal {report['seconds']:.0f} s. Report: {run_dir / 'report.md'}, "
          f"{run_dir / 'report.json'}, {run_dir / 'demo.png'}")
    return report


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m keyboard_app.demo",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of about a minute: 3 short rounds, part of test")
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
