"""The person's learned words on the device: SQLite beside the typing history.

`personal.sqlite` in the app's data folder (created with mode 0600, deleted rows overwritten
on disk) holds every count of `model.personal.PersonalModel` (1- to 3-grams, by word, never by
token id: a new global model or tokenizer keeps them), the forms written with capitals,
the last words learned with when (the layer's recent-words cache, so a restart keeps it
without reading the history, which also holds what was sent while learning was paused; words
older than the history's retention are not loaded), whether
learning is paused, and what the layer learned of how much of it suits the person
(`model.personal.Adaptation`, as JSON; with the unigram scaling on, also how often the person
typed each word and the global model's summed probabilities by word id: removing a word
removes its count there too). It learns only what the history store kept (after its filters:
never incognito or password fields, never long numbers or e-mail addresses), is deleted with
the history, and nothing in it is ever sent.

Export writes the personal dictionary as plain text (`model.personal.dictionary_text`:
a header line, then `word<TAB>times used[<TAB>how it is written]`), replacing an earlier
export but never another file the person happened to name; import reads the same
format (a UTF-8 byte order mark, which some editors add, is allowed), checks all of it before
changing anything, and keeps the larger count of a word.
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from device_model.files import write_atomic
from model.personal import (DICTIONARY_HEADER, ORDER, RECENT, Adaptation, DictionaryError, Gram,
                            PersonalModel, dictionary_text, parse_dictionary)

FILE_NAME = "personal.sqlite"
MAX_IMPORT_BYTES = 4_000_000
_WORDS = ", ".join(f"w{i}" for i in range(ORDER))  # a gram's words, '' padding the front
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS grams ({", ".join(f"w{i} TEXT NOT NULL" for i in range(ORDER))},
                                  n INTEGER NOT NULL, PRIMARY KEY ({_WORDS}));
CREATE TABLE IF NOT EXISTS forms (word TEXT PRIMARY KEY, form TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def chosen_file(path: str | Path) -> Path:
    """The file a person typed, as a whole path: `~` is their home folder, and so is the
    folder of a name without one (not the app's working folder, which they cannot know);
    DictionaryError when it cannot be a file name here."""
    text = str(path)
    if "\0" in text:
        raise DictionaryError("A file name cannot contain a null character.")
    try:
        found = Path(text).expanduser()
        return found if found.is_absolute() else Path.home() / found
    except RuntimeError:  # '~someone' with no such user, or no home folder at all
        home = text.split("/")[0] if text.startswith("~") else "~"
        raise DictionaryError(f"\u201c{home}\u201d is no home folder on this device: give "
                              "the whole path of the file.") from None


def _os_problem(err: OSError, path: Path, doing: str) -> str:
    """What went wrong reading or writing the file `path`, and what to do, in words."""
    if err.errno == errno.ENAMETOOLONG:
        return "That file name is too long for this device: choose a shorter one."
    if err.errno == errno.ENOENT:
        return (f"There is no file {path}." if doing == "read" else
                f"There is no folder {path.parent}: choose a folder that exists.")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"This app may not {doing} {path}: choose "
                + ("a file in a folder of yours." if doing == "read" else "another folder."))
    if err.errno == errno.ENOSPC:
        return f"Could not write {path}: the device is full. Free some space and try again."
    return f"Could not {doing} {path} ({err.strerror.lower() if err.strerror else 'error'})."


def _what_is_at(path: Path) -> str | None:
    """'folder', 'file', or None: nothing there, or it cannot be looked at (a name too
    long, a folder not readable), which writing or reading it then explains."""
    try:
        return "folder" if path.is_dir() else "file" if path.exists() else None
    except OSError:
        return None


def _is_dictionary(path: Path) -> bool:
    """Whether the file at `path` starts as a personal dictionary (a BOM allowed)."""
    header = DICTIONARY_HEADER.encode()
    try:
        with open(path, "rb") as f:
            start = f.read(len(header) + 3)
    except OSError:
        return False
    return start.removeprefix(b"\xef\xbb\xbf").startswith(header)


def _row(gram: Gram) -> tuple[str, ...]:
    """A gram as the table's four word columns ('' pads the front)."""
    return ("",) * (ORDER - len(gram)) + tuple(gram)


@dataclass(frozen=True)
class RemovedWord:
    """A word just removed, as `PersonalStore.put_back` can restore it: every gram it was
    in with its count, how it is written, its count in the adaptation."""

    word: str
    grams: list[tuple[Gram, int]]
    form: str | None
    observed: int | None


class PersonalStore:
    """The personal model of one device and its file. Thread-safe."""

    def __init__(self, path: str | Path, retention_days: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`retention_days`, `clock`: the history's; the recent words of messages older than
        that are not loaded (the history no longer holds those messages either)."""
        self.path = str(path)
        self.retention_days, self.clock = retention_days, clock
        self._recent: list[tuple[float, list[str]]] = []  # (when, words) of the last messages
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.model = self._load()

    def _load(self) -> PersonalModel:
        model = PersonalModel()
        for *words, n in self._db.execute(f"SELECT {_WORDS}, n FROM grams"):
            model.add_gram(tuple(w for w in words if w), int(n))
        for word, form in self._db.execute("SELECT word, form FROM forms"):
            model.set_form(word, form)
        row = self._db.execute("SELECT value FROM settings WHERE name = 'recent'").fetchone()
        if row:
            try:
                kept = [(float(ts), [str(w) for w in ws]) for ts, ws in json.loads(row[0])]
            except (ValueError, TypeError):  # unreadable: the cache refills as you type
                kept = []
            oldest = (self.clock() - self.retention_days * 86_400
                      if self.retention_days is not None else float("-inf"))
            self._recent = [(ts, ws) for ts, ws in kept if ts >= oldest]
            model.remember_recent(w for _, ws in self._recent for w in ws)
        row = self._db.execute("SELECT value FROM settings WHERE name = 'adaptation'"
                               ).fetchone()
        if row:
            try:
                model.adaptation = Adaptation.from_dict(json.loads(row[0]))
            except (ValueError, KeyError, TypeError):  # unreadable: learned again from now on
                model.adaptation = None
        return model

    # --- learning -------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        """Whether learning new words is paused (kept across restarts)."""
        row = self._db.execute("SELECT value FROM settings WHERE name = 'paused'").fetchone()
        return bool(row and row[0] == "1")

    def set_paused(self, paused: bool) -> None:
        with self._lock:
            self._db.execute("INSERT INTO settings VALUES ('paused', ?) ON CONFLICT(name) "
                             "DO UPDATE SET value = excluded.value", ("1" if paused else "0",))

    def record(self, grams: list[Gram]) -> None:
        """Persist grams the model has just counted once each (and their words' forms, and
        the model's adaptation)."""
        words = {g[0] for g in grams if len(g) == 1}
        with self._lock:
            if words:
                self._recent_message([g[0] for g in grams if len(g) == 1])
            self._db.execute("BEGIN")
            self._save_adaptation()
            self._db.executemany(f"INSERT INTO grams VALUES ({'?, ' * ORDER}1) ON CONFLICT"
                                 f"({_WORDS}) DO UPDATE SET n = n + 1", map(_row, grams))
            self._sync_forms(words)
            self._db.execute("COMMIT")

    def _recent_message(self, words: list[str]) -> None:
        """Keep one message's words, with when it was learned, for the recent-words cache."""
        self._recent.append((self.clock(), words))
        total = sum(len(ws) for _, ws in self._recent)
        while total - len(self._recent[0][1]) >= RECENT:
            total -= len(self._recent.pop(0)[1])

    def _save_adaptation(self) -> None:
        """The adaptation and the recent words (both change with every message learned)."""
        self._db.execute("INSERT INTO settings VALUES ('recent', ?) ON CONFLICT(name) DO "
                         "UPDATE SET value = excluded.value", (json.dumps(self._recent),))
        if self.model.adaptation is not None:
            self._db.execute("INSERT INTO settings VALUES ('adaptation', ?) ON CONFLICT"
                             "(name) DO UPDATE SET value = excluded.value",
                             (json.dumps(self.model.adaptation.to_dict()),))

    def learn(self, text: str) -> list[Gram]:
        """Count one message (already filtered by the history) unless paused."""
        if self.paused:
            return []
        grams = self.model.learn(text)
        self.record(grams)
        return grams

    def _sync_forms(self, words: set[str]) -> None:
        for word in words:
            form = self.model.forms.get(word)
            if form:
                self._db.execute("INSERT INTO forms VALUES (?, ?) ON CONFLICT(word) DO UPDATE "
                                 "SET form = excluded.form", (word, form))
            else:
                self._db.execute("DELETE FROM forms WHERE word = ?", (word,))

    # --- the person's controls ---------------------------------------------------------
    def remove(self, word: str) -> int:
        """Forget one word everywhere (its counts in the adaptation too); returns how often
        it had been used."""
        had = self.model.remove(word)
        with self._lock:
            self._recent = [(ts, [w for w in ws if w != word]) for ts, ws in self._recent]
            self._db.execute("BEGIN")
            self._save_adaptation()
            self._db.execute("DELETE FROM grams WHERE " + " OR ".join(
                f"w{i} = ?" for i in range(ORDER)), (word,) * ORDER)
            self._db.execute("DELETE FROM forms WHERE word = ?", (word,))
            self._db.execute("COMMIT")
        return had

    def take_out(self, word: str) -> RemovedWord:
        """`remove(word)`, keeping in memory what `put_back` needs to undo it."""
        adaptation = self.model.adaptation
        removed = RemovedWord(word, [(g, n) for g, n in self.model.grams() if word in g],
                              self.model.forms.get(word),
                              adaptation.observed.get(word) if adaptation else None)
        self.remove(word)
        return removed

    def put_back(self, removed: RemovedWord) -> None:
        """Undo a `take_out`: the word's counts, contexts and written form come back (added
        to any it was given since)."""
        adaptation = self.model.adaptation
        if adaptation is not None and removed.observed:
            adaptation.observed[removed.word] = (adaptation.observed.get(removed.word, 0)
                                                 + removed.observed)
        self._add(removed.grams, {removed.word: removed.form} if removed.form else {})

    def delete_all(self) -> int:
        """Forget everything learned (with the history); returns how many words it knew."""
        known = len(self.model.unigrams)
        self.model.clear()
        with self._lock:
            self._recent = []
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM grams")
            self._db.execute("DELETE FROM forms")
            self._db.execute("DELETE FROM settings WHERE name IN ('adaptation', 'recent')")
            self._db.execute("COMMIT")
            if self.path != ":memory:":
                self._db.execute("VACUUM")
        return known

    def export_to(self, path: str | Path) -> int:
        """Write the personal dictionary to `path` (mode 0600); returns how many words. An
        existing file is replaced only if it is a personal dictionary (an earlier export)."""
        target = chosen_file(path)
        found = _what_is_at(target)
        if found == "folder":
            raise DictionaryError(f"{target} is a folder: give a file name to write to.")
        if found == "file" and not _is_dictionary(target):
            raise DictionaryError(f"{target} already exists and is not a personal dictionary. "
                                  "Choose another file name, so that it is not overwritten.")
        text = dictionary_text(self.model)
        try:
            write_atomic(target, text.encode("utf-8"), make_parents=False)
        except OSError as err:
            raise DictionaryError(_os_problem(err, target, "write")) from None
        return len(self.model.unigrams)

    def import_from(self, path: str | Path) -> int:
        """Merge a personal dictionary file (each word keeps the larger count); returns
        how many words changed. DictionaryError, and no change at all, when the file is
        not a valid dictionary."""
        source = chosen_file(path)
        if _what_is_at(source) == "folder":
            raise DictionaryError(f"{source} is a folder: give the file to read.")
        try:
            with open(source, "rb") as f:
                data = f.read(MAX_IMPORT_BYTES + 1)
        except OSError as err:
            raise DictionaryError(_os_problem(err, source, "read")) from None
        if len(data) > MAX_IMPORT_BYTES:
            raise DictionaryError(f"{source.name} is larger than {MAX_IMPORT_BYTES // 10**6} "
                                  "MB: it is not a personal dictionary.")
        try:
            text = data.decode("utf-8-sig")  # a BOM: the file went through Notepad
        except UnicodeDecodeError:
            raise DictionaryError(f"{source.name} is not a text file (not UTF-8).") from None
        entries = parse_dictionary(text)
        changed = []
        for word, count, form in entries:
            more = count - self.model.unigrams.get(word, 0)
            if more > 0 or (form and self.model.forms.get(word) != form):
                changed.append((word, max(more, 0), form))
        self._add([((word,), more) for word, more, _ in changed],
                   {word: form for word, _, form in changed if form})
        return len(changed)

    def _add(self, grams: list[tuple[Gram, int]], forms: dict[str, str]) -> None:
        """Add counts to grams and set written forms, in the file, then in the model."""
        with self._lock:
            self._db.execute("BEGIN")
            self._save_adaptation()
            self._db.executemany(f"INSERT INTO grams VALUES ({'?, ' * ORDER}?) ON CONFLICT"
                                 f"({_WORDS}) DO UPDATE SET n = n + excluded.n",
                                 [(*_row(gram), n) for gram, n in grams if n > 0])
            self._db.executemany("INSERT INTO forms VALUES (?, ?) ON CONFLICT(word) DO "
                                 "UPDATE SET form = excluded.form", forms.items())
            self._db.execute("COMMIT")
        for gram, n in grams:
            self.model.add_gram(gram, n)
        for word, form in forms.items():
            self.model.set_form(word, form)

    def close(self) -> None:
        self._db.close()
