"""The device's own privacy ledger: every round its update went out in, and what it cost.

One SQLite file in the device's data directory, beside the history but separate from it:
deleting the history, losing the server token, enrolling again or switching servers leaves
it untouched (privacy spent stays spent). A row is written when the update is *sent*,
before the server answers (a server could keep an update and still answer with an error),
and marked accepted when the server says so. The device's epsilon composes the noise
multipliers the server could see in every row (`federated.privacy.composed_epsilon`,
Google's `dp-accounting`), at the policy's delta. Refused tasks are recorded too.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from federated.privacy import composed_epsilon
from keyboard_app.privacy_policy import PolicyRefusal, RoundTerms

FILE_NAME = "privacy_ledger.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, server TEXT NOT NULL, round_id INTEGER NOT NULL,
    clip_norm REAL NOT NULL, noise_multiplier REAL NOT NULL, noise_stddev REAL NOT NULL,
    secure INTEGER NOT NULL, min_reports INTEGER NOT NULL, visible_multiplier REAL NOT NULL,
    seen TEXT NOT NULL, accepted INTEGER, own_multiplier REAL);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, server TEXT NOT NULL, round_id INTEGER,
    code TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL);
"""


@dataclass(frozen=True)
class LedgerEntry:
    """One round this device's update went out in."""

    id: int
    ts: float
    server: str
    round_id: int
    clip_norm: float
    noise_multiplier: float
    noise_stddev: float
    secure: bool
    min_reports: int
    visible_multiplier: float
    seen: str  # what the server could see, in words
    accepted: bool | None  # None: sent, the server's answer never came


def what_the_server_saw(terms: RoundTerms) -> str:
    """What the server could see of this device's update, in plain words."""
    if terms.secure:
        return (f"only the sum of at least {terms.min_reports} phones' updates, never this "
                f"phone's own (secure aggregation); this phone added noise of std "
                f"{terms.noise_stddev:.3g}, its share of the round's noise")
    spec = terms.compression
    sent = "" if spec is None else \
        f" (rounded to {2 * spec.levels + 1} levels after the noise)"
    return (f"this phone's update itself (no secure aggregation){sent}, clipped to "
            f"{terms.sent_clip_norm:.3g} with noise of std {terms.noise_stddev:.3g} added on the "
            f"phone: the full noise of the round")


class PrivacyLedger:
    """The ledger file at `path` (created with mode 0600). Thread-safe."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        with self._connect() as db:
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(rounds)")}
            if "own_multiplier" not in columns:  # a ledger from before compressed rounds
                db.execute("ALTER TABLE rounds ADD COLUMN own_multiplier REAL")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def _write(self, sql: str, args: tuple) -> int:
        with self._lock, self._connect() as db:
            return int(db.execute(sql, args).lastrowid)

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock, self._connect() as db:
            return db.execute(sql, args).fetchall()

    def record_sent(self, server: str, round_id: int, terms: RoundTerms,
                    seen: str | None = None) -> int:
        """A row for an update (or evaluation report, `seen` saying so) about to leave the
        device; returns its id."""
        return self._write(
            "INSERT INTO rounds (ts, server, round_id, clip_norm, noise_multiplier, "
            "noise_stddev, secure, min_reports, visible_multiplier, seen, own_multiplier) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.clock(), server, round_id, terms.clip_norm, terms.noise_multiplier,
             terms.noise_stddev, int(terms.secure), terms.min_reports,
             terms.visible_multiplier, seen or what_the_server_saw(terms), terms.own))

    def mark(self, entry_id: int, accepted: bool) -> None:
        """The server's answer to the update of row `entry_id`."""
        self._write("UPDATE rounds SET accepted = ? WHERE id = ?", (int(accepted), entry_id))

    def record_refusal(self, server: str, round_id: int | None, refusal: PolicyRefusal) -> None:
        self._write("INSERT INTO refusals (ts, server, round_id, code, reason, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (self.clock(), server, round_id, refusal.code, refusal.reason,
                     refusal.detail))

    def entries(self) -> list[LedgerEntry]:
        """Every round, oldest first."""
        rows = self._read("SELECT id, ts, server, round_id, clip_norm, noise_multiplier, "
                          "noise_stddev, secure, min_reports, visible_multiplier, seen, "
                          "accepted FROM rounds ORDER BY id")
        return [LedgerEntry(*row[:7], bool(row[7]), *row[8:11],
                            None if row[11] is None else bool(row[11])) for row in rows]

    def refusals(self, limit: int = 20) -> list[dict]:
        """The latest refused tasks, newest first."""
        rows = self._read("SELECT ts, server, round_id, code, reason, detail FROM refusals "
                          "ORDER BY id DESC LIMIT ?", (limit,))
        keys = ("ts", "server", "round_id", "code", "reason", "detail")
        return [dict(zip(keys, row)) for row in rows]

    def multipliers(self) -> list[float]:
        """The noise multiplier the server could see, for every update that went out."""
        return [row[0] for row in self._read("SELECT visible_multiplier FROM rounds")]

    def own_multipliers(self) -> list[float]:
        """The multiplier of the noise this device added itself, for every update that went
        out: what protects it if every other report of its rounds came from a fake device
        (rows from before the column: their noise over C, as float rounds have it)."""
        return [row[0] for row in self._read(
            "SELECT COALESCE(own_multiplier, noise_stddev / clip_norm) FROM rounds")]

    def epsilon(self, delta: float) -> float:
        """This device's epsilon at `delta` over every round in the ledger."""
        return composed_epsilon(self.multipliers(), delta)

    def revision(self) -> tuple[int, ...]:
        """Changes whenever a row is added or marked (a cheap cache key)."""
        return tuple(self._read("SELECT (SELECT count(*) FROM rounds), "
                                "(SELECT count(accepted) FROM rounds), "
                                "(SELECT count(*) FROM refusals)")[0])

    def summary(self, delta: float) -> dict:
        """Counts and epsilon for the status and the privacy panel."""
        entries = self.entries()
        return {"rounds": sum(1 for e in entries if e.accepted),
                "sent": len(entries), "epsilon": self.epsilon(delta),
                "epsilon_alone": composed_epsilon(self.own_multipliers(), delta),
                "last": entries[-1] if entries else None}
