"""The aggregation server as a child process: the one launcher of the fleet simulation, the
tests (`tests/conftest.py`'s `start_process`, `tests/test_server_deploy.py`) and the
benchmarks (`benchmarks/server_ingest.py`, `server_memory.py`, `server_load.py`): the
development server, or gunicorn with the production config or options of your own.

Settings go into one JSON config file (the server's own format, aggregation_server/config.py);
the admin token, the data folder and the address go into the environment, so that no
inherited `PK_*` variable overrides them (and no token is on the command line). The server picks a
free port and logs it; `start` waits for that line and for an answer.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from fleet import FleetError
from model.paths import ROOT

# the development server's JSON log line, or gunicorn's own
LISTENING = re.compile(r'"event": "listening".*?"port": (\d+)|Listening at: http://[^:]+:(\d+)')
# gunicorn with the production settings (aggregation_server/deploy/gunicorn_conf.py), which
# read PK_BIND (set here), PK_WORKERS and PK_THREADS from the environment
GUNICORN_PRODUCTION = ("-c", "python:aggregation_server.deploy.gunicorn_conf")


def gunicorn_options(workers: int, threads: int = 8) -> list[str]:
    """Plain gunicorn options (its defaults otherwise) on a free loopback port."""
    return ["-w", str(workers), "--threads", str(threads), "-b", "127.0.0.1:0"]


class ServerStartError(FleetError):
    """The server process exited or did not answer in time."""


class ServerProcess:
    """`python -m aggregation_server` (or `python -m gunicorn` with the `gunicorn` options)
    on 127.0.0.1 and a free port, its data in `data_dir`, its log (JSON lines) appended to
    `log_path` (default `data_dir/server.log`). `settings` are the server's settings
    (`{"round": {...}, "tick_seconds": ..., "db_url": ..., "init_model": ...}`); `env` adds
    environment variables (gunicorn's `PK_WORKERS`, `PROMETHEUS_MULTIPROC_DIR`...).
    Use as a context manager, or `start()` and `stop()`."""

    def __init__(self, data_dir: Path, settings: dict[str, Any] | None = None, *,
                 admin_token: str | None = None, log_path: Path | None = None,
                 config_path: Path | None = None, gunicorn: Sequence[str] | None = None,
                 env: dict[str, str] | None = None, start_timeout: float = 120.0) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings or {}
        self.admin_token = admin_token or secrets.token_urlsafe(24)
        self.log_path = Path(log_path or self.data_dir / "server.log")
        self.config_path = Path(config_path or self.data_dir / "config.json")
        self.gunicorn, self.env, self.start_timeout = gunicorn, env or {}, start_timeout
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def command(self) -> list[str]:
        if self.gunicorn is not None:
            return [sys.executable, "-m", "gunicorn", *self.gunicorn,
                    "aggregation_server.app:create_app()"]
        return [sys.executable, "-m", "aggregation_server"]

    def start(self) -> ServerProcess:
        """Start the process; return once it answers (ServerStartError if it does not)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.settings, default=str))
        env = dict(os.environ, **self.env, PK_ADMIN_TOKEN=self.admin_token,
                   PK_CONFIG=str(self.config_path), PK_DATA_DIR=str(self.data_dir),
                   PK_HOST="127.0.0.1", PK_PORT="0", PK_BIND="127.0.0.1:0")
        with open(self.log_path, "ab") as err:
            offset = err.tell()  # a restart on the same log: read only the new lines
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env,
                                         stdout=subprocess.DEVNULL, stderr=err)
        port = self._wait_for_port(offset)
        if port:
            self.url = f"http://127.0.0.1:{port}"
            if self._answers():
                return self
        self.stop()
        raise ServerStartError(f"the server did not start; its log {self.log_path} ends "
                               "with:\n" + self.log_path.read_text()[-2000:])

    def _wait_for_port(self, offset: int) -> int | None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                found = LISTENING.search(f.read().decode(errors="replace"))
            if found:
                return int(found.group(1) or found.group(2))
            time.sleep(0.1)
        return None

    def _answers(self) -> bool:
        """Whether the server answers (gunicorn listens before its workers are ready); asks
        for the static API description, so that no status request is counted."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if requests.get(f"{self.url}/v1/openapi.json", timeout=30).ok:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
