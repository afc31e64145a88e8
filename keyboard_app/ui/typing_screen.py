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
from keyboard_app.ui.editing import apply_suggestion, auto_capital, type_key

MAX_BUBBLES = 60


Builder.load_string("""
#:import theme keyboard_app.ui.theme
#:set MAX_LINES 4
#:import text_width keyboard_app.ui.widgets.text_width

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
                rgba: theme.ACCENT if root.stored else theme.BUBBLE
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
                size_hint_x: None
                width: text_width(self.text, self.font_size) + dp(28)
                active: app.incognito
                on_active: app.set_incognito(self.active)
            FlatToggle:
                id: password
                text: 'Password field'
                size_hint_x: None
                width: text_width(self.text, self.font_size) + dp(28)
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
            height: field.height + dp(8)
            padding: dp(6), dp(4)
            spacing: dp(6)
            SuggestionField:
                id: field
                multiline: not root.password_mode
                password: root.password_mode
                hint_text: 'Password (never stored)' if root.password_mode else 'Type a message'
                font_size: '18sp'
                background_normal: ''
                background_active: ''
                background_color: theme.FIELD
                foreground_color: theme.TEXT
                cursor_color: theme.ACCENT
                hint_text_color: theme.HINT
                padding: dp(10), dp(10)
                canvas.after:
                    Color:
                        rgba: theme.ACCENT if self.focus else theme.DIVIDER
                    Line:
                        rectangle: self.x + 1, self.y + 1, self.width - 2, self.height - 2
                        width: dp(1)
                size_hint_y: None
                one_line: self.line_height + dp(20)
                height: min(max(self.minimum_height, self.one_line), self.one_line + (MAX_LINES - 1) * (self.line_height + self.line_spacing))
                write_tab: False
                text_validate_unfocus: False
                unfocus_on_touch: False
                on_text_validate: root.send()
            FlatButton:
                id: send
                text: 'Send'
                size_hint_x: None
                width: dp(76)
                size_hint_y: None
                height: dp(48)
                pos_hint: {'top': 1}
                on_release: root.send()
        SuggestionStrip:
            id: strip
            on_pick: root.use_suggestion(args[1])
        KeyPad:
            id: keypad
            height: dp(216) if not app.wide else 0
            opacity: 1 if not app.wide else 0
            disabled: app.wide
            on_key: root.press_key(args[1])
""")


class SuggestionField(TextInput):
    """The message field: it grows to MAX_LINES lines, then scrolls. Enter sends, Shift+Enter
    starts a new line; Alt+digit is a strip shortcut, so its text is not typed."""

    one_line = NumericProperty(0)

    def keyboard_on_textinput(self, window, text: str) -> None:
        if "alt" in getattr(window, "modifiers", ()) and text in ("1", "2", "3"):
            return
        super().keyboard_on_textinput(window, text)

    def keyboard_on_key_down(self, window, keycode, text, modifiers) -> bool:
        if keycode[0] in (13, 271) and "shift" not in modifiers and self.multiline:
            self.dispatch("on_text_validate")
            return True
        return super().keyboard_on_key_down(window, keycode, text, modifiers)


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
        self._auto_space: tuple[str, int] | None = None  # (text, cursor) after an auto space

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

    def on_password_mode(self, _screen, on: bool) -> None:
        """Switching the password field off clears it: a typed secret is never shown."""
        if not on:
            self.field.text = ""

    def before_cursor(self) -> str:
        return self.field.text[:self.field.cursor_index()]

    def refresh_suggestions(self, *_args) -> None:
        """Ask the predictor (cached state: one LSTM step at most) for the strip's words;
        set the on-screen Shift for the start of a sentence."""
        pad = self.ids.keypad
        if not pad.caps_lock:
            pad.shift = not self.password_mode and auto_capital(self.before_cursor())
        if self.password_mode or self.suggest_fn is None:
            self.strip.suggestions = []
            return
        self.strip.suggestions = self.suggest_fn(self.before_cursor())

    def use_suggestion(self, word: str) -> None:
        """Replace the partial word (or append the next one) with `word` and a space."""
        text, cursor = apply_suggestion(self.field.text, self.field.cursor_index(), word)
        self._set_text(text, cursor)
        self._auto_space = (text, cursor)
        self.field.focus = True
        self.refresh_suggestions()

    def _set_text(self, text: str, cursor: int) -> None:
        self.field.text = text
        self.field.cursor = self.field.get_cursor_from_index(cursor)

    def press_key(self, name: str) -> None:
        """A tap on the on-screen keys (Shift and the layer keys stay in the key pad)."""
        pad, field = self.ids.keypad, self.field
        field.focus = True
        if name == "backspace":
            self._auto_space = None
            if field.selection_text:
                field.delete_selection()
            else:
                field.do_backspace()
            return
        if name == "enter":
            self.send()
            return
        cursor = field.cursor_index()
        auto = self._auto_space == (field.text, cursor)
        text, cursor, auto = type_key(field.text, cursor, pad.typed(name), auto)
        self._set_text(text, cursor)
        self._auto_space = (text, cursor) if auto else None

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

    def clear_bubbles(self) -> None:
        """Take the sent messages off the screen (the history was deleted)."""
        log = self.ids.log
        for child in [c for c in log.children if isinstance(c, Bubble)]:
            log.remove_widget(child)

    def add_bubble(self, text: str, note: str, stored: bool) -> None:
        log = self.ids.log
        log.add_widget(Bubble(text=text, note=note, stored=stored), index=0)
        while len(log.children) > MAX_BUBBLES + 1:
            log.remove_widget(log.children[-2])
        Clock.schedule_once(lambda _dt: setattr(self.ids.scroll, "scroll_y", 0), 0)
