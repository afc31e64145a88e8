"""Concurrent devices against the production setup (gunicorn, real model size), plain clients.

Each simulated device is a thread with its own keep-alive connection (a `requests`
Session) and no retries, so every dropped connection shows. Per round it checks in,
downloads the round's model (6.2 MB float32) when it does not have it, waits a random
"training" pause of 0 to `--think` seconds, and uploads a clipped random update of the
real size (about 6.2 MB); rounds are plain (no secure aggregation) with a target of every
device, so the last upload aggregates the round. Afterwards the server's own count of
the requests it answered (`pk_http_requests_total` on `/metrics`, summed over workers)
is compared with the client's count: requests sent but never counted are "unlogged".

    .venv/bin/python benchmarks/server_load.py [--devices 50 100] [--rounds 2] [--think 3]
        [--workers 2] [--threads 8] [--setup production|readme] [--hosts 2 --pg URL]

`--setup readme` runs the command the README gave before (`gunicorn -w 2 --threads 8`,
gunicorn's default 2 s keep-alive) for comparison. `--pg URL` runs on a fresh PostgreSQL
database with models and updates in it (`blob_store = "database"`); `--hosts 2` then
starts two servers with separate data dirs, and each device checks in at one and
downloads and uploads at the other.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.server_ingest import deltas  # noqa: E402
from federated import identity  # noqa: E402
from federated.wire import Update, encode_update  # noqa: E402
from fleet.server_process import (GUNICORN_PRODUCTION, ServerProcess,  # noqa: E402
                                  gunicorn_options)
from model.evaluate import machine as machine_info  # noqa: E402

ADMIN = {"Authorization": "Bearer bench"}
DROPPED = (requests.ConnectionError, requests.Timeout)
DEVICE_REQUEST = re.compile(r'"event": "request".*"path": '
                            r'"/v1/(checkin|models/\d+|rounds/\d+/update)"')


@dataclass
class Tally:
    """What the clients saw: one (kind, outcome, seconds) per request."""
    rows: list[tuple[str, str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, outcome: str, seconds: float) -> None:
        with self.lock:
            self.rows.append((kind, outcome, seconds))


def start(data_dir: Path, args: argparse.Namespace, config: dict,
          db_url: str | None) -> ServerProcess:
    """gunicorn with the production config (or the README's old command) on a free port."""
    metrics = data_dir.parent / f"metrics-{data_dir.name}"
    metrics.mkdir()
    settings = {"enrol_rate_limit": 1_000_000, "log_level": "INFO", "round": config}
    if db_url:  # one deployment over several "hosts": models and updates in PostgreSQL
        settings.update(db_url=db_url, blob_store="database")
    if args.setup == "production":
        options = list(GUNICORN_PRODUCTION)
    else:
        options = gunicorn_options(args.workers, args.threads)
    return ServerProcess(data_dir, settings, admin_token="bench", gunicorn=options,
                         log_path=data_dir.parent / f"{data_dir.name}.log", start_timeout=180,
                         env={"PK_WORKERS": str(args.workers), "PK_THREADS": str(args.threads),
                              "PROMETHEUS_MULTIPROC_DIR": str(metrics)}).start()


def _innermost(err: BaseException) -> str:
    """The name of the exception at the bottom of requests' and urllib3's wrappers."""
    while True:
        inner = getattr(err, "reason", None) or next(
            (a for a in reversed(err.args) if isinstance(a, BaseException)), None)
        if inner is None or inner is err:
            return type(err).__name__
        err = inner


def timed(tally: Tally, kind: str, call) -> requests.Response | None:
    started = time.perf_counter()
    try:
        response = call()
    except DROPPED as err:
        tally.add(kind, f"dropped:{_innermost(err)}", time.perf_counter() - started)
        return None
    tally.add(kind, str(response.status_code), time.perf_counter() - started)
    return response


def device(urls: list[str], token: str, rounds: int, think: float, pool: list[dict],
           tally: Tally, seed: int) -> None:
    """One device's rounds over its own keep-alive connections, without retries; with
    several hosts it checks in at one and downloads and uploads at the next."""
    rng = random.Random(seed)
    url, other = urls[seed % len(urls)], urls[(seed + 1) % len(urls)]
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token}"
    have, done = None, 0
    while done < rounds:
        r = timed(tally, "checkin", lambda: http.post(f"{url}/v1/checkin", json={},
                                                      timeout=300))
        if r is None or r.status_code != 200:
            time.sleep(1.0)
            continue
        task = r.json()["task"]
        if task is None:
            time.sleep(min(r.json()["retry_after"], 1.0))
            continue
        if task["model_version"] != have:
            r = timed(tally, "model", lambda: http.get(
                f"{other}/v1/models/{task['model_version']}", timeout=300))
            if r is None or r.status_code != 200:
                continue
            have = task["model_version"]
        time.sleep(rng.uniform(0, think))
        body = encode_update(Update(pool[seed % len(pool)], task["round_id"],
                                    task["model_version"], 50, {"loss": 4.0}))
        r = timed(tally, "upload", lambda: http.put(
            f"{other}/v1/rounds/{task['round_id']}/update", data=body, timeout=300,
            headers={"Idempotency-Key": str(uuid.uuid4())}))
        if r is not None and r.status_code == 202:
            done += 1


def enrol(url: str, n: int) -> list[str]:
    code = requests.post(f"{url}/v1/admin/enrolment-codes", json={"uses": n}, headers=ADMIN,
                         timeout=60).json()["code"]
    return [requests.post(f"{url}/v1/devices", timeout=60, json={
        "enrolment_code": code, "identity_key": identity.public_key_text(identity.new_key())}
    ).json()["token"] for _ in range(n)]


def served(url: str) -> Counter:
    """Requests the server counted, by endpoint (all workers), from /metrics."""
    counts: Counter = Counter()
    for line in requests.get(f"{url}/metrics", timeout=60).text.splitlines():
        m = re.match(r'pk_http_requests_total\{endpoint="([^"]*)",method="[^"]*",'
                     r'status="[^"]*"\} (\S+)', line)
        if m:
            counts[m.group(1)] += int(float(m.group(2)))
    return counts


@contextmanager
def fresh_database(base_url: str | None):
    """A new PostgreSQL database on the server of `base_url` (dropped afterwards), or None."""
    if not base_url:
        yield None
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    name = f"pk_load_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(n: int, args: argparse.Namespace) -> dict:
    config = {"target_reports": n, "min_reports": n, "overcommit": 1.0,
              "round_seconds": 3600, "participation_cap": 1000, "epsilon_budget": None,
              "noise_multiplier": 0.0, "clip_norm": 1.0, "secure_aggregation": False}
    with tempfile.TemporaryDirectory(prefix="pk-load-") as tmp, \
            fresh_database(args.pg) as db_url:
        servers, urls = [], []
        try:
            for host in range(args.hosts):  # one at a time: the first stores version 0
                servers.append(start(Path(tmp) / f"host{host}", args, config, db_url))
                urls.append(servers[-1].url)
            from safetensors.numpy import load as load_tensors
            shapes = {k: v.shape for k, v in load_tensors(
                requests.get(f"{urls[0]}/v1/model", timeout=60).content).items()}
            pool = deltas(shapes, 4, 1.0, 0.0)
            tokens = enrol(urls[0], n)
            before = sum((served(url) for url in urls), Counter())
            tally = Tally()
            started = time.perf_counter()
            with ThreadPoolExecutor(n) as ex:
                list(ex.map(lambda i: device(urls, tokens[i], args.rounds, args.think, pool,
                                             tally, i), range(n)))
            wall = time.perf_counter() - started
            after = sum((served(url) for url in urls), Counter())
        finally:
            for server in servers:
                server.stop(timeout=60)
        logged = sum(bool(DEVICE_REQUEST.search(line)) for server in servers
                     for line in server.log_path.read_text().splitlines())
    return summarise(n, tally, wall, after - before, logged, args)


def summarise(n: int, tally: Tally, wall: float, counted: Counter, logged: int,
              args: argparse.Namespace) -> dict:
    outcomes = Counter(o for _, o, _ in tally.rows)
    classes = Counter(o[0] + "xx" if o[0].isdigit() else "dropped" for o in outcomes.elements())
    seconds = np.array([s for _, o, s in tally.rows if not o.startswith("dropped")])
    by_kind = {}
    for kind in ("checkin", "model", "upload"):
        times = [s for k, o, s in tally.rows if k == kind and not o.startswith("dropped")]
        by_kind[kind] = {"requests": sum(1 for k, _, _ in tally.rows if k == kind),
                         "p50_s": round(float(np.percentile(times, 50)), 3),
                         "p99_s": round(float(np.percentile(times, 99)), 3)}
    counted_total = sum(v for k, v in counted.items() if k != "/metrics")
    return {"devices": n, "rounds": args.rounds, "requests": len(tally.rows),
            "2xx": classes["2xx"], "4xx": classes["4xx"], "5xx": classes["5xx"],
            "dropped": classes["dropped"],
            "dropped_kinds": {o: c for o, c in outcomes.items() if o.startswith("dropped")},
            "server_counted": counted_total, "server_logged": logged,
            "unlogged": len(tally.rows) - counted_total,
            "p50_s": round(float(np.percentile(seconds, 50)), 3),
            "p99_s": round(float(np.percentile(seconds, 99)), 3),
            "by_kind": by_kind, "wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[50, 100])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--think", type=float, default=3.0, help="longest pause before an upload")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--setup", choices=("production", "readme"), default="production")
    p.add_argument("--hosts", type=int, default=1,
                   help="server instances, each with its own data dir (more than 1: --pg)")
    p.add_argument("--pg", help="PostgreSQL URL: run on a fresh database there with "
                                "blob_store = database (needed for --hosts > 1)")
    args = p.parse_args()
    if args.hosts > 1 and not args.pg:
        p.error("--hosts above 1 needs --pg (the hosts share models and updates there)")
    print(json.dumps({"machine": machine_info(), "load_average": os.getloadavg(),
                      "setup": args.setup, "workers": args.workers, "threads": args.threads,
                      "hosts": args.hosts, "blob_store": "database" if args.pg else "files"}),
          flush=True)
    for n in args.devices:
        result = run(n, args)
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
