"""The keyboard app on screen, offline on a tiny model: typing, suggestions, sending,
incognito and password fields, the privacy panel, settings and a wide window.

Headless: SDL renders offscreen; each test saves a screenshot in test-artifacts/.
"""
import json

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
    """The typing screen, empty and focused, not incognito, no password field."""
    return kivy_env.fresh_typing_screen(drv)


def slots(screen):
    return list(screen.strip.slots)


def test_typing_updates_suggestions_on_every_keystroke(drv, screen):
    predictor, seen = drv.app.predictor, []
    for i, char in enumerate("how are y"):
        drv.type(char)
        seen.append(list(screen.strip.suggestions))
        assert seen[-1] and seen[-1] == predictor.suggest("how are y"[:i + 1])
    assert screen.field.text == "how are y"
    assert all(w.lower().startswith("y") for w in seen[-1]), seen[-1]   # completions
    assert all(w.lower().startswith("a") for w in seen[-3]), seen[-3]   # "how a"
    assert len(seen[3]) == 3 and seen[3] != seen[2]                     # next words
    drv.type("x\bou ")
    assert screen.field.text == "how are you "
    after_space = screen.strip.suggestions
    assert len(after_space) == 3 and after_space != seen[-1]            # next words
    assert after_space == drv.app.predictor.suggest("how are you ")
    assert slots(screen)[1] == after_space[0]                          # best in the middle
    drv.screenshot("app_typing")


def test_tapping_a_suggestion_inserts_it_with_spacing_and_capitals(drv, screen):
    start = screen.strip.suggestions
    assert start and all(w[0].isupper() for w in start), start  # sentence start
    drv.tap(screen.strip.children[1])                            # the middle slot
    assert screen.field.text == start[0] + " "
    assert screen.field.cursor_index() == len(screen.field.text)
    drv.type("wha")
    completion = screen.strip.suggestions[0]
    assert completion.lower().startswith("wha")
    drv.tap(screen.strip.children[1])
    assert screen.field.text == f"{start[0]} {completion} "       # partial word replaced
    drv.type("well. ")
    assert all(w[0].isupper() for w in screen.strip.suggestions)  # after a full stop
    left = slots(screen)[0]
    drv.tap(screen.strip.children[2])                             # the left slot
    assert screen.field.text == f"{start[0]} {completion} well. {left} "
    assert screen.strip.suggestions == drv.app.predictor.suggest(screen.field.text)
    drv.screenshot("app_tapped")


def test_alt_number_shortcuts_pick_left_middle_right(drv, screen):
    drv.type("i")
    left = slots(screen)[0]
    drv.key(49, "1", ["alt"])
    assert screen.field.text == left + " "
    right = slots(screen)[2]
    drv.key(51, "3", ["alt"])
    assert screen.field.text == f"{left} {right} "
    middle = slots(screen)[1]
    drv.key(50, "2", ["alt"])
    assert screen.field.text == f"{left} {right} {middle} "


def test_on_screen_keys_type_and_send(drv, screen):
    history = drv.app.backend.history
    before = history.count()
    pad = screen.ids.keypad
    keys = pad.keys()
    for name in ("o", "k", " "):                           # a capital by itself at the start
        drv.tap(keys[name])
    assert screen.field.text == "Ok "
    assert len(screen.strip.suggestions) == 3
    drv.tap(keys["enter"])
    assert screen.field.text == "" and history.count() == before + 1


def test_send_stores_the_message_and_clears_the_field(drv, screen):
    history = drv.app.backend.history
    before = history.count()
    drv.type("see you at the park")
    drv.key(13)                                            # Enter sends
    assert screen.field.text == ""
    assert history.count() == before + 1
    assert history.messages()[-1] == "see you at the park"
    drv.type("call me on 0612345678")
    drv.tap(screen.ids.send)
    assert history.messages()[-1] == "call me on"         # the number never stored
    notes = [b.note for b in screen.ids.log.children if hasattr(b, "note")]
    assert notes[0] == "stored, with a number or address cut out"
    assert notes[1] == "stored on this device for learning"
    drv.screenshot("app_sent")


def test_incognito_and_password_input_are_never_stored(drv, screen):
    history = drv.app.backend.history
    before = history.count()
    drv.tap(screen.ids.incognito)
    assert drv.app.incognito
    drv.type("my secret plan ")
    assert len(screen.strip.suggestions) == 3              # still suggests, never keeps
    drv.key(13)
    assert history.count() == before
    assert screen.ids.log.children[0].note == "incognito: not stored"
    drv.screenshot("app_incognito")
    drv.tap(screen.ids.incognito)
    assert not drv.app.incognito
    drv.tap(screen.ids.password)
    assert screen.field.password
    drv.type("hunter2 password")
    assert screen.strip.suggestions == []                  # no suggestions in password fields
    drv.screenshot("app_password")
    drv.key(13)
    assert history.count() == before
    assert screen.ids.log.children[0].note == "password field: not stored"
    assert "hunter2" not in " ".join(history.messages())
    drv.tap(screen.ids.password)


def test_delete_history_asks_first_then_empties_the_store(drv, screen):
    from kivy.uix.popup import Popup
    history, panel = drv.app.backend.history, drv.app.panel
    drv.type("one more message")
    drv.key(13)
    stored = history.count()
    assert stored > 0
    drv.tap(screen.ids.privacy_button)
    assert drv.app.screens.current == "privacy"
    assert f"{stored} messages" in panel.ids.stored.text
    drv.screenshot("app_privacy")

    def popup():
        return next((w for w in drv.window.children if isinstance(w, Popup)), None)

    drv.tap(panel.ids.delete)
    drv.until(lambda: popup() is not None, what="the confirmation")
    assert f"All {stored} stored messages" in popup().message
    drv.screenshot("app_delete_confirm", drv.window)
    drv.tap(popup().ids.cancel)
    drv.until(lambda: popup() is None, what="the popup to close")
    assert history.count() == stored                       # cancel keeps everything
    drv.tap(panel.ids.delete)
    drv.until(lambda: popup() is not None, what="the confirmation")
    drv.tap(popup().ids.confirm)
    drv.until(lambda: popup() is None, what="the popup to close")
    assert history.count() == 0 and history.messages() == []
    assert panel.ids.stored.text.startswith("[b]0 messages[/b]")
    drv.screenshot("app_privacy_deleted")


def test_pause_and_incognito_buttons_in_the_panel(drv, screen):
    drv.app.show("privacy")
    panel = drv.app.panel
    drv.tap(panel.ids.pause)
    assert drv.app.learning_paused and drv.app.backend.user_paused
    drv.tap(panel.ids.incognito)
    assert drv.app.incognito and screen.ids.incognito.active     # same switch everywhere
    drv.tap(panel.ids.pause)
    drv.tap(panel.ids.incognito)
    assert not drv.app.learning_paused and not drv.app.incognito


def test_settings_are_validated_saved_and_applied(drv, screen):
    app = drv.app
    drv.tap(screen.ids.settings_button)
    settings = app.settings_screen
    assert app.screens.current == "settings"
    settings.ids.server_url.text = "not a url"
    drv.tap(settings.ids.save)
    assert settings.message.startswith("Not saved")
    drv.screenshot("app_settings_error")
    settings.ids.server_url.text = ""
    drv.tap(settings.ids.days_30)
    drv.tap(settings.ids.filter_digits)                         # numbers: not filtered
    drv.tap(settings.ids.mode_drop)                             # e-mails: drop the message
    drv.tap(settings.ids.save)
    assert settings.message == "Saved."
    saved = json.loads((kivy_env.Path(app.data_dir) / "settings.json").read_text())
    assert saved["retention_days"] == 30 and saved["filter_digits"] is False
    assert saved["filter_emails"] is True and saved["filter_mode"] == "drop"
    drv.screenshot("app_settings")
    drv.key(27)                                                # Escape goes back
    assert app.screens.current == "typing"
    history = app.backend.history
    assert history.retention_days == 30
    before = history.count()
    drv.type("mail bob@example.com")
    drv.key(13)
    assert screen.ids.log.children[0].note == "not stored: contains an e-mail address"
    drv.type("the code is 1234567")
    drv.key(13)
    assert history.count() == before + 1 and history.messages()[-1] == "the code is 1234567"


def test_wide_window_shows_the_privacy_panel_beside_the_typing(drv, screen):
    app, window = drv.app, drv.window
    try:
        window.size = kivy_env.WIDE
        drv.frames(3)
        assert app.wide and app.panel.parent is app.side
        assert app.side.parent is app.root_box
        drv.type("hello there ")
        assert len(screen.strip.suggestions) == 3
        drv.screenshot("app_wide")
    finally:
        window.size = kivy_env.PHONE
        drv.frames(3)
    assert not app.wide and app.panel.parent.parent is app.privacy
