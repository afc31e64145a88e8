"""The demo's report: the table on `test` (text and Markdown), report.json and report.md."""
from __future__ import annotations

import json
from pathlib import Path

from federated.privacy import device_noise_stddev
from fleet.report import agreement_lines
from model.personal_eval import markdown


def table_rows(rows: list[dict], privacy: dict[str, str]) -> list[list[str]]:
    """The table's cells: a header, then one row per model."""
    head = ["model", "top-1", "top-3", "macro top-1", "KSR", "perplexity", "privacy"]
    out = [head]
    for r in rows:
        out.append([r["name"], f"{r['top1']:.2%}", f"{r['top3']:.2%}", f"{r['macro_top1']:.2%}",
                    f"{r['ksr']:.2%}", f"{r['perplexity']:.1f}", privacy.get(r["name"], "")])
    return out


def text_table(cells: list[list[str]]) -> str:
    """The table as aligned text (for the terminal)."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, len(row) - 1) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))) for row in cells)


def markdown_table(cells: list[list[str]]) -> str:
    """The table in Markdown (for report.md)."""
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells[1:]])


def write_report(run_dir: Path, report: dict, cells: list[list[str]]) -> None:
    """report.json and report.md in `run_dir`."""
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
        + (" (a subset: quick run)" if cfg["test_senders"] else "") + "."
        + (" A smoke run: too few rounds and senders for the differences between the rows "
           "to mean anything." if report["quick"] else ""), "",
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
        f"{eps(dp['epsilon'])} against the server, {eps(dp['epsilon_model_users'])} against "
        f"model users, at delta {cfg['delta']:g} ("
        + ("secure rounds: the server sees only the sum, so both are the same; "
           if cfg["secure_aggregation"] else
           "plain rounds: the server sees each update with only its own noise; ")
        + "assumed: an honest-but-curious server that follows the protocol, and at most "
        f"{share:.0%} of a round's reports from devices adding no noise; "
        f"{eps(dp['epsilon_if_sampled'])} against the server if the uniform sampling of "
        "devices were counted as Poisson sampling).",
        f"- The noise in each DP round's average has standard deviation {sigma:.2g} "
        f"in each of the model's {params:,} weights (norm {sigma * params ** 0.5:.2g}), "
        f"against an average update of norm at most C = {cfg['dp_clip_norm']}: with "
        f"{cfg['devices_per_round']} devices per round out of {no_dp['population']}, the DP "
        "fleet can learn little at this epsilon. `benchmarks/federated_quality.py` "
        "computes with the accountant what population would reach epsilon <= 10 with less "
        "than 1 point of top-1 lost.",
        "- Learning curves (demo.png): federated evaluation by the phones of "
        f"{cfg['eval_senders']} `valid` senders every {cfg['eval_every']} rounds and at the end (the server "
        "never reads their text: each phone scores at most 200 of its words and sends seven "
        "clipped sums, noised like an update in the DP fleet), beside the central evaluation "
        "of the same versions on the same words. Without DP: "
        + "; ".join(agreement_lines(no_dp["evaluation_agreement"]) or ["none"])
        + ". With DP: " + "; ".join(agreement_lines(dp["evaluation_agreement"]) or ["none"])
        + ".",
        "- Stages: " + "; ".join(f"{name}: {seconds:.0f} s"
                                 for name, seconds in report["stages"].items())
        + f". Total {report['seconds']:.0f} s "
        f"on {report['machine']['nproc']} cores ({report['machine']['cpu']}).", "",
        "![valid accuracy and epsilon](demo.png)", "",
        "## The DP model for one person, with the personal layer", "",
        "`test` senders with 20+ messages type the second half of their messages, the "
        "personal layer having learned the first half and learning each message after it is "
        "sent (docs/EVALUATION.md, \"Personalised evaluation\").", "",
        markdown(report["personalised"]), ""]
    (run_dir / "report.md").write_text("\n".join(lines))


def eps(value: float | None) -> str:
    """An epsilon as the report words it."""
    return "no privacy guarantee (no noise)" if value is None else f"epsilon {value:.2f}"
