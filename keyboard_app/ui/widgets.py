"""Small styled widgets the screens share: text, headings, flat buttons, top bars, a
painted background."""
from kivy.core.text import Label as CoreLabel
from kivy.lang import Builder
from kivy.properties import BooleanProperty, ColorProperty
from kivy.uix.behaviors import ToggleButtonBehavior
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button
from kivy.uix.label import Label

from keyboard_app.ui import theme

Builder.load_string("""
#:import theme keyboard_app.ui.theme

<Para>:
    color: theme.TEXT
    font_size: theme.BODY_SP
    text_size: self.width, None
    size_hint_y: None
    height: self.texture_size[1] + dp(6)
    halign: 'left'
    valign: 'middle'
    markup: True

<Heading>:
    font_size: '17sp'
    bold: True
    color: theme.ACCENT
    height: self.texture_size[1] + dp(14)
    valign: 'bottom'

<FlatButton>:
    background_normal: ''
    background_down: ''
    background_color: (0, 0, 0, 0)
    color: theme.ACCENT_TEXT
    font_size: theme.BODY_SP
    halign: 'center'
    valign: 'middle'
    text_size: self.width - dp(8), None
    canvas.before:
        Color:
            rgba: self.fill if self.state == 'normal' else [c * 0.85 for c in self.fill[:3]] + [1]
        RoundedRectangle:
            pos: self.x + dp(2), self.y + dp(2)
            size: self.width - dp(4), self.height - dp(4)
            radius: [dp(6)]

<FlatToggle>:
    fill: theme.INCOGNITO if self.state == 'down' else theme.STRIP
    color: theme.ACCENT_TEXT if self.state == 'down' else theme.TEXT

<TopBar@BoxLayout>:
    size_hint_y: None
    height: dp(52)
    padding: dp(6), dp(4)
    spacing: dp(4)
    canvas.before:
        Color:
            rgba: theme.ACCENT
        Rectangle:
            pos: self.pos
            size: self.size

<TitleLabel@Label>:
    font_size: '19sp'
    bold: True
    color: theme.ACCENT_TEXT
    text_size: self.size
    halign: 'left'
    valign: 'middle'
    padding: dp(6), 0
    shorten: True

<BarButton@FlatButton>:
    size_hint_x: None
    fill: 1, 1, 1, 0.18

<BackBar@TopBar>:
    title: ''
    BarButton:
        text: 'Back'
        width: dp(72)
        on_release: app.show('typing')
    TitleLabel:
        text: root.title

<Painted>:
    orientation: 'vertical'
    fill: theme.BACKGROUND
    canvas.before:
        Color:
            rgba: self.fill
        Rectangle:
            pos: self.pos
            size: self.size
""")


def text_width(text: str, font_size: float) -> float:
    """Pixels `text` takes on one line at `font_size`, so a button can fit its label."""
    return CoreLabel(font_size=font_size).get_extents(text)[0]


class Para(Label):
    """A wrapping paragraph that is as tall as its text."""


class Heading(Para):
    """A section heading."""


class FlatButton(Button):
    """A flat rounded button filled with `fill`."""

    fill = ColorProperty(theme.ACCENT)


class FlatToggle(ToggleButtonBehavior, FlatButton):
    """A flat on/off button; `active` mirrors its state."""

    active = BooleanProperty(False)

    def on_state(self, _widget, state: str) -> None:
        self.active = state == "down"

    def on_active(self, _widget, active: bool) -> None:
        self.state = "down" if active else "normal"


class Painted(BoxLayout):
    """A vertical box painted in one colour (`fill`)."""

    fill = ColorProperty(theme.BACKGROUND)
