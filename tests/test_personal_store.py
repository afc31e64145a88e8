"""The personal store: SQLite beside the history, kept across restarts, removal, pause,
deletion, and export/import of the dictionary (a hostile file changes nothing)."""
import os
import sqlite3
import stat

import pytest

from keyboard_app.personal_store import MAX_IMPORT_BYTES, PersonalStore
from model.personal import DICTIONARY_HEADER, DictionaryError


def rows(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT * FROM grams")) + sorted(db.execute(
            "SELECT * FROM forms"))


@pytest.fixture
def store(tmp_path):
    store = PersonalStore(tmp_path / "personal.sqlite")
    store.learn("Met Zorblat at the lake")
    store.learn("zorblat and my iPhone")
    yield store
    store.close()


def test_counts_survive_a_restart_and_the_file_is_private(store, tmp_path):
    path = tmp_path / "personal.sqlite"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = PersonalStore(path)
    assert dict(again.model.grams()) == dict(store.model.grams())
    assert again.model.unigrams["zorblat"] == 2 and again.model.total == store.model.total
    assert again.model.form("iphone") == "iPhone" and again.model.form("zorblat") == "Zorblat"
    assert again.model.followers[("met", "zorblat")] == {"at": 1}
    again.close()


def test_pause_is_kept_and_stops_learning(store, tmp_path):
    store.set_paused(True)
    assert store.learn("Blorptastic weather") == []
    assert "blorptastic" not in store.model.unigrams
    again = PersonalStore(tmp_path / "personal.sqlite")
    assert again.paused and "blorptastic" not in again.model.unigrams
    again.set_paused(False)
    assert again.learn("Blorptastic weather") and not again.paused
    again.close()


def test_remove_forgets_the_word_on_disk_too(store, tmp_path):
    assert store.remove("zorblat") == 2
    assert not any("zorblat" in row for row in rows(tmp_path / "personal.sqlite"))
    again = PersonalStore(tmp_path / "personal.sqlite")
    assert "zorblat" not in again.model.unigrams and again.model.unigrams["lake"] == 1
    again.close()


def test_delete_all_empties_the_file(store, tmp_path):
    version = store.model.version
    assert store.delete_all() == 8
    assert rows(tmp_path / "personal.sqlite") == []
    assert store.model.total == 0 and store.model.version > version
    assert b"zorblat" not in (tmp_path / "personal.sqlite").read_bytes()


def test_export_then_import_elsewhere(store, tmp_path):
    target = tmp_path / "backup" / "words.txt"
    target.parent.mkdir()
    assert store.export_to(target) == 8
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    lines = target.read_text().splitlines()
    assert lines[0] == DICTIONARY_HEADER and "zorblat\t2\tZorblat" in lines and "iphone\t1\tiPhone" in lines
    other = PersonalStore(tmp_path / "other.sqlite")
    other.learn("zorblat zorblat zorblat")
    assert other.import_from(target) == 8  # zorblat keeps its larger count, gets its form
    assert other.model.unigrams["zorblat"] == 3 and other.model.unigrams["lake"] == 1
    assert other.model.form("iphone") == "iPhone" and other.model.form("zorblat") == "Zorblat"
    assert other.import_from(target) == 0  # importing twice changes nothing
    reopened = PersonalStore(tmp_path / "other.sqlite")
    assert dict(reopened.model.grams()) == dict(other.model.grams())
    for s in (other, reopened):
        s.close()


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a text file"),
    (b"zorblat\t3\n", "not a personal dictionary"),
    ((DICTIONARY_HEADER + "\nok\t2\nrm -rf /\t1\n").encode(), "Line 3"),
    ((DICTIONARY_HEADER + "\n" + "word\t1\n" * 10).encode() + b"x" * MAX_IMPORT_BYTES,
     "larger than"),
])
def test_a_hostile_or_malformed_import_changes_nothing(store, tmp_path, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    before, grams = rows(tmp_path / "personal.sqlite"), dict(store.model.grams())
    with pytest.raises(DictionaryError, match=message):
        store.import_from(bad)
    assert rows(tmp_path / "personal.sqlite") == before
    assert dict(store.model.grams()) == grams


def test_an_export_saved_again_by_an_editor_with_a_byte_order_mark_imports(store, tmp_path):
    """Notepad and some phone editors write UTF-8 with a BOM: the header was then refused as
    'not a personal dictionary file' although it is one."""
    target = tmp_path / "words.txt"
    store.export_to(target)
    target.write_bytes(b"\xef\xbb\xbf" + target.read_text().replace("\n", "\r\n").encode())
    other = PersonalStore(tmp_path / "other.sqlite")
    assert other.import_from(target) == 8
    assert other.model.unigrams["zorblat"] == 2 and other.model.form("zorblat") == "Zorblat"
    other.close()


def test_missing_file_and_folder_targets_say_so(store, tmp_path):
    with pytest.raises(DictionaryError, match="There is no file .*nowhere.txt"):
        store.import_from(tmp_path / "nowhere.txt")
    with pytest.raises(DictionaryError, match="is a folder: give the file to read"):
        store.import_from(tmp_path)
    with pytest.raises(DictionaryError, match="is a folder"):
        store.export_to(tmp_path)
    other = tmp_path / "photo.jpg"
    other.write_bytes(b"\xff\xd8\xff not a dictionary")
    with pytest.raises(DictionaryError, match="already exists and is not a personal dictionary"):
        store.export_to(other)
    assert other.read_bytes() == b"\xff\xd8\xff not a dictionary"
    with pytest.raises(DictionaryError, match="There is no folder .*/no/such: choose a folder "
                                              "that exists"):
        store.export_to(tmp_path / "no" / "such" / "folder.txt")
    with pytest.raises(DictionaryError, match="This app may not write /sys/words.txt: choose "
                                              "another folder"):
        store.export_to("/sys/words.txt")              # refused even to root


def test_learned_words_survive_a_restart_and_a_new_model(tmp_path):
    """The app's backend: a word learned before a restart is suggested after it, by the
    pre-trained model and by a new global model with another tokenizer alike."""
    import kivy_env  # noqa: F401  (no Kivy imported: the backend is plain Python)
    from keyboard_app.ui.backend import Backend
    from keyboard_app.ui.prefs import Prefs
    from model.predictor import Predictor
    model, tokenizer = kivy_env.tiny_model()
    backend = Backend(tmp_path / "device", Prefs(), pretrained_model=model,
                      tokenizer_path=tokenizer)
    backend.history.add("Yesterday we met Zorblat at the lake")
    backend.learn_personal("Yesterday we met Zorblat at the lake", None)
    backend.close()
    again = Backend(tmp_path / "device", Prefs(), pretrained_model=model,
                    tokenizer_path=tokenizer)
    ready = again.load_pretrained()
    assert ready.predictor.suggest("we met at zo")[0] == "Zorblat"
    other_model, other_tokenizer = kivy_env.build_tiny_model(tmp_path / "other", messages=300)
    newer = again.personalise(Predictor.from_checkpoint(other_model, other_tokenizer))
    assert newer.tokenizer.sha256 != ready.predictor.tokenizer.sha256
    assert newer.suggest("we met at zo")[0] == "Zorblat"
    again.close()


def test_the_recent_words_survive_a_restart_but_never_from_a_paused_message(tmp_path):
    """The recent-words cache comes back from the store, not from the history: a message
    sent while learning was paused (the history keeps it) lends no word to it after a
    restart, and a removed word leaves it on disk too."""
    import kivy_env  # noqa: F401  (no Kivy imported: the backend is plain Python)
    from keyboard_app.ui.backend import Backend
    from keyboard_app.ui.prefs import Prefs
    model, tokenizer = kivy_env.tiny_model()
    backend = Backend(tmp_path / "device", Prefs(), pretrained_model=model,
                      tokenizer_path=tokenizer)
    for text, paused in (("see you at the lake", False), ("meet me at the harbour", True)):
        backend.personal.set_paused(paused)
        backend.history.add(text)
        backend.learn_personal(text, None)
    assert list(backend.personal.model.recent) == ["see", "you", "at", "the", "lake"]
    assert backend.history.count() == 2
    backend.close()
    again = Backend(tmp_path / "device", Prefs(), pretrained_model=model,
                    tokenizer_path=tokenizer)
    assert list(again.personal.model.recent) == ["see", "you", "at", "the", "lake"]
    again.personal.remove("lake")
    again.close()
    store = PersonalStore(tmp_path / "device" / "personal.sqlite")
    assert list(store.model.recent) == ["see", "you", "at", "the"]
    store.close()
    store = PersonalStore(tmp_path / "device" / "personal.sqlite")
    store.delete_all()
    assert b"lake" not in (tmp_path / "device" / "personal.sqlite").read_bytes()
    assert not PersonalStore(tmp_path / "device" / "personal.sqlite").model.recent
    store.close()


def test_recent_words_older_than_the_history_s_retention_are_not_loaded(tmp_path):
    """The cache keeps when each message was learned: after a restart, the words of
    messages the history's retention has expired are gone from it too."""
    now = [1_000_000.0]
    path = tmp_path / "personal.sqlite"
    store = PersonalStore(path, retention_days=7, clock=lambda: now[0])
    store.learn("an old message")
    now[0] += 6 * 86_400
    store.learn("a newer one")
    store.close()
    assert list(PersonalStore(path, retention_days=7, clock=lambda: now[0]).model.recent
                ) == ["an", "old", "message", "a", "newer", "one"]
    now[0] += 2 * 86_400  # the first message is 8 days old
    again = PersonalStore(path, retention_days=7, clock=lambda: now[0])
    assert list(again.model.recent) == ["a", "newer", "one"]
    assert again.model.unigrams["old"] == 1  # the counts are kept: learned words stay
    again.learn("and more")
    again.close()
    assert list(PersonalStore(path, retention_days=7, clock=lambda: now[0]).model.recent
                ) == ["a", "newer", "one", "and", "more"]
