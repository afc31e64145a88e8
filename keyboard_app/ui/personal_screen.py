"""The learned-words screen: the person's new words, find and remove one, pause learning,
export or import the personal dictionary. Reached from the privacy panel.

The list shows the MAX_ROWS most used new words that contain what is typed in "Find a word",
so any word can be reached however many there are; its rows are reused when it changes
(building a row is what costs: about 3 ms each), so removing a word redraws no new widgets.
The word just removed keeps its row, with "Undo", until the person leaves the screen (or
exports or imports): a slip of the finger on "Remove" loses nothing.
"""
from __future__ import annotations

from kivy.app import App
from kivy.lang import Builder
from kivy.properties import BooleanProperty, NumericProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.screenmanager import Screen

from keyboard_app.personal_store import RemovedWord, chosen_file
from keyboard_app.ui import widgets  # noqa: F401  (kv rules)
from model.personal import DictionaryError

MAX_ROWS = 100  # the most used new words listed (the rest: "Find a word", or an export)
DEFAULT_FILE = "~/private-keyboard-dictionary.txt"

Builder.load_string("""
#:import theme keyboard_app.ui.theme

<LearnedWordRow>:
    size_hint_y: None
    height: dp(44)
    spacing: dp(6)
    Label:
        text: root.form
        color: theme.MUTED if root.removed else theme.TEXT
        font_size: theme.BODY_SP
        text_size: self.size
        halign: 'left'
        valign: 'middle'
        shorten: True
    Label:
        text: 'removed' if root.removed else f'used {root.count:,}x'
        color: theme.MUTED
        font_size: theme.SMALL_SP
        size_hint_x: None
        width: dp(70)
    FlatButton:
        id: forget
        text: 'Undo' if root.removed else 'Remove'
        fill: theme.ACCENT if root.removed else theme.DANGER
        size_hint_x: None
        width: dp(92)
        on_release: root.parent_screen.undo() if root.removed else root.remove()

<PersonalScreen>:
    Painted:
        fill: theme.SURFACE
        TopBar:
            BarButton:
                text: 'Back'
                width: dp(72)
                on_release: app.show('privacy')
            TitleLabel:
                text: 'Learned words'
        ScrollView:
            do_scroll_x: False
            BoxLayout:
                orientation: 'vertical'
                size_hint_y: None
                height: self.minimum_height
                padding: dp(14), dp(6), dp(14), dp(14)
                spacing: dp(2)
                Para:
                    id: summary
                FlatToggle:
                    id: pause
                    text: 'Learning words is paused (tap to resume)' if self.active else 'Pause learning words'
                    size_hint_y: None
                    height: dp(48)
                    on_active: root.set_paused(self.active)
                Heading:
                    text: 'Back up or move your dictionary'
                Para:
                    text: 'A plain text file of the words you use (one per line, with how often). It stays where you put it; a name alone is a file in your home folder.'
                    color: theme.MUTED
                    font_size: theme.SMALL_SP
                TextInput:
                    id: path
                    multiline: False
                    write_tab: False
                    hint_text: 'File, e.g. ~/private-keyboard-dictionary.txt'
                    font_size: theme.BODY_SP
                    size_hint_y: None
                    height: dp(44)
                    padding: dp(10), (self.height - self.line_height) / 2
                BoxLayout:
                    size_hint_y: None
                    height: dp(48)
                    spacing: dp(6)
                    FlatButton:
                        id: export
                        text: 'Export to this file'
                        on_release: root.export()
                    FlatButton:
                        id: import_
                        text: 'Import from this file'
                        on_release: root.import_()
                Para:
                    id: message
                Heading:
                    text: 'New words you use'
                TextInput:
                    id: find
                    multiline: False
                    write_tab: False
                    hint_text: 'Find a word'
                    font_size: theme.BODY_SP
                    size_hint_y: None
                    height: dp(44)
                    padding: dp(10), (self.height - self.line_height) / 2
                    on_text: root.show_words()
                BoxLayout:
                    id: rows
                    orientation: 'vertical'
                    size_hint_y: None
                    height: self.minimum_height
                Para:
                    id: more
                    color: theme.MUTED
                    font_size: theme.SMALL_SP
""")


class LearnedWordRow(BoxLayout):
    """One learned word, how often it was used, and a button to forget it (or, for the
    word just removed, to undo that)."""

    word = StringProperty("")
    form = StringProperty("")
    count = NumericProperty(0)
    removed = BooleanProperty(False)

    def remove(self) -> None:
        screen = self.parent_screen
        screen.remove_word(self.word)

    @property
    def parent_screen(self) -> PersonalScreen:
        widget = self.parent
        while not isinstance(widget, PersonalScreen):
            widget = widget.parent
        return widget


class PersonalScreen(Screen):
    """What the keyboard learned from the person, and their controls over it."""

    @property
    def store(self):
        return App.get_running_app().backend.personal

    def vocabulary(self) -> set[str]:
        """The global model's words: everything else the person typed is a new word."""
        predictor = App.get_running_app().predictor
        return set(predictor.tokenizer.word_to_id) if predictor is not None else set()

    def on_kv_post(self, _base) -> None:
        self.ids.path.text = DEFAULT_FILE
        self._rows: list[LearnedWordRow] = []  # every row made so far, the shown ones first
        self._undo: tuple[RemovedWord, int] | None = None  # the word just removed, its row

    def on_leave(self, *_args) -> None:
        self._undo = None  # a removal is final once the person leaves the screen

    def load(self, message: str = "", *, entering: bool = False) -> None:
        """Fill the screen from the store (the newest counts); `entering`: the person comes
        to the screen (a removal from an earlier visit is final)."""
        if entering:
            self._undo = None
        store = self.store
        model = store.model
        new = self.show_words()
        self.ids.pause.active = store.paused
        self.ids.summary.text = (
            f"Learned on this device from {model.total:,} words you sent ({len(model.unigrams):,} "
            f"different, {new:,} new to the keyboard). Used only for your suggestions and "
            "never sent anywhere. They stay after the messages they came from are gone, until "
            "you remove them here or delete your typing history.")
        self.ids.message.text = message

    def show_words(self) -> int:
        """List the most used new words containing the text of "Find a word"; returns how
        many new words there are in all."""
        model = self.store.model
        new = model.words(outside=self.vocabulary())
        find = self.ids.find.text.strip().lower()
        found = [(w, n) for w, n in new if find in w] if find else new
        shown = [(w, n, model.form(w), False) for w, n in found[:MAX_ROWS]]
        if self._undo is not None and find in self._undo[0].word:  # its row, to undo it
            removed, position = self._undo
            shown.insert(min(position, len(shown)),
                         (removed.word, 0, removed.form or removed.word, True))
        while len(self._rows) < len(shown):
            self._rows.append(LearnedWordRow())
        for row, (word, count, form, removed) in zip(self._rows, shown):
            row.word, row.form, row.count, row.removed = word, form, count, removed
        box, before = self.ids.rows, len(self.ids.rows.children)
        for row in self._rows[len(shown):before]:
            box.remove_widget(row)
        for row in self._rows[before:len(shown)]:
            box.add_widget(row, index=0)  # index 0: the bottom of a vertical box
        rest = max(len(found) - MAX_ROWS, 0)
        if not new:
            more = "No new words yet: words you send that the keyboard does not know appear here."
        elif not found:
            more = f"No new word contains \u201c{find}\u201d."
        elif rest:
            more = (f"And {rest:,} more: type a few of their letters in \u201cFind a word\u201d "
                    "to see them.")
        else:
            more = ""
        self.ids.more.text = more
        return len(new)

    def set_paused(self, paused: bool) -> None:
        if paused != self.store.paused:
            self.store.set_paused(paused)

    def remove_word(self, word: str) -> None:
        form = self.store.model.form(word)
        position = next((i for i, row in enumerate(reversed(self.ids.rows.children))
                         if row.word == word), 0)
        self._undo = (self.store.take_out(word), position)
        self.load(f"Forgot \u201c{form}\u201d: it is no longer suggested.")

    def undo(self) -> None:
        """Put back the word just removed (a tap on its Undo)."""
        if self._undo is None:
            return
        removed, self._undo = self._undo[0], None
        self.store.put_back(removed)
        self.load(f"\u201c{removed.form or removed.word}\u201d is back.")

    def export(self) -> None:
        self._undo = None
        path = self.ids.path.text.strip()
        if not path:
            self.load("Type the file to write first.")
            return
        try:
            n = self.store.export_to(path)
        except DictionaryError as err:
            self.load(str(err))
            return
        self.load(f"Wrote {_words(n)} to {chosen_file(path)}.")

    def import_(self) -> None:
        self._undo = None
        path = self.ids.path.text.strip()
        if not path:
            self.load("Type the file to read first.")
            return
        try:
            n = self.store.import_from(path)
        except DictionaryError as err:
            self.load(f"Nothing imported. {err} Choose a file that \u201cExport\u201d wrote.")
            return
        where = chosen_file(path)
        self.load(f"Imported {_words(n)} from {where}." if n else
                  f"Nothing new in {where}: you already have all its words, as often used.")


def _words(n: int) -> str:
    return "1 word" if n == 1 else f"{n:,} words"
