"""A headless device: join federated training with your own text, without the keyboard UI.

    python -m keyboard_app.device --server URL --history FILE --enrolment-code CODE
                                  [--data-dir DIR] [--once]

FILE holds one message per line. It is loaded into the device's history store (with the
same filters as the keyboard: long numbers and e-mail addresses are cut out), then the
device enrols, fetches the global model, waits for a task, trains and uploads only the
clipped and noised weight difference. The text itself never leaves the machine.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from data import DatasetError, load_text_file
from keyboard_app.eligibility import Eligibility, EligibilitySettings
from keyboard_app.history import HistoryStore

log = logging.getLogger("keyboard_app.device")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m keyboard_app.device",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="aggregation server URL")
    parser.add_argument("--history", required=True, type=Path,
                        help="UTF-8 text file, one message per line")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".private-keyboard-device",
                        help="where the device keeps its token, model cache and history")
    parser.add_argument("--enrolment-code", default=os.environ.get("PK_ENROLMENT_CODE"),
                        help="the enrolment code the server's operator gave you (needed the "
                             "first time only; default: $PK_ENROLMENT_CODE)")
    parser.add_argument("--once", action="store_true", help="take part in one round, then exit")
    parser.add_argument("--rounds", type=int, default=None,
                        help="take part in N rounds, then exit (default: run until stopped)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="give up (exit 1) after this many seconds")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="wait at most this many seconds between check-ins")
    parser.add_argument("--metered", action="store_true",
                        help="this network is metered: do not train or upload")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    if args.once:
        args.rounds = 1
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def load_history(path: Path, data_dir: Path) -> HistoryStore:
    """The file's messages as the device's whole history (replacing an earlier import)."""
    messages = load_text_file(path)
    store = HistoryStore(data_dir / "history.sqlite", retention_days=None, max_messages=None)
    store.delete_all()
    stored = store.add_many(messages)
    stats = store.stats()
    log.info("history: %d of %d messages stored (%d redacted, not stored: %s)", stored,
             len(messages), stats["redacted"], stats["not_stored"] or "none")
    return store


def run(args: argparse.Namespace) -> int:
    history = load_history(args.history, args.data_dir)
    from keyboard_app.runtime import DeviceRuntime  # the model runtime: after the cheap checks
    eligibility = Eligibility(EligibilitySettings(idle_seconds=0, min_new_messages=0,
                                                  network_metered=args.metered))
    runtime = DeviceRuntime(args.data_dir, args.server, history=history, eligibility=eligibility,
                            enrolment_code=args.enrolment_code)
    deadline = time.monotonic() + args.timeout if args.timeout else float("inf")
    joined, last = 0, None
    while True:
        step = runtime.run_once()
        if step.outcome == "uploaded":
            joined += 1
            status = runtime.status()
            log.info("took part in %d round(s); model version %s, epsilon %s", joined,
                     status.model_version, status.epsilon)
            if args.rounds and joined >= args.rounds:
                return 0
        elif (step.outcome, step.detail) != last:  # say each new situation once
            log.info("%s: %s (next try in %.1f s)", step.outcome, step.detail, step.wait)
        last = (step.outcome, step.detail)
        wait = min(step.wait, args.max_wait if args.max_wait is not None else step.wait)
        if time.monotonic() + wait > deadline:
            log.error("gave up after %.0f s, %d round(s) joined", args.timeout, joined)
            return 1
        time.sleep(wait)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        return run(args)
    except DatasetError as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
