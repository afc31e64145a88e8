"""Update ingestion over real HTTP on loopback, default-size (about 1.5M parameter) model.

Measures, per round of N reports (randomly initialised model, DP-noised random updates):
  * updates/s: N-1 uploads from concurrent clients, each acknowledged only once durably stored;
  * time to close: the N-th upload, which reaches the target (its request latency), the
    aggregation time the server logs (the round worker aggregates, not the request), and the
    time from that upload to the new version (`to_new_version_s`).
Targets (issue 3): >= 30 updates/s with 2 cores, <= 2 s to aggregate 100 updates.

    .venv/bin/python benchmarks/server_ingest.py [--reports 100] [--rounds 3] [--clients 8]
                                                 [--gunicorn WORKERS]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from federated.privacy import privatize  # noqa: E402
from federated.wire import Update, encode_update  # noqa: E402
from fleet.server_process import ServerProcess, gunicorn_options  # noqa: E402
from model.evaluate import machine as machine_info  # noqa: E402


def make_model(folder: Path) -> tuple[Path, Path, dict]:
    """A randomly initialised default-config model and a tokenizer from public messages."""
    import torch

    from data import load_split
    from model.checkpoint import CheckpointMeta, save_checkpoint
    from model.config import ModelConfig
    from model.lstm import NextWordLSTM
    from model.tokenizer import WordTokenizer
    torch.manual_seed(0)
    tokenizer = WordTokenizer.build([m for d in load_split("public") for m in d.messages])
    model = NextWordLSTM(ModelConfig(vocab_size=tokenizer.vocab_size))
    tokenizer.save(folder / "tokenizer.json")
    save_checkpoint(folder / "model.safetensors", model,
                    CheckpointMeta(model.config, tokenizer.sha256, 0, {"init": "random"}))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return folder / "model.safetensors", folder / "tokenizer.json", shapes


def start_server(data_dir: Path, model: Path, tokenizer: Path, round_config: dict,
                 gunicorn: int = 0) -> ServerProcess:
    """The server as a separate process (dev server, or gunicorn with N workers), started by
    the fleet's launcher; its log is `data_dir` + ".log"."""
    return ServerProcess(data_dir, {"init_model": str(model), "tokenizer": str(tokenizer),
                                    "tick_seconds": 1, "log_level": "INFO",
                                    "enrol_rate_limit": 1_000_000, "round": round_config},
                         admin_token="bench", log_path=data_dir.parent / f"{data_dir.name}.log",
                         gunicorn=[*gunicorn_options(gunicorn), "--timeout", "120"]
                         if gunicorn else None).start()


def deltas(shapes: dict, count: int, clip: float, stddev: float) -> list[dict]:
    """`count` distinct clipped and noised random updates (reused across devices)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        raw = {k: rng.normal(0, 0.01, s).astype(np.float32) for k, s in shapes.items()}
        out.append(privatize(raw, clip, stddev, rng)[0])
    return out


def prepare_round(http: requests.Session, url: str, n: int, pool: list[dict]) -> list:
    """Enrol n devices, check them in, and encode each one's update for its task."""
    from federated import identity
    jobs = []
    code = http.post(f"{url}/v1/admin/enrolment-codes", json={"uses": n}, timeout=60,
                     headers={"Authorization": "Bearer bench"}).json()["code"]
    for i in range(n):
        device = http.post(f"{url}/v1/devices", timeout=60, json={
            "enrolment_code": code,
            "identity_key": identity.public_key_text(identity.new_key())}).json()
        headers = {"Authorization": f"Bearer {device['token']}"}
        task = http.post(f"{url}/v1/checkin", json={}, headers=headers,
                         timeout=60).json()["task"]
        body = encode_update(Update(pool[i % len(pool)], task["round_id"],
                                    task["model_version"], 50, {"loss": 4.0}))
        jobs.append((task["round_id"], headers, body))
    return jobs


def upload(job) -> float:
    round_id, headers, body = job
    started = time.perf_counter()
    r = requests.put(f"{URL}/v1/rounds/{round_id}/update", data=body, timeout=300,
                     headers={**headers, "Idempotency-Key": str(uuid.uuid4())})
    if r.status_code != 202:
        raise RuntimeError(f"upload refused: {r.status_code} {r.text}")
    return time.perf_counter() - started


URL = ""


def run_round(url: str, jobs: list, clients: int, log: Path) -> dict:
    global URL
    URL = url
    first = jobs[:-1]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(upload, first))
    ingest = time.perf_counter() - started
    close_started = time.perf_counter()
    close = upload(jobs[-1])
    seconds = closed_seconds(log, jobs[-1][0])  # the round worker aggregates, not the request
    return {"updates_per_s": len(first) / ingest, "median_upload_s": statistics.median(latencies),
            "close_request_s": close, "aggregation_s": seconds,
            "to_new_version_s": time.perf_counter() - close_started}


def closed_seconds(log: Path, round_id: int, timeout: float = 300.0) -> float:
    """The aggregation time the server logs for `round_id`, once its round worker has
    closed the round (polls the log file, which reading changes nothing on the server).
    Each poll reads only the lines written since the last one: re-reading the whole log
    every 20 ms took CPU from the aggregating server on the 2 shared cores."""
    deadline = time.monotonic() + timeout
    pending = b""
    with open(log, "rb") as f:
        while time.monotonic() < deadline:
            *lines, pending = (pending + f.read()).split(b"\n")  # whole lines only
            for line in lines:
                if b'"round_closed"' in line and json.loads(line)["round_id"] == round_id:
                    return json.loads(line)["seconds"]
            time.sleep(0.02)
    raise RuntimeError(f"round {round_id} was not closed within {timeout:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reports", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--gunicorn", type=int, default=0, help="workers (0: the dev server)")
    args = p.parse_args()
    print(json.dumps({"machine": machine_info()}, indent=1))
    n = args.reports
    config = {"target_reports": n, "min_reports": n, "overcommit": 1.0, "round_seconds": 3600,
              "participation_cap": 1000, "epsilon_budget": None, "noise_multiplier": 1.0,
              "clip_norm": 1.0, "secure_aggregation": False}  # the plain (DP-only) upload path
    with tempfile.TemporaryDirectory(prefix="pk-bench-") as tmp:
        tmp = Path(tmp)
        model, tokenizer, shapes = make_model(tmp)
        params = sum(int(np.prod(s)) for s in shapes.values())
        server = start_server(tmp / "data", model, tokenizer, config, args.gunicorn)
        url, log = server.url, server.log_path
        try:
            pool = deltas(shapes, 8, 1.0, 1.0 / np.sqrt(n))
            http = requests.Session()
            results = []
            for _ in range(args.rounds):
                jobs = prepare_round(http, url, n, pool)
                results.append(run_round(url, jobs, args.clients, log))
                print(json.dumps(results[-1]))
        finally:
            server.stop(timeout=30)
    summary = {k: round(statistics.median(r[k] for r in results), 3) for k in results[0]}
    print(json.dumps({"benchmark": "server_ingest", "params": params,
                      "update_bytes": len(jobs[0][2]), "reports_per_round": n,
                      "rounds": args.rounds, "clients": args.clients,
                      "server": f"gunicorn -w {args.gunicorn} --threads 8" if args.gunicorn
                      else "python -m aggregation_server (werkzeug, threaded)",
                      "median": summary,
                      "targets": {"updates_per_s": ">= 30", "aggregation_s": "<= 2"}}, indent=1))


if __name__ == "__main__":
    main()
