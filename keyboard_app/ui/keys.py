"""The on-screen keys for touch screens (hidden in wide desktop windows).

Three layers: letters, digits and symbols ("?123"), more symbols ("=\\<"); together they
hold every printable ASCII character. Shift capitalises the next letter, a double tap
locks capitals; Del repeats while held, timed by Kivy's Clock (which tests can drive).
"""
from __future__ import annotations

from kivy.clock import Clock
from kivy.lang import Builder
from kivy.metrics import dp
from kivy.properties import BooleanProperty, OptionProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button

LETTERS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
SYMBOLS = ("1234567890", "@#$_&-+()/", "*\"':;!?")
MORE = ("~`|\\^=<>[]", "{}%\u20ac\u00a3\u00b0\u2022\u00d7\u00f7\u2026", "\u00a1\u00bf\u00ab\u00bb.,!?")
LAYERS = {"letters": LETTERS, "symbols": SYMBOLS, "more": MORE}
DOUBLE_TAP = 0.35  # seconds between two Shift taps that lock capitals
REPEAT_DELAY, REPEAT_EVERY = 0.45, 0.06  # Del held: first repeat, then one per interval

Builder.load_string("""
#:import theme keyboard_app.ui.theme

<Key>:
    background_normal: ''
    background_down: ''
    background_color: (0, 0, 0, 0)
    color: theme.TEXT
    font_size: '19sp' if len(self.text) == 1 else '15sp'
    canvas.before:
        Color:
            rgba:
                (theme.KEY_DOWN if self.state == 'down' or self.lit else
                theme.KEY_SPECIAL if self.special else theme.KEY)
        RoundedRectangle:
            pos: self.x + dp(2.5), self.y + dp(4)
            size: self.width - dp(5), self.height - dp(8)
            radius: [dp(5)]

<KeyPad>:
    orientation: 'vertical'
    size_hint_y: None
    height: dp(216)
    padding: dp(3), dp(4)
    canvas.before:
        Color:
            rgba: theme.KEYBOARD
        Rectangle:
            pos: self.pos
            size: self.size
""")


class Key(Button):
    """One key; `special` keys (shift, delete, send) are drawn darker, `lit` ones pressed."""

    special = BooleanProperty(False)
    lit = BooleanProperty(False)
    key_name = ""


class KeyPad(BoxLayout):
    """The keys of the current layer; fires on_key(name) with a character or one of
    "shift", "backspace", "enter" (Send)."""

    shift = BooleanProperty(False)
    caps_lock = BooleanProperty(False)
    layer = OptionProperty("letters", options=tuple(LAYERS))
    __events__ = ("on_key",)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._last_shift = -1.0
        self._repeat = None
        self._build()

    # --- layout ---------------------------------------------------------------------------
    def _build(self) -> None:
        self.clear_widgets()
        rows = LAYERS[self.layer]
        for i, row in enumerate(rows):
            indent = dp(16) if self.layer == "letters" and i == 1 else 0
            line = BoxLayout(padding=(indent, 0))
            if i == 2:
                line.add_widget(self._row3_left())
            for char in row:
                line.add_widget(self._key(char, self._label(char)))
            if i == 2:
                line.add_widget(self._key("backspace", "Del", special=True, size_hint_x=1.5))
            self.add_widget(line)
        bottom = BoxLayout()
        switch = ("symbols", "?123") if self.layer == "letters" else ("letters", "ABC")
        bottom.add_widget(self._key("layer:" + switch[0], switch[1], special=True,
                                    size_hint_x=1.5))
        for name, label, width in ((",", ",", 1), (" ", "space", 4.5), (".", ".", 1)):
            bottom.add_widget(self._key(name, label, size_hint_x=width))
        bottom.add_widget(self._key("enter", "Send", special=True, size_hint_x=2))
        self.add_widget(bottom)

    def _row3_left(self) -> Key:
        if self.layer == "letters":
            key = self._key("shift", "Shift", special=True, size_hint_x=1.5)
            key.lit = self.shift or self.caps_lock
            key.text = "CAPS" if self.caps_lock else "Shift"
            return key
        other = ("more", "=\\<") if self.layer == "symbols" else ("symbols", "?123")
        return self._key("layer:" + other[0], other[1], special=True, size_hint_x=1.5)

    def _label(self, char: str) -> str:
        return char.upper() if self.shift or self.caps_lock else char

    def _key(self, name: str, label: str, **kwargs) -> Key:
        key = Key(text=label, **kwargs)
        key.key_name = name
        if name == "backspace":
            key.bind(on_press=self._delete_down, on_release=self._delete_up)
        else:
            key.bind(on_release=self._released)
        return key

    def keys(self) -> dict[str, Key]:
        """The keys on screen by name ('a', '@', 'shift', 'layer:symbols', ...)."""
        return {k.key_name: k for line in self.children for k in line.children}

    def on_layer(self, *_args) -> None:
        self._build()

    def on_shift(self, *_args) -> None:
        self._relabel()

    def on_caps_lock(self, *_args) -> None:
        self._relabel()

    def _relabel(self) -> None:
        for name, key in self.keys().items():
            if len(name) == 1 and name.isalpha():
                key.text = self._label(name)
            elif name == "shift":
                key.lit = self.shift or self.caps_lock
                key.text = "CAPS" if self.caps_lock else "Shift"

    # --- input ----------------------------------------------------------------------------
    def _released(self, key: Key) -> None:
        name = key.key_name
        if name.startswith("layer:"):
            self.layer = name.split(":", 1)[1]
        elif name == "shift":
            self._tap_shift()
        else:
            self.dispatch("on_key", name)
            if name == " " and self.layer != "letters":
                self.layer = "letters"  # a space ends a run of digits or symbols

    def _tap_shift(self) -> None:
        now = Clock.get_time()
        if self.caps_lock:
            self.caps_lock = self.shift = False
        elif self.shift and now - self._last_shift <= DOUBLE_TAP:
            self.caps_lock, self.shift = True, False
        else:
            self.shift = not self.shift
        self._last_shift = now

    def typed(self, char: str) -> str:
        """`char` as the shift state types it; a one-shot shift is used up."""
        if self.shift or self.caps_lock:
            char = char.upper()
        self.shift = False
        return char

    def _delete_down(self, _key: Key) -> None:
        self.dispatch("on_key", "backspace")
        self._stop_repeat()
        self._repeat = Clock.schedule_once(self._start_repeat, REPEAT_DELAY)

    def _start_repeat(self, _dt: float) -> None:
        self._repeat = Clock.schedule_interval(
            lambda _dt: self.dispatch("on_key", "backspace"), REPEAT_EVERY)

    def _delete_up(self, _key: Key) -> None:
        self._stop_repeat()

    def _stop_repeat(self) -> None:
        if self._repeat is not None:
            self._repeat.cancel()
            self._repeat = None

    def on_key(self, name: str) -> None:
        pass
