"""Time, for the server and the device alike: whatever reads a deadline, a lease, a retry or a
timestamp calls one injected clock.

`SystemClock` is the wall clock (seconds since the epoch). `ManualClock` stands still until
a test moves it (`advance`), so tests step through deadlines instead of sleeping through
them. (The server's `OffsetClock`, which moves real server processes' time, is in
`aggregation_server.clock`.)
"""
from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Seconds since the epoch, as a float (call it)."""

    def __call__(self) -> float: ...


class SystemClock:
    """The wall clock."""

    def __call__(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told: starts at the wall clock's time (or `start`)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (>= 0); the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self.now += seconds
            return self.now
