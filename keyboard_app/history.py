"""The typing history a device keeps for local training: SQLite in the app's data directory.

Never stored: text typed in password fields or in incognito mode, and (by default) long
digit runs such as phone numbers however they are spaced, payment card numbers (Luhn),
IBAN-like account numbers and e-mail addresses. Those are *redacted* (the
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

# Digits joined by up to three separators of the kinds people type in numbers: spaces,
# dashes, dots, slashes, underscores, parentheses ("4111 - 1111 - 1111 - 1111",
# "+1 (555) 123-4567", "555/123/4567", "4111_1111_1111_1111"). How many digits make a
# run sensitive is decided per match (`Filters.min_digits`), so one regex finds them all.
SEPARATOR = r"[\s\-./_()]"
DIGIT_RUN = rf"\+?\(?\d(?:{SEPARATOR}{{0,3}}\d)*\)?"
# Kept although they may have 7+ digits: a date or a range of years standing alone (not
# followed by more digits), e.g. "12/10/2024", "2024-03-15", "15.03.2024", "2019-2024".
_ALONE = rf"(?!{SEPARATOR}{{0,3}}\d)"
DATE = (rf"(?:(?P<d1>\d{{1,2}})(?P<s>[/.\-])(?P<d2>\d{{1,2}})(?P=s)(?P<y>(?:19|20)?\d\d)"
        rf"|(?P<iy>(?:19|20)\d\d)-(?P<im>\d\d)-(?P<id>\d\d)"
        rf"|(?:19|20)\d\d ?[\-/] ?(?:19|20)\d\d){_ALONE}")
# Two letters, two check digits, then 11 to 30 letters or digits, run together or in
# groups of four ("GB82WEST12345698765432", "DE89 3704 0044 0532 0130 00"); it must hold
# at least 6 digits in all.
IBAN = (r"\b[A-Za-z]{2}\d{2}(?:[A-Za-z0-9]{11,30}"
        r"|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,3})?)\b")
EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"

STORED, REDACTED = "stored", "stored-redacted"
PASSWORD, INCOGNITO, EMPTY = "password-field", "incognito", "empty"
HAS_NUMBER, HAS_EMAIL = "contains-long-number", "contains-email"
HAS_CARD, HAS_IBAN = "contains-card-number", "contains-bank-account"
EXPIRED = "older-than-retention"


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of payment card numbers."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _is_date(match: re.Match) -> bool:
    """A plausible calendar date (day and month in range, either order) or a year range."""
    parts = match.groupdict()
    if parts["iy"]:
        return 1 <= int(parts["im"]) <= 12 and 1 <= int(parts["id"]) <= 31
    if parts["d1"]:
        a, b = int(parts["d1"]), int(parts["d2"])
        return 1 <= min(a, b) and max(a, b) <= 31 and min(a, b) <= 12
    return True


@dataclass(frozen=True)
class Filters:
    """What never reaches the history: long digit runs, card and account numbers (`digits`)
    and e-mail addresses (`emails`).

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

    def patterns(self) -> list[tuple[re.Pattern, Callable[[re.Match], bool], str]]:
        """(pattern, whether a match must go, reason), applied in this order."""
        found: list[tuple[re.Pattern, Callable[[re.Match], bool], str]] = []
        if self.emails:  # before digits: an address may hold a digit run
            found.append((_EMAIL, lambda m: True, HAS_EMAIL))
        if self.digits:
            found.append((_IBAN, lambda m: sum(c.isdigit() for c in m[0]) >= 6, HAS_IBAN))
            found.append((_RUN, _is_card, HAS_CARD))
            found.append((_RUN, lambda m: (m["run"] is not None or not _is_date(m))
                          and len(_digits(m)) >= self.min_digits, HAS_NUMBER))
        return found


_EMAIL, _IBAN = re.compile(EMAIL), re.compile(IBAN)
_RUN = re.compile(rf"(?P<date>{DATE})|(?P<run>{DIGIT_RUN})")


def _digits(match: re.Match) -> str:
    return "".join(c for c in match[0] if c.isdigit())


def _is_card(match: re.Match) -> bool:
    """A payment card number: 13 to 19 digits passing the Luhn check (whatever min_digits)."""
    digits = _digits(match)
    return match["run"] is not None and 13 <= len(digits) <= 19 and luhn_valid(digits)


def filter_message(text: str, filters: Filters = Filters(), *, incognito: bool = False,
                   password: bool = False) -> tuple[str | None, str]:
    """The text to store (or None) and why: one of the reason constants of this module."""
    if password:
        return None, PASSWORD
    if incognito:
        return None, INCOGNITO
    removed = None
    for pattern, sensitive, why in filters.patterns():
        if not any(sensitive(m) for m in pattern.finditer(text)):
            continue
        if filters.mode == "drop":
            return None, why
        text, removed = pattern.sub(lambda m: " " if sensitive(m) else m[0], text), why
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
