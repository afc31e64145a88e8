"""The keyboard learns the person's words on screen: a new word sent once is suggested in
the next message; incognito, password fields and paused learning teach nothing; the
learned-words screen (from the privacy panel) lists, removes, exports and imports them.

Headless, real widgets, a tiny model; screenshots in test-artifacts/.
"""
import time

import pytest

import kivy_env  # noqa: E402  sets up Kivy's environment first

kivy_env.configure_window(kivy_env.PHONE)


@pytest.fixture(scope="module")
def drv(tmp_path_factory):
    driver = kivy_env.start_app(tmp_path_factory.mktemp("device"))
    yield driver
    driver.close()


@pytest.fixture
def screen(drv):
    app = drv.app
    app.show("typing")
    app.set_incognito(False)
    app.typing.password_mode = False
    app.typing.field.text = ""
    drv.frames(2)
    return app.typing


def send(drv, text: str) -> None:
    drv.type(text)
    drv.key(13)


def suggested(drv, screen, text: str) -> list[str]:
    screen.field.text = ""
    drv.type(text)
    found = list(screen.strip.suggestions)
    screen.field.text = ""
    drv.frames()
    return found


def test_a_new_word_sent_once_is_suggested_in_the_next_message(drv, screen):
    predictor = drv.app.predictor
    assert "zorblat" not in predictor.tokenizer.word_to_id           # not in the vocabulary
    assert "Zorblat" not in suggested(drv, screen, "we met at zo")
    send(drv, "Yesterday we met Zorblat at the lake")
    assert suggested(drv, screen, "we met at zo")[0] == "Zorblat"    # completion
    assert "Zorblat" in suggested(drv, screen, "Today we met ")       # next word
    drv.type("Today we met ")
    drv.screenshot("app_personal_suggested")
    slot = list(screen.strip.slots).index("Zorblat")
    drv.tap(screen.strip.children[2 - slot])                          # tap it
    assert screen.field.text == "Today we met Zorblat "
    drv.key(13)                                                        # sent: a second use
    assert drv.app.backend.personal.model.unigrams["zorblat"] == 2


def test_incognito_password_and_filtered_text_teach_nothing(drv, screen):
    model = drv.app.backend.personal.model
    drv.app.set_incognito(True)
    send(drv, "quuxplorp is my secret")
    drv.app.set_incognito(False)
    screen.password_mode = True
    send(drv, "hunterplorp2")
    screen.password_mode = False
    send(drv, "write to jane.plorpdoe@example.org or 0612345678 later")
    assert not {"quuxplorp", "hunterplorp2", "plorpdoe", "jane", "example", "0612345678"} \
        & set(model.unigrams)
    assert model.unigrams["later"] >= 1                               # the rest is learned
    assert not any(w.lower().startswith("quux") for w in suggested(drv, screen, "quu"))


def test_the_privacy_panel_lists_learned_words_and_can_remove_one(drv, screen):
    app = drv.app
    send(drv, "Dinner with Marguerithe at Blorpville")
    drv.tap(screen.ids.privacy_button)
    drv.frames(2)
    assert app.panel.ids.learned_words.text.startswith("Learned words: ")
    assert " new (see, remove" in app.panel.ids.learned_words.text
    drv.screenshot("app_privacy_learned_words_button")
    drv.tap(app.panel.ids.learned_words)
    assert app.screens.current == "personal"
    page = app.personal_screen
    rows = {row.form: row for row in page.ids.rows.children}
    assert {"Zorblat", "Marguerithe", "Blorpville"} <= set(rows)
    assert rows["Zorblat"].count == 2
    assert "never sent anywhere" in page.ids.summary.text
    drv.screenshot("app_learned_words")
    drv.tap(rows["Blorpville"].ids.forget)
    assert "Blorpville" not in {row.form for row in page.ids.rows.children if not row.removed}
    assert "Forgot" in page.ids.message.text
    assert "blorpville" not in app.backend.personal.model.unigrams
    app.show("typing")
    assert not any(w.startswith("Blorp") for w in suggested(drv, screen, "at blo"))
    assert suggested(drv, screen, "with marg")[0] == "Marguerithe"


def test_pausing_learning_words(drv, screen):
    app = drv.app
    app.show("personal")
    page = app.personal_screen
    drv.tap(page.ids.pause)
    assert app.backend.personal.paused
    app.show("typing")
    send(drv, "Snorkelpuff again")
    assert "snorkelpuff" not in app.backend.personal.model.unigrams
    assert app.backend.history.messages()[-1] == "Snorkelpuff again"  # history unaffected
    app.show("personal")
    assert page.ids.pause.active
    drv.tap(page.ids.pause)
    assert not app.backend.personal.paused


def test_export_and_a_hostile_import_from_the_screen(drv, screen, tmp_path):
    app = drv.app
    app.show("personal")
    page, store = app.personal_screen, app.backend.personal
    page.ids.path.text = str(tmp_path / "mine.txt")
    drv.tap(page.ids.export)
    assert page.ids.message.text.startswith("Wrote ")
    assert "zorblat\t2\tZorblat" in (tmp_path / "mine.txt").read_text().splitlines()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\x00\xff not a dictionary")
    before = dict(store.model.grams())
    page.ids.path.text = str(bad)
    drv.tap(page.ids.import_)
    assert page.ids.message.text.startswith("Nothing imported.")
    assert "not a text file" in page.ids.message.text
    assert dict(store.model.grams()) == before
    drv.screenshot("app_learned_words_import_refused")
    store.remove("zorblat")
    page.ids.path.text = str(tmp_path / "mine.txt")
    drv.tap(page.ids.import_)
    assert page.ids.message.text.startswith("Imported ")
    assert store.model.unigrams["zorblat"] == 2
    app.show("typing")
    assert suggested(drv, screen, "we met at zo")[0] == "Zorblat"


def test_deleting_the_history_deletes_the_learned_words(drv, screen):
    from kivy.uix.popup import Popup
    app = drv.app
    drv.tap(screen.ids.privacy_button)
    drv.tap(app.panel.ids.delete)
    popup = next(w for w in drv.window.children if isinstance(w, Popup))
    words = len(app.backend.personal.model.unigrams)
    assert (f"and the {words:,} words the keyboard learned from you (imported ones too) will "
            "be erased") in popup.message               # zorblat came back by an import
    assert popup.message.endswith("To keep your words, export them first (Learned words).")
    drv.screenshot("app_delete_confirm_learned_words", drv.window)
    assert popup.ids.confirm.y >= popup.y and popup.content.children[-1].top <= popup.top
    drv.tap(popup.ids.confirm)
    drv.until(lambda: not any(isinstance(w, Popup) for w in drv.window.children),
              what="the popup to close")
    assert app.backend.history.count() == 0
    assert app.backend.personal.model.total == 0
    app.show("typing")
    assert "Zorblat" not in suggested(drv, screen, "we met at zo")


def test_any_of_thousands_of_new_words_can_be_found_and_removed(drv, screen):
    """A heavy typer's list is longer than the screen lists: "Find a word" reaches any of
    them (here a typo learned once, alphabetically last of 3,000), and removing it reuses
    the rows on screen instead of building them again."""
    from itertools import product

    from keyboard_app.personal_store import PersonalStore
    from keyboard_app.ui.personal_screen import MAX_ROWS
    app, store = drv.app, drv.app.backend.personal
    words = ["zq" + "".join(t) for t in product("abcdefghijklmnopqrst", repeat=3)][:3000]
    for start in range(0, len(words), 25):
        store.learn(" ".join(words[start:start + 25]))
    store.learn("Zorblat, Zorblat and zzyzxtypo")
    new = [w for w in store.model.unigrams if w not in app.predictor.tokenizer.word_to_id]
    assert len(new) == len(words) + 2
    app.show("personal")
    page = app.personal_screen
    box = page.ids.rows
    shown = [row.word for row in reversed(box.children)]
    assert len(shown) == MAX_ROWS and shown[0] == "zorblat"         # the most used first
    assert "zzyzxtypo" not in shown
    total, different = store.model.total, len(store.model.unigrams)
    assert total > different > len(new) > 1000                        # thousands, with commas
    assert page.ids.summary.text.startswith(
        f"Learned on this device from {total:,} words you sent ({different:,} different, "
        f"{len(new):,} new to the keyboard)")
    assert app.learned_words_label() == (f"Learned words: {len(new):,} new (see, remove, "
                                         "pause, export)")
    assert page.ids.more.text.startswith(f"And {len(new) - MAX_ROWS:,} more")
    assert "Find a word" in page.ids.more.text
    first = {id(row) for row in box.children}
    drv.screenshot("app_learned_words_many")
    drv.tap(page.ids.find)
    drv.type("zzyz")
    assert [row.form for row in box.children] == ["zzyzxtypo"]
    drv.screenshot("app_learned_words_found")
    drv.tap(box.children[0].ids.forget)
    assert "zzyzxtypo" not in store.model.unigrams
    assert page.ids.message.text == "Forgot \u201czzyzxtypo\u201d: it is no longer suggested."
    assert page.ids.more.text == "No new word contains \u201czzyz\u201d."
    again = PersonalStore(store.path)                                  # gone from the file
    assert "zzyzxtypo" not in again.model.unigrams and again.model.unigrams["zorblat"] == 2
    again.close()
    page.ids.find.text = ""
    drv.frames()
    kept = [row for row in box.children if not row.removed]        # and the one to undo
    assert len(kept) == MAX_ROWS and len(box.children) == MAX_ROWS + 1
    assert first <= {id(row) for row in box.children}                 # no row built again
    app.show("typing")
    assert "zzyzxtypo" not in suggested(drv, screen, "zzy")
    store.delete_all()


def test_the_panel_names_shared_training_apart_from_learning_words(drv, screen):
    """Without a server the panel said 'Learning: off' and offered 'Pause learning' while the
    keyboard went on learning the person's words: its section and button are about training
    the shared model, and say so; learning words has its own pause."""
    app, model = drv.app, drv.app.backend.personal.model
    drv.tap(screen.ids.privacy_button)
    panel = app.panel
    assert panel.ids.learning.text == "Training: off (no server set in Settings)."
    assert not any("Learning" in w.text for w in panel.walk() if hasattr(w, "text")
                   and w is not panel.ids.learned_words)
    drv.tap(panel.ids.pause)
    assert app.learning_paused and panel.ids.pause.text == "Training paused (tap to resume)"
    app.show("typing")
    send(drv, "Lunch with Quibbleton")
    assert model.unigrams["quibbleton"] == 1           # words are learned unless paused there
    drv.tap(screen.ids.privacy_button)
    assert panel.ids.learned_words.text.startswith("Learned words: ")
    drv.screenshot("app_privacy_training_paused")
    drv.tap(panel.ids.pause)
    assert not app.learning_paused and panel.ids.pause.text == "Pause training"


def test_import_and_export_notes_read_as_sentences(drv, screen, tmp_path):
    """'Imported 1 words', and 'Imported 0 words' for a file already imported (which reads
    like a failure): the notes count in words and say when a file has nothing new."""
    app = drv.app
    app.backend.personal.learn("Lunch with Quibbleton")
    app.show("personal")
    page = app.personal_screen
    one = tmp_path / "one.txt"
    one.write_text("\ufeff# Private Keyboard personal dictionary, version 1\n"
                   "florbnic\t4\tFlorbnic\n", encoding="utf-8")  # saved again by an editor
    page.ids.path.text = str(one)
    drv.tap(page.ids.import_)
    assert page.ids.message.text == f"Imported 1 word from {one}."
    assert {"Florbnic", "Quibbleton"} <= {row.form for row in page.ids.rows.children}
    drv.tap(page.ids.import_)
    assert page.ids.message.text == (f"Nothing new in {one}: you already have all its words, "
                                     "as often used.")
    page.ids.path.text = str(tmp_path)
    drv.tap(page.ids.import_)
    assert page.ids.message.text == (f"Nothing imported. {tmp_path} is a folder: give the file "
                                     "to read. Choose a file that \u201cExport\u201d wrote.")
    drv.screenshot("app_learned_words_import_folder")
    page.ids.path.text = str(tmp_path / "all.txt")
    drv.tap(page.ids.export)
    words = len(app.backend.personal.model.unigrams)
    assert words > 1 and page.ids.message.text == f"Wrote {words:,} words to {tmp_path / 'all.txt'}."


def test_export_never_overwrites_a_file_that_is_not_a_dictionary(drv, screen, tmp_path):
    """The file is a name the person types: 'Export' replaced whatever was there (a note,
    a photo) without a word. It now replaces only an earlier export."""
    app = drv.app
    app.show("personal")
    page = app.personal_screen
    notes = tmp_path / "notes.txt"
    notes.write_text("my shopping list\n")
    page.ids.path.text = str(notes)
    drv.tap(page.ids.export)
    assert notes.read_text() == "my shopping list\n"
    assert page.ids.message.text == (f"{notes} already exists and is not a personal "
                                     "dictionary. Choose another file name, so that it is "
                                     "not overwritten.")
    drv.screenshot("app_learned_words_export_refused")
    backup = tmp_path / "backup.txt"
    page.ids.path.text = str(backup)
    drv.tap(page.ids.export)
    app.backend.personal.learn("Quibbleton again")
    drv.tap(page.ids.export)                                          # a newer backup
    assert page.ids.message.text.startswith("Wrote ")
    assert "quibbleton\t3\tQuibbleton" in backup.read_text().splitlines()


def test_learned_words_outlive_the_history_s_retention_and_the_screens_say_so(drv, screen):
    """A person who keeps their history 7 days found their words still suggested months
    later, while Settings and the Learned words screen only said they go with the history:
    both now say the words stay until removed or the history is deleted."""
    app = drv.app
    history, model = app.backend.history, app.backend.personal.model
    now = [history.clock()]
    history.clock, history.retention_days = (lambda: now[0]), 7
    try:
        send(drv, "Tea with Wobblethorpe")
        now[0] += 8 * 86_400                                          # eight days later
        assert "Tea with Wobblethorpe" not in history.messages()      # the message is gone
        assert model.unigrams["wobblethorpe"] == 1                    # its word is not
        assert suggested(drv, screen, "with wob")[0] == "Wobblethorpe"
        app.show("personal")
        assert ("stay after the messages they came from are gone, until you remove them here "
                "or delete your typing history") in app.personal_screen.ids.summary.text
        app.show("settings")
        assert "stay after the messages go" in app.settings_screen.ids.retention_note.text
        drv.screenshot("app_settings_retention_note")
    finally:
        history.clock, history.retention_days = time.time, 90


def test_settings_say_training_is_the_shared_model_s(drv, screen):
    app = drv.app
    app.show("settings")
    choice = app.settings_screen.ids.participate
    assert choice.text == ("On: train the shared model when idle" if choice.active
                           else "Off: never train the shared model here")


@pytest.mark.parametrize("name, note", [
    ("a" * 300 + ".txt", "That file name is too long for this device: choose a shorter one."),
    ("~nosuchperson/words.txt", "\u201c~nosuchperson\u201d is no home folder on this device: "
                                "give the whole path of the file."),
    ("words\0.txt", "cannot contain a null character"),
])
def test_a_file_name_that_cannot_be_opened_is_a_note_not_a_crash(drv, screen, tmp_path,
                                                                 name, note):
    """A file name too long for the file system, or '~someone' naming no home folder, raised
    out of the button (OSError from a stat, RuntimeError from expanduser): the app stopped."""
    app = drv.app
    app.show("personal")
    page, store = app.personal_screen, app.backend.personal
    before = dict(store.model.grams())
    page.ids.path.text = name if name.startswith("~") else str(tmp_path / name)
    drv.tap(page.ids.export)
    assert note in page.ids.message.text and not page.ids.message.text.startswith("Wrote")
    drv.tap(page.ids.import_)
    assert page.ids.message.text.startswith("Nothing imported.") and note in page.ids.message.text
    assert dict(store.model.grams()) == before and list(tmp_path.iterdir()) == []


def test_the_strip_drops_a_word_removed_while_it_was_showing(drv, screen):
    """Typing 'we met at zo', the strip showed Zorblat; the person removed Zorblat from the
    Learned words ('it is no longer suggested') and came back: the strip still offered it
    until the next keystroke, and a tap would have sent and learned it again. The same after
    deleting the history from the panel beside the typing screen (a wide window)."""
    app = drv.app
    send(drv, "Yesterday we met Zorblat at the lake")
    drv.type("we met at zo")
    assert "Zorblat" in screen.strip.suggestions
    drv.tap(screen.ids.privacy_button)
    drv.tap(app.panel.ids.learned_words)
    page = app.personal_screen
    drv.tap(page.ids.find)
    drv.type("zorb")
    drv.tap(next(row for row in page.ids.rows.children if row.word == "zorblat").ids.forget)
    assert "Forgot" in page.ids.message.text
    page.ids.find.text = ""
    drv.tap(next(w for w in page.walk() if getattr(w, "text", "") == "Back"))
    drv.tap(next(w for w in app.privacy.walk() if getattr(w, "text", "") == "Back"))
    assert app.screens.current == "typing" and screen.field.text == "we met at zo"
    assert "Zorblat" not in screen.strip.suggestions
    drv.screenshot("app_strip_after_removing_a_word")
    screen.field.text = ""
    send(drv, "Dinner with Marguerithe")
    drv.type("with marg")
    assert "Marguerithe" in screen.strip.suggestions
    app.delete_history()                                  # the panel's Delete, confirmed
    assert "Marguerithe" not in screen.strip.suggestions


def test_deleting_the_history_takes_the_sent_messages_off_the_screen(drv, screen):
    """After 'Delete typing history' the typing screen still showed the messages, each
    labelled 'stored on this device for learning': the person could only think the delete
    had failed."""
    from kivy.uix.popup import Popup

    from keyboard_app.ui.typing_screen import Bubble
    app = drv.app
    send(drv, "Coffee with Brumblewick")
    assert any(b.text == "Coffee with Brumblewick" for b in screen.ids.log.children
               if isinstance(b, Bubble))
    drv.tap(screen.ids.privacy_button)
    drv.tap(app.panel.ids.delete)
    popup = next(w for w in drv.window.children if isinstance(w, Popup))
    drv.tap(popup.ids.confirm)
    drv.until(lambda: not any(isinstance(w, Popup) for w in drv.window.children),
              what="the popup to close")
    app.show("typing")
    assert not [b for b in screen.ids.log.children if isinstance(b, Bubble)]
    assert app.backend.history.count() == 0 and "brumblewick" not in \
        app.backend.personal.model.unigrams
    drv.screenshot("app_typing_after_delete")
    send(drv, "A new start")                                # the log works on
    assert [b.text for b in screen.ids.log.children if isinstance(b, Bubble)] == ["A new start"]


def test_keys_typed_on_another_screen_do_not_send_a_hidden_message(drv, screen):
    """On the Learned words (or Settings, or Privacy) screen the message field, out of sight,
    kept the keyboard's focus: typing a word to look for and pressing Enter sent it as a
    message, stored in the history and learned as a word."""
    app = drv.app
    sent, known = app.backend.history.count(), dict(app.backend.personal.model.unigrams)
    for name in ("personal", "settings", "privacy"):
        app.show(name)
        drv.type("secret zorbl")
        drv.key(13)
        assert screen.field.text == "" and app.backend.history.count() == sent, name
    assert dict(app.backend.personal.model.unigrams) == known
    app.show("personal")
    drv.tap(app.personal_screen.ids.find)                 # a field the person taps still types
    drv.type("zorb")
    assert app.personal_screen.ids.find.text == "zorb"
    app.personal_screen.ids.find.text = ""
    app.show("typing")
    assert screen.field.focus
    send(drv, "back to typing")
    assert app.backend.history.count() == sent + 1


def test_a_word_removed_by_mistake_can_be_put_back_until_the_person_leaves(drv, screen):
    """'Remove' took a word's counts, its contexts and how it is written at once and for
    good: a slip of the finger in the list lost them. The row now stays with 'Undo'."""
    from keyboard_app.personal_store import PersonalStore
    app, store = drv.app, drv.app.backend.personal
    send(drv, "Yesterday we met Zorblat at the lake")
    send(drv, "we met Zorblat again")
    before = {g: n for g, n in store.model.grams() if "zorblat" in g}
    assert before[("zorblat",)] == 2 and before[("we", "met", "zorblat")] == 2
    app.show("personal")
    page = app.personal_screen
    drv.tap(page.ids.find)
    drv.type("zorb")
    drv.tap(page.ids.rows.children[0].ids.forget)
    row = page.ids.rows.children[0]
    assert (row.form, row.removed, row.ids.forget.text) == ("Zorblat", True, "Undo")
    assert "zorblat" not in store.model.unigrams
    assert "Zorblat" not in app.predictor.suggest("we met at zo")
    drv.screenshot("app_learned_words_undo")
    drv.tap(row.ids.forget)                                            # Undo
    assert page.ids.message.text == "\u201cZorblat\u201d is back."
    assert {g: n for g, n in store.model.grams() if "zorblat" in g} == before
    again = PersonalStore(store.path)                                  # in the file too
    assert {g: n for g, n in again.model.grams() if "zorblat" in g} == before
    assert again.model.form("zorblat") == "Zorblat"
    again.close()
    assert app.predictor.suggest("we met at zo")[0] == "Zorblat"
    drv.tap(page.ids.rows.children[0].ids.forget)                     # removed again,
    app.show("typing")                                                 # and the person leaves
    app.show("personal")
    assert not any(row.removed for row in page.ids.rows.children)      # final now
    assert "zorblat" not in store.model.unigrams
    page.ids.find.text = ""


def test_deleting_the_history_beside_the_learned_words_leaves_nothing_to_list_or_undo(drv,
                                                                                      screen):
    """In a wide window the privacy panel sits beside the Learned words screen: deleting the
    history there left the deleted words listed, and the Undo of a word removed just before
    brought that word back after the deletion."""
    app, store = drv.app, drv.app.backend.personal
    send(drv, "Dinner with Marguerithe at Blorpville")
    app.show("personal")
    page = app.personal_screen
    drv.tap(page.ids.find)
    drv.type("blorp")
    drv.tap(page.ids.rows.children[0].ids.forget)
    assert page.ids.rows.children[0].removed                         # Undo offered
    page.ids.find.text = ""
    app.delete_history()                                              # the panel's Delete
    assert store.model.total == 0
    assert not page.ids.rows.children                                 # nothing listed
    assert page.ids.more.text.startswith("No new words yet")
    page.undo()                                                       # a late tap on Undo
    assert store.model.total == 0 and "blorpville" not in store.model.unigrams


def test_a_file_name_alone_is_in_the_home_folder_and_the_note_says_where(drv, screen,
                                                                         tmp_path, monkeypatch):
    """'words.txt' was written to the app's working folder, which the person cannot know,
    and the note said only 'Wrote 3 words to words.txt.'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "..")
    app = drv.app
    app.backend.personal.learn("Tea with Wobblethorpe")
    app.show("personal")
    page = app.personal_screen
    page.ids.path.text = "my-words.txt"
    drv.tap(page.ids.export)
    words = len(app.backend.personal.model.unigrams)
    assert page.ids.message.text == f"Wrote {words:,} words to {tmp_path / 'my-words.txt'}."
    assert "wobblethorpe\t" in (tmp_path / "my-words.txt").read_text()
    assert not (tmp_path / ".." / "my-words.txt").exists()
    drv.tap(page.ids.import_)
    assert page.ids.message.text.startswith(f"Nothing new in {tmp_path / 'my-words.txt'}")
