"""The on-screen keyboard as a person uses it: every character through the keys, shift and
caps lock, automatic capitals, hold-to-delete, a growing message field, the editing rules
around suggestions, the password switch and the layout at several window sizes.

Real Kivy widgets, headless (tests/kivy_env.py); every character is typed by tapping keys.
Time-dependent keys (double tap, hold to repeat) run on a driven Kivy Clock, not sleeps.
"""
import string

import pytest

import kivy_env  # noqa: E402  sets up Kivy's environment first

kivy_env.configure_window(kivy_env.PHONE)

ASCII_PUNCTUATION = string.punctuation  # !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~
SIZES = {"phone-small": (360, 640), "phone": kivy_env.PHONE, "desktop": kivy_env.WIDE}


@pytest.fixture(scope="module")
def drv(tmp_path_factory):
    driver = kivy_env.start_app(tmp_path_factory.mktemp("device"))
    yield driver
    driver.close()


@pytest.fixture
def screen(drv):
    return kivy_env.fresh_typing_screen(drv)


class FakeTime:
    """Kivy's clock reads this time; a test moves it forward frame by frame."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(drv):
    """Drive Kivy's Clock: `clock(seconds)` runs frames 1/60 s of clock time apart."""
    from kivy.clock import Clock
    real_time, max_fps = Clock.time, Clock._max_fps
    fake = FakeTime(Clock.time())
    Clock.time, Clock._max_fps = fake, 0.0  # no waiting for the next frame

    def advance(seconds: float) -> None:
        for _ in range(max(1, round(seconds * 60))):
            fake.now += 1 / 60
            drv.frames()
    advance(0.1)
    yield advance
    Clock.time, Clock._max_fps = real_time, max_fps


def pad_of(screen):
    return screen.ids.keypad


def key(screen, name):
    return pad_of(screen).keys()[name]


def tap_text(drv, screen, text: str) -> None:
    """Type `text` with the on-screen keys only (switching layers and using Shift)."""
    drv.tap_keys(pad_of(screen), text)


def test_every_ascii_character_and_digit_is_on_the_keys(drv, screen):
    from keyboard_app.ui.keys import LAYERS
    on_keys = set("".join("".join(rows) for rows in LAYERS.values())) | {",", ".", " "}
    assert set(ASCII_PUNCTUATION + string.digits + string.ascii_lowercase) <= on_keys
    tap_text(drv, screen, "a" + ASCII_PUNCTUATION + string.digits)
    assert screen.field.text == "A" + ASCII_PUNCTUATION + string.digits
    drv.screenshot("keyboard_symbols")


@pytest.mark.parametrize("typed, expected", [
    ("don't be late", "Don't be late"),
    ("see you at 5pm", "See you at 5pm"),
    ("mail bob@example.com", "Mail bob@example.com"),
    ("ok (at 10:30; maybe) #fun & \"games\" - a_b/c", "Ok (at 10:30; maybe) #fun & \"games\" - a_b/c"),
])
def test_chat_messages_typed_on_the_keys(drv, screen, typed, expected):
    tap_text(drv, screen, typed)
    assert screen.field.text == expected


def test_automatic_capitals_and_capital_i(drv, screen):
    pad = pad_of(screen)
    assert pad.shift                                      # the start of a message
    tap_text(drv, screen, "hi. i think so! i'm in")
    assert screen.field.text == "Hi. I think so! I'm in"
    assert not pad.shift
    tap_text(drv, screen, "? ")
    assert pad.layer == "letters"                         # a space ends the symbols
    assert pad.shift and pad.keys()["shift"].lit          # after ? and a space


def test_shift_once_and_caps_lock_by_double_tap(drv, screen, clock):
    pad = pad_of(screen)
    tap_text(drv, screen, "x ")
    assert not pad.shift
    drv.tap(key(screen, "shift"))
    clock(0.1)
    tap_text(drv, screen, "a")
    assert screen.field.text == "X A" and not pad.shift   # one capital only
    drv.tap(key(screen, "shift"))
    clock(0.1)
    drv.tap(key(screen, "shift"))                         # twice within 0.35 s: caps lock
    assert pad.caps_lock and key(screen, "shift").text == "CAPS"
    for char in "bcd":
        drv.tap(key(screen, char))
    assert screen.field.text == "X ABCD"
    drv.tap(key(screen, "shift"))                         # a tap ends caps lock
    drv.tap(key(screen, "e"))
    assert screen.field.text == "X ABCDe" and not pad.caps_lock
    clock(1.0)
    drv.tap(key(screen, "shift"))
    clock(1.0)                                            # too slow for a double tap
    drv.tap(key(screen, "shift"))
    assert not pad.caps_lock and not pad.shift


def test_delete_repeats_while_held(drv, screen, clock):
    from kivy.tests.common import UnitTestTouch
    from keyboard_app.ui.keys import REPEAT_DELAY, REPEAT_EVERY
    screen.field.text = "x" * 40
    screen.field.cursor = screen.field.get_cursor_from_index(40)
    delete = key(screen, "backspace")
    drv.frames(2)
    touch = UnitTestTouch(*delete.to_window(*delete.center))
    touch.touch_down()
    clock(0.2)
    assert len(screen.field.text) == 39                   # one at once, then a pause
    held = 1.0
    clock(held - 0.2)
    touch.touch_up()
    deleted = 40 - len(screen.field.text)
    expected = 1 + (held - REPEAT_DELAY) / REPEAT_EVERY
    assert expected - 3 <= deleted <= expected + 1, deleted
    clock(0.5)
    assert 40 - len(screen.field.text) == deleted          # stops when released


def test_message_field_grows_to_four_lines(drv, screen):
    field = screen.field
    one_line = field.height
    tap_text(drv, screen, "hello ")
    assert field.height == one_line
    field.text = "a fairly long message that goes on " * 3
    drv.frames(3)
    assert field.height > 1.5 * one_line                  # wrapped onto more lines
    field.text = "a fairly long message that goes on " * 30
    drv.frames(3)
    four = field.height
    assert field.minimum_height > four and four < 5 * one_line   # capped, then scrolls
    drv.screenshot("keyboard_long_message")
    field.text = ""
    drv.frames(3)
    assert field.height == one_line


def test_tapped_suggestion_replaces_the_whole_word(drv, screen):
    field = screen.field
    field.text = "hello world"
    field.cursor = field.get_cursor_from_index(3)         # hel|lo world
    drv.frames(2)
    word = screen.strip.suggestions[0]
    drv.tap(screen.strip.children[1])
    assert field.text == f"{word} world"
    assert field.cursor_index() == len(word) + 1


def test_punctuation_after_a_suggestion_takes_the_space(drv, screen):
    tap_text(drv, screen, "see you so")
    word = screen.strip.suggestions[0]
    drv.tap(screen.strip.children[1])
    assert screen.field.text == f"See you {word} "
    tap_text(drv, screen, ".")
    assert screen.field.text == f"See you {word}. "
    tap_text(drv, screen, "ok")
    drv.tap(screen.strip.children[1])
    tap_text(drv, screen, ",")
    assert screen.field.text.endswith(", ")
    assert ", ," not in screen.field.text and " ," not in screen.field.text


def test_double_space_ends_the_sentence(drv, screen):
    tap_text(drv, screen, "on my way  ")
    assert screen.field.text == "On my way. "
    assert pad_of(screen).shift                           # the next sentence's capital
    tap_text(drv, screen, "see you")
    assert screen.field.text == "On my way. See you"


@pytest.mark.parametrize("typed", ["mail bob@exa", "go to www.exam", "at http://exa",
                                   "call 061234", "at 5p"])
def test_no_word_suggestions_in_addresses_and_numbers(drv, screen, typed):
    tap_text(drv, screen, typed)
    assert screen.strip.suggestions == []
    assert screen.strip.slots == ["", "", ""]


def test_after_a_full_stop_the_strip_offers_sentence_openers(drv, screen):
    predictor = drv.app.predictor
    tap_text(drv, screen, "that is fine. ")
    openers = predictor.suggest("")                       # the begin-of-message context
    assert screen.strip.suggestions == openers
    assert all(w[:1].isupper() for w in openers)
    tap_text(drv, screen, "and ")
    assert screen.strip.suggestions == predictor.suggest("that is fine. and ")


def test_password_switch_off_never_shows_the_secret(drv, screen):
    drv.tap(screen.ids.password)
    assert screen.field.password
    tap_text(drv, screen, "hunter2")
    assert screen.strip.suggestions == [] and not pad_of(screen).shift
    drv.tap(screen.ids.password)
    assert not screen.field.password
    assert screen.field.text == ""                        # cleared, never shown in clear


@pytest.mark.parametrize("name", list(SIZES))
def test_layout_holds_at_each_size_and_after_resizes(drv, screen, name):
    window = drv.window
    try:
        for size in (SIZES[name], (320, 560), SIZES[name]):   # resize away and back
            window.size = size
            drv.frames(4)
        if drv.app.wide:  # no on-screen keys in a desktop window
            drv.type("See you tomorrow")
        else:
            tap_text(drv, screen, "see you tomorrow")
        assert screen.field.text == "See you tomorrow"
        for toggle in (screen.ids.incognito, screen.ids.password):
            assert toggle.width >= toggle.texture_size[0]
            assert toggle.texture_size[1] < 1.6 * toggle.font_size      # one line
            assert toggle.right <= window.width + 1
        field, pad = screen.field, pad_of(screen)
        assert field.width > 100 and field.height >= field.line_height
        if not drv.app.wide:
            assert pad.height > 150 and pad.y >= 0
            for k in pad.keys().values():
                assert k.width > 20 and k.texture_size[0] <= k.width + 1, k.text
        drv.screenshot(f"keyboard_{name}")
    finally:
        window.size = kivy_env.PHONE
        drv.frames(3)
