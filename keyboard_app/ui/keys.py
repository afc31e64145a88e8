"""A compact on-screen QWERTY pad for touch screens (hidden in wide desktop windows)."""
from kivy.lang import Builder
from kivy.metrics import dp
from kivy.properties import BooleanProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button

ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")

Builder.load_string("""
#:import theme keyboard_app.ui.theme

<Key>:
    background_normal: ''
    background_down: ''
    background_color: (0, 0, 0, 0)
    color: theme.TEXT
    font_size: '19sp'
    canvas.before:
        Color:
            rgba:
                (theme.KEY_DOWN if self.state == 'down' else
                theme.KEY_SPECIAL if self.special else theme.KEY)
        RoundedRectangle:
            pos: self.x + dp(2.5), self.y + dp(4)
            size: self.width - dp(5), self.height - dp(8)
            radius: [dp(5)]

<KeyPad>:
    orientation: 'vertical'
    size_hint_y: None
    height: dp(200)
    padding: dp(3), dp(4)
    canvas.before:
        Color:
            rgba: theme.KEYBOARD
        Rectangle:
            pos: self.pos
            size: self.size
""")


class Key(Button):
    """One key; `special` keys (shift, delete, send) are drawn darker."""

    special = BooleanProperty(False)


class KeyPad(BoxLayout):
    """Letters, shift, delete, comma, space, full stop and send; fires on_key(name)."""

    shift = BooleanProperty(False)
    __events__ = ("on_key",)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for i, row in enumerate(ROWS):
            line = BoxLayout(padding=(dp(16) * i, 0))
            if i == 2:
                line.padding = (0, 0)
                line.add_widget(self._key("shift", "Shift", special=True, size_hint_x=1.5))
            for letter in row:
                line.add_widget(self._key(letter, letter))
            if i == 2:
                line.add_widget(self._key("backspace", "Del", special=True, size_hint_x=1.5))
            self.add_widget(line)
        bottom = BoxLayout()
        for name, label, width in ((",", ",", 1), (" ", "space", 5), (".", ".", 1),
                                   ("enter", "Send", 2)):
            bottom.add_widget(self._key(name, label, special=len(name) > 1, size_hint_x=width))
        self.add_widget(bottom)

    def _key(self, name: str, label: str, **kwargs) -> Key:
        key = Key(text=label, **kwargs)
        key.key_name = name
        key.bind(on_release=lambda k: self.dispatch("on_key", k.key_name))
        return key

    def on_shift(self, _widget, shift: bool) -> None:
        for line in self.children:
            for key in line.children:
                if len(key.key_name) == 1 and key.key_name.isalpha():
                    key.text = key.key_name.upper() if shift else key.key_name

    def on_key(self, name: str) -> None:
        pass
