"""The typing history a device keeps for local training: SQLite in the app's data directory.

Never stored: text typed in password fields or in incognito mode, and (by default) long
digit runs such as card or phone numbers and e-mail addresses. Those are *redacted* (the
match is cut out and the rest of the message kept) rather than the whole message dropped:
the words around a number still teach the model, the number itself never reaches disk.
`Filters(mode="drop")` drops such messages whole instead.

Retention (days) and a size cap (messages) are enforced on every write, oldest first.
Deleted rows are overwritten on disk (`PRAGMA secure_delete`).
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, create_engine,
                        delete, event, func, insert, select, update)
from sqlalchemy.pool import StaticPool

# N or more digits, each pair separated by at most two spaces, dashes, dots or parentheses
# ("4111 1111 1111 1111", "+1 (555) 123-4567", "0612345678").
DIGIT_RUN = r"\+?\(?\d(?:[\s\-.()]{0,2}\d){%d,}\)?"
EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"

STORED, REDACTED = "stored", "stored-redacted"
PASSWORD, INCOGNITO, EMPTY = "password-field", "incognito", "empty"
HAS_NUMBER, HAS_EMAIL = "contains-long-number", "contains-email"
EXPIRED = "older-than-retention"


@dataclass(frozen=True)
class Filters:
    """What never reaches the history: long digit runs and e-mail addresses.

    mode "redact" cuts the match out of the message; "drop" refuses the whole message.
    """

    digits: bool = True
    min_digits: int = 7
    emails: bool = True
    mode: str = "redact"

    def __post_init__(self) -> None:
        if self.mode not in ("redact", "drop"):
            raise ValueError(f"filter mode {self.mode!r} not in ('redact', 'drop')")
        if self.min_digits < 2:
            raise ValueError("min_digits must be at least 2")

    def patterns(self) -> list[tuple[re.Pattern, str]]:
        found = []
        if self.emails:  # before digits: an address may hold a digit run
            found.append((re.compile(EMAIL), HAS_EMAIL))
        if self.digits:
            found.append((re.compile(DIGIT_RUN % (self.min_digits - 1)), HAS_NUMBER))
        return found


def filter_message(text: str, filters: Filters = Filters(), *, incognito: bool = False,
                   password: bool = False) -> tuple[str | None, str]:
    """The text to store (or None) and why: one of the reason constants of this module."""
    if password:
        return None, PASSWORD
    if incognito:
        return None, INCOGNITO
    removed = None
    for pattern, why in filters.patterns():
        if pattern.search(text):
            if filters.mode == "drop":
                return None, why
            text, removed = pattern.sub(" ", text), why
    text = " ".join(text.split())
    if not text:
        return None, removed or EMPTY
    return text, REDACTED if removed else STORED


_meta = MetaData()
_messages = Table("messages", _meta,
                  Column("id", Integer, primary_key=True),
                  Column("ts", Float, nullable=False, index=True),
                  Column("text", Text, nullable=False))
_counters = Table("counters", _meta,
                  Column("name", String(40), primary_key=True),
                  Column("value", Integer, nullable=False))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class HistoryStore:
    """Messages the user typed, with time stamps, for on-device training only.

    `path` is a file (created with mode 0600) or ":memory:". Thread-safe.
    """

    def __init__(self, path: str | Path, retention_days: float | None = 90,
                 max_messages: int | None = 10_000, filters: Filters = Filters(),
                 clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self.retention_days = retention_days
        self.max_messages = max_messages
        self.filters = filters
        self.clock = clock
        self.last_reason: str | None = None
        self._lock = threading.Lock()
        if self.path == ":memory:":
            self.engine = create_engine("sqlite://", poolclass=StaticPool,
                                        connect_args={"check_same_thread": False})
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self.engine = create_engine(f"sqlite:///{self.path}",
                                        connect_args={"check_same_thread": False})
        event.listen(self.engine, "connect", _sqlite_pragmas)
        _meta.create_all(self.engine)

    def add(self, text: str, *, incognito: bool = False, password: bool = False,
            timestamp: float | None = None) -> bool:
        """Store one message; False when it was not stored (`last_reason` says why)."""
        clean, reason = filter_message(text, self.filters, incognito=incognito,
                                       password=password)
        ts = self.clock() if timestamp is None else float(timestamp)
        if clean is not None and self._expired(ts):
            clean, reason = None, EXPIRED
        with self._lock, self.engine.begin() as conn:
            self.last_reason = reason
            self._bump(conn, reason)
            if clean is None:
                return False
            conn.execute(insert(_messages).values(ts=ts, text=clean))
            self._prune(conn)
        return True

    def add_many(self, texts: list[str], timestamps: list[float] | None = None) -> int:
        """Store many messages (an import, filtered alike); returns how many were stored.

        The size cap still applies: beyond it the oldest are dropped at once.
        """
        now = self.clock()
        rows, reasons = [], {}
        for i, text in enumerate(texts):
            clean, reason = filter_message(text, self.filters)
            ts = float(timestamps[i]) if timestamps else now
            if clean is not None and self._expired(ts):
                clean, reason = None, EXPIRED
            reasons[reason] = reasons.get(reason, 0) + 1
            if clean is not None:
                rows.append({"ts": ts, "text": clean})
        with self._lock, self.engine.begin() as conn:
            for reason, n in reasons.items():
                self._bump(conn, reason, n)
            if rows:
                conn.execute(insert(_messages), rows)
            self._prune(conn)
        return len(rows)

    def messages(self, since: float | None = None, limit: int | None = None) -> list[str]:
        """Stored messages in time order (the most recent `limit` of them if given)."""
        query = select(_messages.c.text)
        if since is not None:
            query = query.where(_messages.c.ts > since)
        if limit is not None:
            query = query.order_by(_messages.c.ts.desc(), _messages.c.id.desc()).limit(limit)
        else:
            query = query.order_by(_messages.c.ts, _messages.c.id)
        with self._lock, self.engine.begin() as conn:
            self._prune(conn)
            texts = list(conn.execute(query).scalars())
        return texts[::-1] if limit is not None else texts

    def count(self, since: float | None = None) -> int:
        """How many messages are stored (newer than `since` if given)."""
        query = select(func.count()).select_from(_messages)
        if since is not None:
            query = query.where(_messages.c.ts > since)
        with self._lock, self.engine.begin() as conn:
            self._prune(conn)
            return int(conn.execute(query).scalar_one())

    def oldest(self) -> float | None:
        """Time stamp of the oldest stored message, or None when empty."""
        return self._scalar(func.min(_messages.c.ts))

    def newest(self) -> float | None:
        """Time stamp of the newest stored message, or None when empty."""
        return self._scalar(func.max(_messages.c.ts))

    def delete_all(self) -> int:
        """Delete every stored message ("delete everything"); returns how many."""
        with self._lock, self.engine.begin() as conn:
            deleted = conn.execute(delete(_messages)).rowcount
            conn.execute(delete(_counters))
        if self.path != ":memory:":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("VACUUM")
        return deleted

    def stats(self) -> dict:
        """Counts for a privacy panel: stored, oldest/newest, limits, what was kept out."""
        with self._lock, self.engine.begin() as conn:
            self._prune(conn)
            count, oldest, newest, chars = conn.execute(select(
                func.count(), func.min(_messages.c.ts), func.max(_messages.c.ts),
                func.coalesce(func.sum(func.length(_messages.c.text)), 0))).one()
            counters = dict(conn.execute(select(_counters.c.name, _counters.c.value)).all())
        return {"messages": int(count), "characters": int(chars), "oldest": oldest,
                "newest": newest, "retention_days": self.retention_days,
                "max_messages": self.max_messages,
                "not_stored": {k: v for k, v in counters.items() if k not in (STORED, REDACTED)},
                "redacted": counters.get(REDACTED, 0),
                "filters": {"digits": self.filters.digits, "min_digits": self.filters.min_digits,
                            "emails": self.filters.emails, "mode": self.filters.mode}}

    def close(self) -> None:
        self.engine.dispose()

    def _scalar(self, expression) -> float | None:
        with self._lock, self.engine.begin() as conn:
            self._prune(conn)
            return conn.execute(select(expression)).scalar_one()

    def _bump(self, conn, reason: str, n: int = 1) -> None:
        done = conn.execute(update(_counters).where(_counters.c.name == reason)
                            .values(value=_counters.c.value + n)).rowcount
        if not done:
            conn.execute(insert(_counters).values(name=reason, value=n))

    def _expired(self, ts: float) -> bool:
        return self.retention_days is not None and \
            ts < self.clock() - self.retention_days * 86_400

    def _prune(self, conn) -> None:
        """Drop messages past the retention period, then the oldest beyond the cap."""
        if self.retention_days is not None:
            cutoff = self.clock() - self.retention_days * 86_400
            conn.execute(delete(_messages).where(_messages.c.ts < cutoff))
        if self.max_messages is not None and conn.execute(
                select(func.count()).select_from(_messages)).scalar_one() > self.max_messages:
            keep = (select(_messages.c.id).order_by(_messages.c.ts.desc(), _messages.c.id.desc())
                    .limit(self.max_messages))
            conn.execute(delete(_messages).where(_messages.c.id.not_in(keep)))
