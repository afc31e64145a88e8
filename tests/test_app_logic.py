"""The app's plain-Python parts: suggestion edits, settings file, privacy-panel wording."""
import json

import pytest

from keyboard_app.ui import describe
from keyboard_app.ui.editing import apply_suggestion, partial_word, strip_order
from keyboard_app.ui.prefs import FILE_NAME, Prefs, PrefsError, load_prefs, save_prefs


@pytest.mark.parametrize("text, cursor, word, expected", [
    ("", 0, "Hello", ("Hello ", 6)),                       # next word on an empty field
    ("how are y", 9, "you", ("how are you ", 12)),         # completes the partial word
    ("how are ", 8, "you", ("how are you ", 12)),          # appends after a space
    ("hi,", 3, "how", ("hi, how ", 8)),                    # a space after punctuation
    ("see Jo", 6, "john", ("see John ", 9)),               # keeps the user's capital
    ("I don'", 6, "don't", ("I don't ", 8)),               # apostrophes belong to the word
    ("say hel world", 7, "hello", ("say hello world", 10)),  # no double space
])
def test_apply_suggestion(text, cursor, word, expected):
    assert apply_suggestion(text, cursor, word) == expected


def test_partial_word_and_strip_order():
    assert partial_word("how are yo") == "yo"
    assert partial_word("how are ") == ""
    assert partial_word("wow!") == ""
    assert strip_order(["a", "b", "c"]) == ["b", "a", "c"]   # best in the middle
    assert strip_order(["a"]) == ["", "a", ""]
    assert strip_order([]) == ["", "", ""]


def test_prefs_round_trip_and_rejects(tmp_path):
    assert load_prefs(tmp_path) == (Prefs(), None)
    prefs = Prefs(server_url="http://127.0.0.1:8000", participate=False, retention_days=30,
                  filter_emails=False, filter_mode="drop")
    save_prefs(tmp_path, prefs)
    assert load_prefs(tmp_path) == (prefs, None)
    assert prefs.filters().emails is False and prefs.filters().mode == "drop"
    for bad in (Prefs(server_url="ftp://x"), Prefs(server_url="localhost:8000"),
                Prefs(retention_days=0), Prefs(retention_days=True), Prefs(filter_mode="x")):
        with pytest.raises(PrefsError):
            save_prefs(tmp_path, bad)
    assert load_prefs(tmp_path) == (prefs, None)  # a rejected save changed nothing


@pytest.mark.parametrize("content, why", [
    ("{not json", "Expecting"), ("[1]", "not a JSON object"),
    (json.dumps({"colour": "red"}), "unknown keys"),
    (json.dumps({"retention_days": -5}), "retention")])
def test_bad_settings_file_gives_defaults_and_says_why(tmp_path, content, why):
    (tmp_path / FILE_NAME).write_text(content)
    prefs, problem = load_prefs(tmp_path)
    assert prefs == Prefs() and why in problem and FILE_NAME in problem


def test_status_line_says_where_the_model_comes_from():
    text, level = describe.status_line("", None, None, "none", False)
    assert "could not be loaded" in text and "still type" in text and level == "error"
    assert "python" not in text and "`" not in text
    text, level = describe.status_line("", None, 0, "pretrained", False)
    assert text.startswith("Offline") and "v0" in text
    text, level = describe.status_line("http://h:1", {"server_reachable": False}, 3, "global",
                                       False)
    assert "unreachable" in text and "v3" in text and level == "warn"
    text, level = describe.status_line("http://h:1", {"server_reachable": True,
                                                      "state": "training"}, 4, "global", False)
    assert "v4" in text and "learning from your messages" in text and level == "ok"


def test_privacy_lines_report_what_was_sent():
    stats = {"messages": 2, "oldest": 1_700_000_000.0, "retention_days": 90,
             "max_messages": 10_000, "not_stored": {"incognito": 3}, "redacted": 1,
             "filters": {"digits": True, "min_digits": 7, "emails": True, "mode": "redact"}}
    runtime = {"last_participation": 1_700_000_100.0, "last_round_id": 7, "rounds_joined": 2,
               "last_update_bytes": 23_456, "clip_norm": 0.5, "noise_stddev": 0.01,
               "epsilon": 1.234, "epsilon_budget": 8.0, "delta": 1e-5, "state": "no-task",
               "detail": "no round open", "extra": {"secure_aggregation": True}}
    lines = describe.privacy_lines(stats, runtime, version=5, source="global",
                                   server_url="http://h:1", participate=True,
                                   user_paused=False, incognito=False,
                                   now=1_700_000_200.0)
    assert "2 messages" in lines["stored"] and "Kept out or redacted so far: 4" in lines["kept"]
    assert "round 7" in lines["participation"] and "2 round(s)" in lines["participation"]
    assert "23.5 kB" in lines["update"] and "capped (at 0.5)" in lines["update"]
    assert "strength 0.01" in lines["update"] and "only their sum: yes" in lines["update"]
    assert "waiting for the next training round" in lines["learning"]
    for jargon in ("L2", "Gaussian", "std", "no round open", "norm"):
        assert jargon not in " ".join(lines.values()), jargon
    assert "v5" in lines["model"]
    assert "epsilon 1.23 spent by any device, of a budget of 8" in lines["epsilon"]
    empty = describe.privacy_lines({"messages": 0}, None, version=None, source="none",
                                   server_url="", participate=True, user_paused=False,
                                   incognito=True)
    assert "0 messages" in empty["stored"] and "not taken part" in empty["participation"]
    assert "no server" in empty["learning"] and "Incognito is on" in empty["kept"]


def test_command_line_and_no_kivy_outside_the_ui():
    import subprocess
    import sys

    from keyboard_app.__main__ import parse_args
    args = parse_args(["--server", "http://127.0.0.1:8000", "--size", "1280x720"])
    assert args.server == "http://127.0.0.1:8000" and (args.width, args.height) == (1280, 720)
    with pytest.raises(SystemExit):
        parse_args(["--size", "big"])
    code = ("import sys, keyboard_app.runtime, keyboard_app.device, keyboard_app.ui.backend, "
            "keyboard_app.ui.describe, keyboard_app.ui.prefs, keyboard_app.ui.editing; "
            "print('kivy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
