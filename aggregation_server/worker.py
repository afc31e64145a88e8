"""The one place a server process advances rounds: a background thread that runs
`RoundService.tick()` (deadlines, phase closes, aggregation, retries, opening the next round)
every `tick_seconds`, and at once when a request wakes it (a round reached its target, a
secure round's protocol ended).

Requests never aggregate: they store what they were sent and wake this worker. Every process
runs one; the database decides which of them aggregates a round (the compare-and-set
open -> closing with its lease in `RoundService.close_round`), so a round is aggregated once.
"""
from __future__ import annotations

import logging
import threading

from aggregation_server.rounds import RoundService
from federated.privacy import load_accountant

log = logging.getLogger("aggregation_server.worker")


class RoundWorker(threading.Thread):
    """Ticks the service every `seconds` (0: only when woken), and when woken."""

    def __init__(self, service: RoundService, seconds: float) -> None:
        super().__init__(name="round-worker", daemon=True)
        self.service, self.seconds = service, seconds
        self._wake, self._stopped = threading.Event(), threading.Event()
        self._done = threading.Condition()
        self._asked = self._answered = self.ticks = 0
        service.wake_worker = self.wake

    def wake(self) -> None:
        """Tick as soon as possible (after the current tick, if one runs)."""
        with self._done:
            self._asked += 1
        self._wake.set()

    def run(self) -> None:
        load_accountant()  # here, not inside the first round's close (benchmarks/server_ingest)
        while not self._stopped.is_set():
            self._wake.wait(self.seconds if self.seconds > 0 else None)
            self._wake.clear()
            if self._stopped.is_set():
                return
            with self._done:
                asked = self._asked
            try:
                self.service.tick()
            except Exception:  # noqa: BLE001 - keep ticking; the next tick retries
                log.exception("tick_failed")
            with self._done:
                self._answered, self.ticks = asked, self.ticks + 1
                self._done.notify_all()

    def settle(self, timeout: float = 120.0) -> None:
        """Tick now and wait until that tick is over: afterwards the server has acted on
        everything stored before this call, at its clock's current time (tests)."""
        with self._done:
            self._asked += 1
            want = self._asked
        self._wake.set()
        self._wait(lambda: self._answered >= want, timeout)

    def wait_ticks(self, count: int, timeout: float = 120.0) -> None:
        """Wait until `count` more ticks are over, however they were started (tests)."""
        with self._done:
            want = self.ticks + count
        self._wait(lambda: self.ticks >= want, timeout)

    def _wait(self, done, timeout: float) -> None:
        with self._done:
            if not self._done.wait_for(done, timeout):
                raise TimeoutError(f"the round worker did not tick within {timeout} s")

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
