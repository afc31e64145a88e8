"""The server's time: every deadline, lease, retry and timestamp reads one injected clock
(`federated.clock`: `Clock`, the wall clock `SystemClock`, and `ManualClock`, which stands
still until a test moves it; after moving it a test calls `RoundService.tick()` or settles
the round worker to let the server act on the new time).

`OffsetClock` moves real server processes' time: the wall clock plus seconds kept in a
file that every process sharing it reads (setting `clock_offset_file`, tests only).
"""
from __future__ import annotations

import time
from pathlib import Path


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
