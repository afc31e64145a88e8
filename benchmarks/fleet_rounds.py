"""How fast the demo's fleet runs secure rounds, and where a round's time goes.

Runs the demo's fleet without DP (`fleet.demo.DemoConfig`: 20 devices per round, dropout 0.1,
at most 200 messages each, secure aggregation) from the shipped model for `--rounds` rounds,
without evaluations, then reads the server's log: per round, the time from the round's
opening until the target of devices had trained and advertised their keys, each protocol
phase after it (share, masked, consistency), and the unmasking with the aggregation; and
rounds per minute over the whole run.

    .venv/bin/python benchmarks/fleet_rounds.py [--rounds 8] [--run-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.demo import DemoConfig  # noqa: E402
from fleet.run import run_fleet  # noqa: E402
from model.evaluate import machine  # noqa: E402
from model.paths import SHIPPED_MODEL, SHIPPED_TOKENIZER  # noqa: E402

# the server's log events that end each stretch of a secure round, in order
MARKS = [("trained_and_advertised", "share"), ("share", "masked"),
         ("masked", "consistency"), ("consistency", "unmask"),
         ("unmask_and_aggregate", "round_closed")]


def round_phases(log: Path) -> list[dict[str, float]]:
    """Seconds of each stretch of every round the log shows from opening to close (events
    of neighbouring rounds may interleave, so they are kept by round id)."""
    rounds: dict[int, dict[str, float]] = {}
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        name = event["event"]
        mark = event.get("phase") if name == "secagg_phase" else name
        if name in ("round_opened", "secagg_phase", "round_closed"):
            rounds.setdefault(event["round_id"], {})[mark] = event["ts"]
    out = []
    for _, times in sorted(rounds.items()):
        if "round_opened" in times and all(mark in times for _, mark in MARKS):
            start, row = times["round_opened"], {}
            for stretch, mark in MARKS:
                row[stretch], start = round(times[mark] - start, 2), times[mark]
            row["total"] = round(times["round_closed"] - times["round_opened"], 2)
            out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--run-dir", type=Path, default=None, help="default: a temporary folder")
    args = p.parse_args()
    config = replace(DemoConfig().fleet(dp=False, rounds=args.rounds), max_minutes=None,
                     eval_every=0, final_eval=False)
    with tempfile.TemporaryDirectory(prefix="pk-fleet-rounds-") as tmp:
        run_dir = args.run_dir or Path(tmp)
        load_before = os.getloadavg()
        summary = run_fleet(config, run_dir, init_model=SHIPPED_MODEL,
                            tokenizer=SHIPPED_TOKENIZER, progress=False)
        rounds = round_phases(run_dir / "server" / "server.log")
    median = {k: round(statistics.median(r[k] for r in rounds), 2) for k in rounds[0]}
    print(json.dumps({"benchmark": "fleet_rounds", "rounds": summary["rounds_run"],
                      "devices_per_round": config.devices_per_round,
                      "round_seconds_sum": summary["round_seconds"],
                      "rounds_per_minute": round(60 * summary["rounds_run"]
                                                 / summary["round_seconds"], 2),
                      "median_seconds": median, "per_round": rounds,
                      "load_average_before": [round(x, 1) for x in load_before],
                      "load_average_after": [round(x, 1) for x in os.getloadavg()],
                      "machine": machine()}, indent=1))


if __name__ == "__main__":
    main()
