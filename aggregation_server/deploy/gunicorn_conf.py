"""Gunicorn settings for production: threaded workers that never drop a request.

    PK_DATA_DIR=/srv/pk PK_DB_URL=postgresql+psycopg://pk@db/pk PK_ADMIN_TOKEN=... \\
        gunicorn -c python:aggregation_server.deploy.gunicorn_conf \\
        'aggregation_server.app:create_app()'

`PK_BIND` (default 0.0.0.0:8080), `PK_WORKERS` (2) and `PK_THREADS` (8) size it.

Why these values:
- `gthread` workers: a 6 MB upload or download holds a thread, not a whole process.
- `keepalive` 75 s (gunicorn's default is 2 s): a device that checks in, trains for a few
  seconds and then uploads reuses its connection. With 2 s the server closed idle
  connections just as devices sent on them ("remote end closed connection", never logged).
  75 s is nginx's default and longer than any pause inside one device's exchange; a
  client idle longer finds the connection closed before it sends and opens a new one.
- `timeout` 120 s: the arbiter restarts a worker whose main loop stalls that long (a
  worker stays responsive while its threads aggregate a round).
- Prometheus multiprocess mode: every worker writes its counters into
  `PROMETHEUS_MULTIPROC_DIR` (default: a new temporary folder), and `/metrics` on any
  worker sums all of them, the workers that exited included.
- No `preload_app`: each worker starts its own round worker thread after the fork.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_MADE = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _MADE:  # before prometheus_client is imported anywhere
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pk-metrics-")

bind = [os.environ.get("PK_BIND", "0.0.0.0:8080")]
workers = int(os.environ.get("PK_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("PK_THREADS", "8"))
keepalive = 75
timeout = 120
graceful_timeout = 60
backlog = 2048
preload_app = False
errorlog = "-"


def on_starting(server) -> None:
    """Start the counters from zero: drop files a previous run left."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if folder.is_dir():
        for child in folder.iterdir():
            if child.suffix == ".db":
                child.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def worker_exit(server, worker) -> None:
    """A worker that stops cleanly says so (its leases can be taken over at once)."""
    app = getattr(worker, "wsgi", None)
    if app is not None and "pk.service" in getattr(app, "extensions", {}):
        from aggregation_server.app import shutdown
        shutdown(app)


def child_exit(server, worker) -> None:
    """Keep a dead worker's counters, drop its live-gauge files."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Remove the temporary metrics folder this config made."""
    if _MADE:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
