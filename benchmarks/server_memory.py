"""Server peak memory with 10 versus 100 updates in a round (default-size model).

A fresh server process per run; a round of N reports is uploaded by 8 concurrent clients
and aggregated; the peak resident set (VmHWM) of the server process is read from /proc.
Aggregation streams the updates, so the peak should not grow with N (target: growth under
50 MB from 10 to 100 updates).

    .venv/bin/python benchmarks/server_memory.py [--repeats 3] [--clients 8]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
from pathlib import Path

import numpy as np
import requests

from server_ingest import (deltas, machine_info, make_model, prepare_round, run_round,
                           start_server)


def rss_mib(pid: int, field: str) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def one_run(tmp: Path, name: str, model: Path, tokenizer: Path, pool: list, n: int,
            clients: int) -> dict:
    config = {"target_reports": n, "min_reports": n, "overcommit": 1.0, "round_seconds": 3600,
              "participation_cap": 1000, "epsilon_budget": None, "noise_multiplier": 1.0,
              "secure_aggregation": False}
    server = start_server(tmp / name, model, tokenizer, config)
    try:
        jobs = prepare_round(requests.Session(), server.url, n, pool)
        start = rss_mib(server.proc.pid, "VmRSS")
        result = run_round(server.url, jobs, clients, server.log_path)
        return {"reports": n, "rss_before_mib": round(start, 1),
                "peak_mib": round(rss_mib(server.proc.pid, "VmHWM"), 1),
                "aggregation_s": result["aggregation_s"]}
    finally:
        server.stop(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    args = p.parse_args()
    print(json.dumps({"machine": machine_info()}, indent=1))
    with tempfile.TemporaryDirectory(prefix="pk-bench-") as tmp:
        tmp = Path(tmp)
        model, tokenizer, shapes = make_model(tmp)
        pool = deltas(shapes, 8, 1.0, 1.0 / np.sqrt(100))
        runs: dict[int, list[dict]] = {10: [], 100: []}
        for r in range(args.repeats):
            for n in (10, 100):
                runs[n].append(one_run(tmp, f"run{r}-{n}", model, tokenizer, pool, n,
                                       args.clients))
                print(json.dumps(runs[n][-1]))
    peak = {n: round(statistics.median(x["peak_mib"] for x in rs), 1) for n, rs in runs.items()}
    print(json.dumps({"benchmark": "server_memory", "repeats": args.repeats,
                      "clients": args.clients,
                      "median_peak_mib": {"10_updates": peak[10], "100_updates": peak[100]},
                      "growth_mib": round(peak[100] - peak[10], 1), "target": "< 50 MB"},
                     indent=1))


if __name__ == "__main__":
    main()
