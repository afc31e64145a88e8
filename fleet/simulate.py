"""`python -m fleet.simulate`: a fleet of simulated phones trains the global model.

Every device is one `federated` sender of the chitchat corpus with its own typing history
(its messages, in time order), and takes part through the real device runtime
(`keyboard_app.runtime.DeviceRuntime`: enrol, fetch the model with ETags, check in, train
at one thread, clip and noise, upload) over real HTTP to a real aggregation server: the one
at `--server URL`, or one started here as a child process with SQLite in the run folder.
Devices run in `--workers` processes so that both cores work.

Who checks in: each round, devices are taken in the order of a fresh seeded uniform random
permutation of the population until the round's target of reports is met (or all its
tasks are handed out): a uniform sample without replacement, independent of the data and
across rounds. That is what makes sampling-based (amplified) privacy accounting plausible;
the server's accountant still counts each device's real participations without
amplification unless `--assume-sampling` is given. With `--check-in by-data` the order is
drawn with probability proportional to each device's number of messages instead (a phone
that types more is eligible more often): rounds then follow where the text is, closer to
central training, where every message counts the same; heavy typers take part in most rounds.
Dropout: a dropped device is unplugged at a random batch of its local training (the
runtime stops and sends nothing), and the next device in the order checks in instead.
Heavy senders are capped on purpose: each round a device trains on a random sample of at
most `--max-examples` messages.

Writes into the run folder: rounds.jsonl (one JSON object per round), summary.json,
fleet.png (valid accuracy and epsilon against rounds), model.safetensors (the final global
model), the server's and the workers' logs.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from fleet import FleetError
from fleet.config import CHECK_INS, FleetConfig
from fleet.report import describe
from fleet.run import run_fleet
from model.paths import ROOT, SHIPPED_MODEL, SHIPPED_TOKENIZER
from model.schedule import SCHEDULES

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = FleetConfig()
    p = argparse.ArgumentParser(prog="python -m fleet.simulate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--server", metavar="URL", help="use this server (needs --admin-token); "
                   "default: start one with SQLite in the run folder")
    p.add_argument("--admin-token", default=os.environ.get("PK_ADMIN_TOKEN"),
                   help="the server's admin token (default: $PK_ADMIN_TOKEN)")
    p.add_argument("--init-model", type=Path, default=SHIPPED_MODEL,
                   help="start model of a server started here (default: the public "
                   "pre-trained model shipped in model/shipped/, as the app and the demo)")
    p.add_argument("--tokenizer", type=Path, default=SHIPPED_TOKENIZER)
    p.add_argument("--run-dir", type=Path, default=None,
                   help="output folder (default: runs/fleet-<time>)")
    for name, kind, help_text in [
            ("rounds", int, None), ("devices_per_round", int, None),
            ("dropout", float, "chance a checked-in device stops before uploading"),
            ("local_epochs", float, None), ("client_lr", float, None),
            ("client_optimizer", str, "sgd | adam | adamw"), ("batch_size", int, None),
            ("max_examples", int, "each round, train on a random sample of at most M messages"),
            ("server_optimizer", str, "fedavg | fedavgm | fedadam"), ("server_lr", float, None),
            ("server_momentum", float, None), ("clip_norm", float, None),
            ("noise_multiplier", float, "0: no differential privacy"), ("delta", float, None),
            ("min_reports", int, "fewest reports a round may close with at its deadline; "
             "default: devices per round"),
            ("overcommit", float, "default: 1.3, more with dropout"),
            ("round_timeout", float, "the server's round deadline in seconds"),
            ("eval_every", int, "federated evaluation of every K-th model version and the "
             "last by the phones of valid senders (0: never)"),
            ("eval_senders", int, "valid senders whose phones evaluate (0: all)"),
            ("eval_max_words", int, "words each evaluating phone scores at most"),
            ("workers", int, None), ("seed", int, None),
            ("population", int, "a seeded random N federated senders (default: all)"),
            ("max_minutes", float, "stop after the round that passes this many minutes")]:
        default = getattr(d, name)
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=default,
                       help=(help_text + " " if help_text else "") + f"(default: {default})")
    p.add_argument("--server-lr-schedule", choices=SCHEDULES, default=d.server_lr_schedule,
                   help="cosine: the server lr falls to 0 over --rounds model versions, counted "
                        "from the server's version 0 (default: %(default)s)")
    p.add_argument("--check-in", choices=CHECK_INS, default=d.check_in,
                   help="which devices check in first each round: a uniform random order, "
                        "or weighted by how many messages each has (default: %(default)s)")
    p.add_argument("--weighting", choices=("uniform", "examples"), default=None,
                   help="how the server weights reports (default: examples without noise; "
                        "the server uses uniform whenever there is noise)")
    p.add_argument("--assume-sampling", action="store_true",
                   help="let the server's accountant assume Poisson sampling at rate "
                        "devices per round / population (amplification)")
    p.add_argument("--secure-aggregation", action=argparse.BooleanOptionalAction,
                   default=d.secure_aggregation,
                   help="rounds with secure aggregation: the server learns only each round's "
                        "sum (a round's devices then run as threads of this process); "
                        "--no-secure-aggregation: plain rounds, where each device adds the "
                        "full noise z*C itself (default: on)")
    p.add_argument("--compression", choices=("none", "ddg16", "ddg16-full"),
                   default=d.compression,
                   help="compressed uploads with integer noise (federated.compression): "
                        "in secure rounds ddg16, a random quarter of the coordinates, at most "
                        "4 bits per parameter, or ddg16-full, every coordinate, 16 bits; "
                        "plain rounds with either send every coordinate requantized after "
                        "the noise (about 3.6 bits); the devices then download the int8 "
                        "model (default: %(default)s)")
    p.add_argument("--no-final-eval", dest="final_eval", action="store_false",
                   help="skip the evaluation on all of valid at the end")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    names = {f for f in FleetConfig.__dataclass_fields__}
    return FleetConfig(**{k: v for k, v in vars(args).items() if k in names})



def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # `kill` ends a fleet as Ctrl-C does: workers and server too


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.server and not args.admin_token:
        print("error: --server needs --admin-token (or $PK_ADMIN_TOKEN)", file=sys.stderr)
        return 2
    run_dir = args.run_dir or ROOT / "runs" / f"fleet-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        summary = run_fleet(config, run_dir, server_url=args.server,
                            admin_token=args.admin_token, init_model=args.init_model,
                            tokenizer=args.tokenizer, progress=not args.quiet)
    except FleetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(describe(summary))
    print(f"wrote {run_dir}/rounds.jsonl, summary.json, fleet.png, model.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
