"""The suggestion strip: three words, the most likely in the middle (Alt+1/2/3 left to right)."""
from kivy.lang import Builder
from kivy.properties import ListProperty
from kivy.uix.boxlayout import BoxLayout

from keyboard_app.ui.editing import strip_order

Builder.load_string("""
#:import theme keyboard_app.ui.theme

<SuggestionButton@Button>:
    background_normal: ''
    background_down: ''
    background_color: (0, 0, 0, 0)
    color: theme.TEXT
    font_size: '18sp'
    text_size: self.width - dp(10), None
    halign: 'center'
    shorten: True
    shorten_from: 'right'
    canvas.before:
        Color:
            rgba: theme.KEY_DOWN if self.state == 'down' else (0, 0, 0, 0)
        Rectangle:
            pos: self.pos
            size: self.size

<SuggestionStrip>:
    size_hint_y: None
    height: dp(50)
    canvas.before:
        Color:
            rgba: theme.STRIP
        Rectangle:
            pos: self.pos
            size: self.size
        Color:
            rgba: theme.DIVIDER
        Rectangle:
            pos: self.x + self.width / 3, self.y + dp(12)
            size: dp(1), self.height - dp(24)
        Rectangle:
            pos: self.x + 2 * self.width / 3, self.y + dp(12)
            size: dp(1), self.height - dp(24)
    SuggestionButton:
        text: root.slots[0]
        on_release: root.pick(0)
    SuggestionButton:
        text: root.slots[1]
        bold: True
        on_release: root.pick(1)
    SuggestionButton:
        text: root.slots[2]
        on_release: root.pick(2)
""")


class SuggestionStrip(BoxLayout):
    """Shows `suggestions` (best first) as [2nd, 1st, 3rd]; fires on_pick(word)."""

    suggestions = ListProperty([])
    slots = ListProperty(["", "", ""])
    __events__ = ("on_pick",)

    def on_suggestions(self, _widget, suggestions: list[str]) -> None:
        self.slots = strip_order(suggestions)

    def pick(self, slot: int) -> bool:
        """Use the word in slot 0, 1 or 2 (left to right); False if the slot is empty."""
        word = self.slots[slot]
        if word:
            self.dispatch("on_pick", word)
        return bool(word)

    def on_pick(self, word: str) -> None:
        pass
