"""The server's time: every deadline, lease, retry and timestamp reads one injected clock.

`SystemClock` is the wall clock (seconds since the epoch). `ManualClock` stands still until
a test moves it (`advance`), so tests step through round deadlines, phase deadlines, leases
and retry backoff instead of sleeping through them; after moving it a test calls
`RoundService.tick()` (or settles the round worker) to let the server act on the new time.
`OffsetClock` moves real server processes' time: the wall clock plus seconds kept in a
file that every process sharing it reads (setting `clock_offset_file`, tests only).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
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


class OffsetClock:
    """The wall clock plus the seconds written in `path` (0 while it does not exist)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def offset(self) -> float:
        try:
            return float(self.path.read_text() or 0.0)
        except FileNotFoundError:
            return 0.0

    def __call__(self) -> float:
        return time.time() + self.offset()

    def advance(self, seconds: float) -> float:
        """Move every process reading `path` forward by `seconds`; the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(repr(self.offset() + seconds))
        tmp.replace(self.path)  # readers see the old offset or the new one, whole
        return self()
