"""The typing screen: sent messages, the text field, the suggestion strip and the keys."""
from kivy.app import App
from kivy.clock import Clock
from kivy.lang import Builder
from kivy.core.text import Label as CoreLabel
from kivy.metrics import sp
from kivy.properties import BooleanProperty, NumericProperty, ObjectProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.screenmanager import Screen
from kivy.uix.textinput import TextInput

from keyboard_app.ui import keys, strip, widgets  # noqa: F401  (kv rules)
from keyboard_app.ui.editing import apply_suggestion

MAX_BUBBLES = 60

Builder.load_string("""
#:import theme keyboard_app.ui.theme

<StatusLine@Label>:
    level: 'info'
    color: theme.TEXT
    font_size: theme.SMALL_SP
    size_hint_y: None
    text_size: self.width - dp(16), None
    height: self.texture_size[1] + dp(10)
    halign: 'left'
    markup: True
    canvas.before:
        Color:
            rgba: theme.STATUS.get(self.level, theme.STATUS['info'])
        Rectangle:
            pos: self.pos
            size: self.size

<Bubble>:
    orientation: 'vertical'
    size_hint_y: None
    height: body.height + note.height
    padding: 0
    Label:
        id: body
        text: root.text
        color: theme.ACCENT_TEXT if root.stored else theme.TEXT
        font_size: theme.BODY_SP
        size_hint: None, None
        width: min(root.natural_width + dp(26), root.width * 0.8)
        text_size: self.width - dp(24), None
        height: self.texture_size[1] + dp(16)
        pos_hint: {'right': 1}
        canvas.before:
            Color:
                rgba: theme.ACCENT if root.stored else (0.86, 0.86, 0.9, 1)
            RoundedRectangle:
                pos: self.pos
                size: self.size
                radius: [dp(14), dp(14), dp(4), dp(14)]
    Label:
        id: note
        text: root.note
        color: theme.MUTED
        font_size: '12sp'
        size_hint_y: None
        height: self.texture_size[1] + dp(4)
        text_size: self.width, None
        halign: 'right'

<TypingScreen>:
    Painted:
        TopBar:
            TitleLabel:
                text: 'Private Keyboard'
            BarButton:
                id: privacy_button
                text: 'Privacy'
                width: dp(84) if not app.wide else 0
                opacity: 1 if not app.wide else 0
                disabled: app.wide
                on_release: app.show('privacy')
            BarButton:
                id: settings_button
                text: 'Settings'
                width: dp(88)
                on_release: app.show('settings')
        StatusLine:
            id: status
            text: app.status_text
            level: app.status_level
        StatusLine:
            text: 'Incognito: nothing you send is stored or learned from.'
            level: 'warn'
            opacity: 1 if app.incognito else 0
            height: (self.texture_size[1] + dp(10)) if app.incognito else 0
        ScrollView:
            id: scroll
            do_scroll_x: False
            BoxLayout:
                id: log
                orientation: 'vertical'
                size_hint_y: None
                height: max(self.minimum_height, scroll.height)
                padding: dp(10), dp(10)
                spacing: dp(8)
                Widget:
        BoxLayout:
            size_hint_y: None
            height: dp(40)
            padding: dp(6), dp(2)
            spacing: dp(4)
            FlatToggle:
                id: incognito
                text: 'Incognito'
                active: app.incognito
                on_active: app.set_incognito(self.active)
            FlatToggle:
                id: password
                text: 'Password field'
                active: root.password_mode
                on_active: root.password_mode = self.active
            Label:
                text: 'Alt+1/2/3 picks a suggestion, Enter sends'
                color: theme.MUTED
                font_size: theme.SMALL_SP
                size_hint_x: 1 if app.wide else None
                width: 0
                opacity: 1 if app.wide else 0
        BoxLayout:
            size_hint_y: None
            height: dp(56)
            padding: dp(6), dp(4)
            spacing: dp(6)
            SuggestionField:
                id: field
                multiline: False
                password: root.password_mode
                hint_text: 'Password (never stored)' if root.password_mode else 'Type a message'
                font_size: '18sp'
                padding: dp(10), (self.height - self.line_height) / 2
                write_tab: False
                text_validate_unfocus: False
                unfocus_on_touch: False
                on_text_validate: root.send()
            FlatButton:
                id: send
                text: 'Send'
                size_hint_x: None
                width: dp(76)
                on_release: root.send()
        SuggestionStrip:
            id: strip
            on_pick: root.use_suggestion(args[1])
        KeyPad:
            id: keypad
            height: dp(200) if not app.wide else 0
            opacity: 1 if not app.wide else 0
            disabled: app.wide
            on_key: root.press_key(args[1])
""")


class SuggestionField(TextInput):
    """The message field; Alt+digit is a strip shortcut, so its text is not typed."""

    def keyboard_on_textinput(self, window, text: str) -> None:
        if "alt" in getattr(window, "modifiers", ()) and text in ("1", "2", "3"):
            return
        super().keyboard_on_textinput(window, text)


class Bubble(BoxLayout):
    """One sent message and a note saying whether it was stored."""

    text = StringProperty("")
    note = StringProperty("")
    stored = BooleanProperty(True)
    natural_width = NumericProperty(0)

    def on_text(self, _widget, text: str) -> None:
        longest = max(text.splitlines() or [""], key=len)
        self.natural_width = CoreLabel(font_size=sp(16)).get_extents(longest)[0]


class TypingScreen(Screen):
    """Typing with suggestions on every keystroke; send commits to the history store."""

    password_mode = BooleanProperty(False)
    suggest_fn = ObjectProperty(None, allownone=True)  # text_before_cursor -> list[str]

    def on_kv_post(self, _base) -> None:
        # one refresh per frame however many properties changed, before the frame is drawn
        self._refresh = Clock.create_trigger(lambda _dt: self.refresh_suggestions(), -1)
        field = self.ids.field
        field.bind(text=self._on_edit, cursor=self._changed, password=self._changed)
        self.bind(suggest_fn=self._changed)

    def _changed(self, *_args) -> None:
        self._refresh()

    @property
    def field(self):
        return self.ids.field

    @property
    def strip(self):
        return self.ids.strip

    def _on_edit(self, *_args) -> None:
        App.get_running_app().note_typing()
        self._refresh()

    def before_cursor(self) -> str:
        return self.field.text[:self.field.cursor_index()]

    def refresh_suggestions(self, *_args) -> None:
        """Ask the predictor (cached state: one LSTM step at most) for the strip's words."""
        if self.password_mode or self.suggest_fn is None:
            self.strip.suggestions = []
            return
        self.strip.suggestions = self.suggest_fn(self.before_cursor())

    def use_suggestion(self, word: str) -> None:
        """Replace the partial word (or append the next one) with `word` and a space."""
        text, cursor = apply_suggestion(self.field.text, self.field.cursor_index(), word)
        self.field.text = text
        self.field.cursor = self.field.get_cursor_from_index(cursor)
        self.field.focus = True
        self.refresh_suggestions()

    def press_key(self, name: str) -> None:
        """A tap on the on-screen keys."""
        pad, field = self.ids.keypad, self.field
        if name == "shift":
            pad.shift = not pad.shift
        elif name == "backspace":
            field.do_backspace()
        elif name == "enter":
            self.send()
        else:
            field.insert_text(name.upper() if pad.shift else name)
            pad.shift = False
        field.focus = True

    def send(self) -> None:
        """Commit the message to the history store (unless incognito or a password) and clear."""
        text = self.field.text.strip()
        if not text:
            return
        stored, note = App.get_running_app().commit_message(text, password=self.password_mode)
        shown = "\u2022" * min(len(text), 12) if self.password_mode else text
        self.add_bubble(shown, note, stored)
        self.field.text = ""
        self.field.focus = True
        self.refresh_suggestions()

    def add_bubble(self, text: str, note: str, stored: bool) -> None:
        log = self.ids.log
        log.add_widget(Bubble(text=text, note=note, stored=stored), index=0)
        while len(log.children) > MAX_BUBBLES + 1:
            log.remove_widget(log.children[-2])
        Clock.schedule_once(lambda _dt: setattr(self.ids.scroll, "scroll_y", 0), 0)
