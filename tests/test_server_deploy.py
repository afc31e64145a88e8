"""The production setup (aggregation_server/deploy/gunicorn_conf.py): gunicorn gthread
workers whose /metrics counts every worker process, a restarted one included, and whose
stopped workers say so in the database (their aggregation leases are free at once).

The 100-device load figures are benchmarks/server_load.py's (BENCHMARKS.md).
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import TEST_ROUND, poll


@pytest.fixture
def gunicorn(tiny_model, tmp_path):
    """The production command, 2 workers, on a free port: (url, log path, process)."""
    from fleet.server_process import GUNICORN_PRODUCTION, ServerProcess
    server = ServerProcess(
        tmp_path / "data", {"init_model": str(tiny_model["checkpoint"]),
                            "tokenizer": str(tiny_model["tokenizer"]), "tick_seconds": 0,
                            "round": {"secure_aggregation": TEST_ROUND["secure_aggregation"]}},
        admin_token="admin-secret", gunicorn=GUNICORN_PRODUCTION,
        log_path=tmp_path / "gunicorn.log", config_path=tmp_path / "config.json",
        env={"PK_WORKERS": "2", "PK_THREADS": "4",
             "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")})
    try:
        server.start()
        log, proc = server.log_path, server.proc
        _wait(lambda: len(_events(log, "app_ready")) >= 2 or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield server.url, log, proc
    finally:
        server.stop(timeout=30)


def _wait(done, timeout: float = 90.0) -> None:
    """Until gunicorn's processes (another process group) did what `done` checks."""
    poll(done, timeout, "the gunicorn processes", every=0.1)


def _events(log: Path, name: str) -> list[dict]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"event": "{name}"' in line:
            out.append(json.loads(line))
    return out


def _status_counted(url: str) -> int:
    """pk_http_requests_total of GET /v1/status 200, as /metrics reports it."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    found = re.search(r'pk_http_requests_total\{endpoint="/v1/status",method="GET",'
                      r'status="200"\} (\S+)', text)
    return int(float(found.group(1))) if found else 0


def _status_burst(url: str, n: int = 24) -> int:
    """n concurrent GET /v1/status on fresh connections; how many got 200."""
    def one(_):
        return requests.get(f"{url}/v1/status", timeout=60,
                            headers={"Connection": "close"}).status_code
    with ThreadPoolExecutor(8) as pool:
        return sum(code == 200 for code in pool.map(one, range(n)))


def _pids_serving_status(log: Path) -> Counter:
    return Counter(e["pid"] for e in _events(log, "request") if e["path"] == "/v1/status")


def _until_both_workers_answered(url: str, log: Path) -> int:
    """Bursts until both workers have answered some (the kernel picks); requests sent."""
    sent = 0
    for _ in range(20):
        sent += _status_burst(url)
        if len(_pids_serving_status(log)) >= 2:
            break
    assert len(_pids_serving_status(log)) >= 2, _pids_serving_status(log)
    return sent


def test_metrics_count_every_worker(gunicorn):
    url, log, _ = gunicorn
    sent = _until_both_workers_answered(url, log)
    assert _status_counted(url) == sent == sum(_pids_serving_status(log).values())


def test_a_stopped_workers_counts_stay_and_it_says_it_stopped(gunicorn, tmp_path):
    url, log, proc = gunicorn
    sent = _until_both_workers_answered(url, log)
    victim = min(_pids_serving_status(log))
    os.kill(victim, signal.SIGTERM)  # the arbiter starts a new worker in its place
    _wait(lambda: len(_events(log, "app_ready")) >= 3)
    sent += _status_burst(url)
    assert _status_counted(url) == sent
    assert proc.poll() is None
    with sqlite3.connect(tmp_path / "data" / "server.sqlite3") as db:  # its worker_exit hook
        rows = dict(db.execute("SELECT owner, stopped FROM server_processes").fetchall())
    assert [stopped for owner, stopped in rows.items() if owner.split("/")[1] == str(victim)] \
        == [1]  # another host may take its leases at once
    assert sum(1 for stopped in rows.values() if not stopped) == 2  # the two that run
