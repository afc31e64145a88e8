"""Which server process holds an aggregation lease, and whether it still lives, on any host.

A lease owner is `host/pid/start time`. On the same host the process table says at once
whether it runs (a reused pid has another start time). Across hosts there is no shared
process table, so every process notes a heartbeat in the database's `server_processes`
table every `BEAT_SECONDS` from a thread of its own (not the one that aggregates), and
marks itself stopped on a clean exit. An owner on another host whose heartbeat is older
than `STALE_SECONDS` (or who stopped) is dead, and its lease is taken over at once; an
owner with no heartbeat row (a process from before this table) keeps its lease until it
runs out. Hosts' clocks must agree within a few seconds (NTP), as they must for deadlines.
"""
from __future__ import annotations

import logging
import socket
import threading

import psutil
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from federated.clock import Clock, SystemClock
from aggregation_server.db import Database, ServerProcess

log = logging.getLogger("aggregation_server.liveness")
BEAT_SECONDS = 2.0
STALE_SECONDS = 10.0  # five missed beats


def lease_owner() -> str:
    """This process, as a lease's owner: host/pid/start time (a reused pid has another)."""
    proc = psutil.Process()
    return f"{socket.gethostname()}/{proc.pid}/{proc.create_time():.3f}"


def _same_host_alive(pid: str, started: str) -> bool:
    try:
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 0.01
    except (psutil.NoSuchProcess, ValueError):
        return False


class Liveness:
    """This process's heartbeat, and the liveness test of any lease owner."""

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db, self.owner, self.clock = db, lease_owner(), clock or SystemClock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, now: float | None = None) -> None:
        """Note in the database that this process is up."""
        now = self.clock() if now is None else now
        host = self.owner.rsplit("/", 2)[0]
        with self.db.write() as s:
            row = s.get(ServerProcess, self.owner, with_for_update=True)
            if row is None:
                s.add(ServerProcess(owner=self.owner, host=host, heartbeat=now, stopped=False))
            else:
                row.heartbeat, row.stopped = now, False

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(BEAT_SECONDS):
            try:
                self.beat()
            except Exception as err:  # noqa: BLE001 - the database may be down: beat later
                log.warning("heartbeat_failed", extra={"error": f"{type(err).__name__}: {err}"})

    def stop(self) -> None:
        """Stop beating and say so: another host may take this process's leases at once."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            with self.db.write() as s:
                s.execute(update(ServerProcess).where(ServerProcess.owner == self.owner)
                          .values(stopped=True))
        except Exception:  # noqa: BLE001 - then the heartbeat goes stale instead
            log.warning("heartbeat_not_stopped")

    def alive(self, owner: str | None, s: Session | None = None) -> bool:
        """Whether the process holding a lease still runs; True when it cannot be told (no
        owner recorded, or no heartbeat from it): then the lease runs out."""
        try:
            host, pid, started = (owner or "").rsplit("/", 2)
        except ValueError:
            return True
        if host == socket.gethostname():
            return _same_host_alive(pid, started)
        query = select(ServerProcess.heartbeat, ServerProcess.stopped).where(
            ServerProcess.owner == owner)
        if s is None:
            with self.db.read() as own:
                row = own.execute(query).first()
        else:
            row = s.execute(query).first()
        if row is None:
            return True
        return not row.stopped and self.clock() - row.heartbeat < STALE_SECONDS
