"""The sender split and the loaders' errors."""
import json
from hashlib import sha256

import numpy as np
import pytest

from data import (DatasetError, ROLES, bucket_of, load_devices, load_split, load_text_file,
                  role_of, typical_histories)


def test_bucket_follows_the_evaluation_protocol():
    sender = "720840be-e522-47ba-9e9f-143f66372673"
    expected = int.from_bytes(sha256(sender.encode()).digest()[:8], "big") % 100
    assert bucket_of(sender) == expected
    assert role_of(sender) == ROLES[0 if expected < 10 else 1 if expected < 80 else 2 if expected < 90 else 3]


def test_split_is_by_sender_and_deterministic():
    devices = load_devices()
    assert len({d.sender for d in devices}) == len(devices) == 1315
    by_role = {role: {d.sender for d in load_split(role)} for role in ROLES}
    assert sum(len(s) for s in by_role.values()) == len(devices)
    for a in ROLES:
        for b in ROLES:
            if a < b:
                assert not by_role[a] & by_role[b]
    assert [d.sender for d in load_split("test")] == [d.sender for d in load_split("test")]
    assert all(90 <= bucket_of(s) for s in by_role["test"])


def test_devices_hold_messages_in_timestamp_order():
    for device in load_split("valid")[:50]:
        assert device.timestamps == sorted(device.timestamps)
        assert len(device.messages) == len(device.timestamps) > 0


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        load_split("train")


def _write(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("content, problem", [
    (b'{"c1": {"messages": [[{"text": "hi", "sender": "a", "timestamp": "2018-05-02T19:38:15Z"}]]',
     "truncated or malformed"),
    (b"[]", "non-empty object"),
    (b'{"c1": {"msgs": []}}', "no 'messages' list"),
    (b'{"c1": {"messages": [[{"text": 5, "sender": "a", "timestamp": "2018-05-02T19:38:15Z"}]]}}',
     "needs string 'text' and 'sender'"),
    (b'{"c1": {"messages": [[{"text": "x", "sender": "a", "timestamp": "yesterday"}]]}}',
     "bad timestamp"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_malformed_corpus_names_file_and_problem(tmp_path, content, problem):
    path = _write(tmp_path, "bad.json", content)
    with pytest.raises(DatasetError, match=problem) as info:
        load_devices(path)
    assert str(path) in str(info.value)


def test_missing_corpus(tmp_path):
    with pytest.raises(DatasetError, match="file not found"):
        load_devices(tmp_path / "nope.json")


def test_small_corpus_loads(tmp_path):
    rows = {"c": {"messages": [[{"text": "second", "sender": "s", "timestamp": "2018-05-02T19:38:20Z"},
                                {"text": "first", "sender": "s", "timestamp": "2018-05-02T19:38:15Z"}]]}}
    path = _write(tmp_path, "ok.json", json.dumps(rows).encode())
    [device] = load_devices(path)
    assert device.messages == ["first", "second"] and device.role == role_of("s")


def test_text_file_loader(tmp_path):
    path = _write(tmp_path, "mine.txt", "\ufeffhello there\n\n  how are you  \r\nünïcödé 🙂\n".encode())
    assert load_text_file(path) == ["hello there", "how are you", "ünïcödé 🙂"]


@pytest.mark.parametrize("content, problem", [
    (b"", "no messages"),
    (b"\n  \n", "no messages"),
    (b"ok\n\xc3\x28 broken\n", "not UTF-8 text \\(line 2"),
    (b"abc\x00def", "NUL byte"),
    (b"x" * 10_001, "over the 10000 limit"),
])
def test_text_file_errors(tmp_path, content, problem):
    path = _write(tmp_path, "t.txt", content)
    with pytest.raises(DatasetError, match=problem) as info:
        load_text_file(path)
    assert str(path) in str(info.value)


def test_text_file_size_limit(tmp_path):
    path = _write(tmp_path, "big.txt", b"hello\n" * 100)
    with pytest.raises(DatasetError, match="over the 50-byte limit"):
        load_text_file(path, max_bytes=50)


def test_typical_histories_are_the_senders_nearest_the_median_and_90th_percentile():
    devices = load_split("valid")
    sizes = sorted(len(d.messages) for d in devices)
    picked = typical_histories("valid")
    for label, q in (("median", 50), ("p90", 90)):
        target = float(np.percentile(sizes, q))
        assert min(abs(s - target) for s in sizes) == abs(len(picked[label]) - target)
    assert len(picked["median"]) < len(picked["p90"])
