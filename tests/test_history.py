"""The typing history: filters, incognito, password fields, retention, cap, delete, stats."""
import os
import stat
import threading

import pytest

from keyboard_app.history import (EMPTY, EXPIRED, HAS_EMAIL, HAS_NUMBER, INCOGNITO, PASSWORD,
                                  REDACTED, STORED, Filters, HistoryStore, filter_message)

DAY = 86_400.0


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = HistoryStore(tmp_path / "history.sqlite", clock=clock)
    yield s
    s.close()


def test_stores_in_time_order_with_timestamps(store, clock):
    assert store.add("second message", timestamp=clock.now - 10)
    assert store.add("first message", timestamp=clock.now - 20)
    assert store.add("third message")
    assert store.messages() == ["first message", "second message", "third message"]
    assert store.count() == 3
    assert store.oldest() == clock.now - 20 and store.newest() == clock.now
    assert store.messages(since=clock.now - 15) == ["second message", "third message"]
    assert store.count(since=clock.now - 15) == 2
    assert store.messages(limit=2) == ["second message", "third message"]


def test_file_is_private_and_survives_reopening(tmp_path, clock):
    path = tmp_path / "h.sqlite"
    HistoryStore(path, clock=clock).add("hello there")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert HistoryStore(path, clock=clock).messages() == ["hello there"]


def test_password_and_incognito_are_never_stored(store, tmp_path):
    assert not store.add("hunter2 secret pass", password=True)
    assert store.last_reason == PASSWORD
    assert not store.add("a private thought", incognito=True)
    assert store.last_reason == INCOGNITO
    assert store.count() == 0
    assert store.stats()["not_stored"] == {PASSWORD: 1, INCOGNITO: 1}
    raw = (tmp_path / "history.sqlite").read_bytes()
    assert b"hunter2" not in raw and b"private thought" not in raw


@pytest.mark.parametrize("text, kept", [
    ("my card is 4111 1111 1111 1111 thanks", "my card is thanks"),
    ("call +1 (555) 123-4567 tonight", "call tonight"),
    ("number 0612345678", "number"),
    ("write to jane.doe+x@mail.example.org asap", "write to asap"),
    ("i owe you 25 dollars and 123456 points", "i owe you 25 dollars and 123456 points"),
])
def test_redaction_removes_numbers_and_emails(store, text, kept, tmp_path):
    assert store.add(text)
    assert store.messages() == [kept]
    assert store.last_reason == (STORED if kept == text else REDACTED)
    raw = (tmp_path / "history.sqlite").read_bytes()
    assert b"4111" not in raw and b"4567" not in raw and b"@mail" not in raw


def test_drop_mode_refuses_the_whole_message(tmp_path, clock):
    store = HistoryStore(tmp_path / "d.sqlite", filters=Filters(mode="drop"), clock=clock)
    assert not store.add("call 555-123-4567")
    assert store.last_reason == HAS_NUMBER
    assert not store.add("mail me at a@b.com")
    assert store.last_reason == HAS_EMAIL
    assert store.add("nothing sensitive here")
    assert store.messages() == ["nothing sensitive here"]
    assert store.stats()["not_stored"] == {HAS_NUMBER: 1, HAS_EMAIL: 1}


def test_filters_are_configurable():
    assert filter_message("id 1234567", Filters(digits=False)) == ("id 1234567", STORED)
    assert filter_message("id 1234", Filters(min_digits=4)) == ("id", REDACTED)
    assert filter_message("a@b.org", Filters(emails=False)) == ("a@b.org", STORED)
    assert filter_message("a@b.org") == (None, HAS_EMAIL)
    assert filter_message("   ") == (None, EMPTY)
    with pytest.raises(ValueError, match="mode"):
        Filters(mode="mask")


def test_retention_drops_old_messages(tmp_path, clock):
    store = HistoryStore(tmp_path / "r.sqlite", retention_days=30, clock=clock)
    assert not store.add("old one", timestamp=clock.now - 40 * DAY)
    assert store.last_reason == EXPIRED
    assert store.add("recent one", timestamp=clock.now - 10 * DAY)
    assert store.add_many(["older", "newer"], [clock.now - 31 * DAY, clock.now - 29 * DAY]) == 1
    assert store.messages() == ["newer", "recent one"]  # time order, not insertion order
    clock.now += 2 * DAY
    assert store.messages() == ["recent one"]
    clock.now += 25 * DAY  # the recent one is now 35 days old
    assert store.count() == 0 and store.oldest() is None


def test_size_cap_drops_oldest_first(tmp_path, clock):
    store = HistoryStore(tmp_path / "c.sqlite", max_messages=3, clock=clock)
    for i in range(5):
        clock.now += 1
        store.add(f"message {i}")
    assert store.messages() == ["message 2", "message 3", "message 4"]
    assert store.add_many([f"bulk {i}" for i in range(10)]) == 10
    assert store.count() == 3


def test_delete_all_empties_the_store_and_the_file(store, tmp_path):
    store.add("something quite memorable")
    store.add("x", password=True)
    assert store.delete_all() == 1
    assert store.count() == 0 and store.messages() == []
    assert store.stats()["not_stored"] == {}
    assert b"memorable" not in (tmp_path / "history.sqlite").read_bytes()


def test_stats_for_the_privacy_panel(store, clock):
    store.add("hello world", timestamp=clock.now - 5)
    store.add("call 5551234567 now")
    stats = store.stats()
    assert stats["messages"] == 2
    assert stats["characters"] == len("hello world") + len("call now")
    assert stats["oldest"] == clock.now - 5 and stats["newest"] == clock.now
    assert stats["redacted"] == 1
    assert stats["retention_days"] == 90 and stats["max_messages"] == 10_000
    assert stats["filters"]["mode"] == "redact"


def test_in_memory_store_and_threads():
    store = HistoryStore(":memory:", retention_days=None, max_messages=None)
    threads = [threading.Thread(target=lambda i=i: [store.add(f"t{i} m{j}") for j in range(20)])
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count() == 80
