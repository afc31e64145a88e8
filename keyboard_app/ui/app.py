"""The keyboard App: screens, the model hand-over from background threads, shortcuts."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from kivy.app import App
from kivy.clock import Clock
from kivy.core.window import Window
from kivy.factory import Factory
from kivy.lang import Builder
from kivy.metrics import dp
from kivy.properties import BooleanProperty, NumericProperty, StringProperty
from kivy.uix.screenmanager import NoTransition, ScreenManager

from keyboard_app.history import filter_message
from keyboard_app.ui import describe, theme
from keyboard_app.ui.backend import Backend, ModelReady
from keyboard_app.ui.prefs import Prefs, load_prefs, save_prefs
from keyboard_app.ui.personal_screen import PersonalScreen
from keyboard_app.ui.privacy import PrivacyPanel, PrivacyScreen
from keyboard_app.ui.settings_screen import SettingsScreen
from keyboard_app.ui.typing_screen import TypingScreen

log = logging.getLogger("keyboard_app.ui")

Builder.load_string("""
#:import theme keyboard_app.ui.theme

<Root@Painted>:
    orientation: 'horizontal'

<SidePanel@BoxLayout>:
    orientation: 'vertical'
    TopBar:
        TitleLabel:
            text: 'Privacy'
""")


class KeyboardApp(App):
    """Private Keyboard: type with suggestions; see and control what is kept and sent."""

    title = "Private Keyboard"
    data_dir = StringProperty("")
    incognito = BooleanProperty(False)
    learning_paused = BooleanProperty(False)
    wide = BooleanProperty(False)
    status_text = StringProperty("Loading the model...")
    status_level = StringProperty("info")
    model_source = StringProperty("none")
    model_version = NumericProperty(-1)  # -1: none

    def __init__(self, data_dir: str | Path, server_url: str | None = None, *,
                 enrolment_code: str | None = None, pretrained_model: str | Path | None = None,
                 tokenizer_path: str | Path | None = None,
                 runtime_options: dict | None = None, colours: str = "light",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        theme.use(colours)  # before build(): the kv rules read the palette then
        self.data_dir = str(Path(data_dir).resolve())
        prefs, problem = load_prefs(self.data_dir)
        if problem:
            log.warning(problem)
        given = {"server_url": server_url, "enrolment_code": enrolment_code}
        given = {k: v for k, v in given.items() if v is not None and v != getattr(prefs, k)}
        if given:  # remembered, as if typed in Settings
            for key, value in given.items():
                setattr(prefs, key, value)
            save_prefs(self.data_dir, prefs)
        self.prefs = prefs
        self.backend = Backend(self.data_dir, prefs, pretrained_model=pretrained_model,
                               tokenizer_path=tokenizer_path, runtime_options=runtime_options)
        self.predictor = None
        self.loading = True
        self.model_problem = ""

    # --- building --------------------------------------------------------------------
    def build(self):
        self.typing, self.privacy = TypingScreen(name="typing"), PrivacyScreen(name="privacy")
        self.settings_screen = SettingsScreen(name="settings")
        self.personal_screen = PersonalScreen(name="personal")
        self.screens = ScreenManager(transition=NoTransition())
        for screen in (self.typing, self.privacy, self.settings_screen, self.personal_screen):
            self.screens.add_widget(screen)
        self.panel = PrivacyPanel()
        self.side = Factory.SidePanel(size_hint_x=0.42)
        self.root_box = root = Factory.Root()
        root.add_widget(self.screens)
        Window.bind(on_key_down=self._on_key_down, size=self._on_window_size)
        self._on_window_size(Window, Window.size)
        return root

    def on_start(self) -> None:
        threading.Thread(target=self._open_backend, name="model-loader", daemon=True).start()
        self._tick = Clock.schedule_interval(self.refresh, 1.0)
        self.typing.field.focus = True
        self.refresh()

    def on_stop(self) -> None:
        Window.unbind(on_key_down=self._on_key_down, size=self._on_window_size)
        if getattr(self, "_tick", None):
            self._tick.cancel()
        self.backend.close()

    def open_settings(self, *_args) -> bool:
        """F1 (Kivy's settings key) opens this app's own settings screen."""
        self.show("settings")
        return True

    # --- models from background threads ----------------------------------------------
    def _open_backend(self, restart: bool = False) -> None:
        try:
            (self.backend.restart if restart else self.backend.open)(self._model_ready)
        except Exception as err:  # the keyboard must keep working whatever happens
            log.exception("could not open the model")
            self._model_ready(ModelReady(None, None, "none", str(err)))

    def _model_ready(self, ready: ModelReady) -> None:
        """Called on a background thread: hand the predictor to the UI thread."""
        Clock.schedule_once(lambda _dt: self.install_model(ready))

    def install_model(self, ready: ModelReady) -> None:
        """Use a new predictor for the next keystroke (UI thread)."""
        self.loading = False
        if ready.predictor is None and self.predictor is not None:
            return  # keep the model we have
        self.predictor = ready.predictor
        self.model_source = ready.source
        self.model_version = -1 if ready.version is None else ready.version
        self.model_problem = ready.problem
        self.typing.suggest_fn = ready.predictor.suggest if ready.predictor else None
        self.refresh()

    # --- periodic refresh --------------------------------------------------------------
    def refresh(self, *_args) -> None:
        """Status line every second; the privacy panel's figures when it is on screen."""
        runtime = self.backend.runtime_status()
        version = None if self.model_version < 0 else int(self.model_version)
        self.status_text, self.status_level = describe.status_line(
            self.prefs.server_url, runtime, version, self.model_source, self.loading,
            self.model_problem)
        if self.wide or self.screens.current == "privacy":
            self.panel.lines = describe.privacy_lines(
                self.backend.history.stats(), runtime, version=version,
                source=self.model_source, server_url=self.prefs.server_url,
                participate=self.prefs.participate, user_paused=self.learning_paused,
                incognito=self.incognito, ledger=self.backend.ledger_view())
            self.panel.ids.learned_words.text = self.learned_words_label()

    def learned_words_label(self) -> str:
        """The privacy panel's button to the learned words, with how many are new."""
        model = self.backend.personal.model
        vocabulary = self.predictor.tokenizer.word_to_id if self.predictor else {}
        new = sum(1 for w in model.unigrams if w not in vocabulary)
        paused = ", paused" if self.backend.personal.paused else ""
        return f"Learned words: {new:,} new{paused} (see, remove, pause, export)"

    # --- actions the screens call ----------------------------------------------------------
    def show(self, name: str) -> None:
        """Switch screen (the privacy screen only exists as such in narrow windows)."""
        if name == "privacy" and self.wide:
            name = "typing"
        if name == "settings":
            self.settings_screen.load(self.prefs)
        if name == "personal":
            self.personal_screen.load(entering=True)
        self.screens.current = name
        if name == "typing":
            self.typing.field.focus = True
            self.typing.refresh_suggestions()  # a word removed or imported meanwhile
        else:  # keys typed on another screen must not go into the hidden message (Enter sends)
            self.typing.field.focus = False
        self.refresh()

    def note_typing(self) -> None:
        self.backend.note_typing()

    def commit_message(self, text: str, *, password: bool = False) -> tuple[bool, str]:
        """Offer a sent message to the history store; (stored, note to show under it)."""
        history = self.backend.history
        stored = history.add(text, incognito=self.incognito, password=password)
        if stored:  # the personal layer learns exactly what the history kept
            kept, _ = filter_message(text, history.filters)
            self.backend.learn_personal(kept or "", self.predictor)
        return stored, describe.stored_note(history.last_reason)

    def history_count(self) -> int:
        return self.backend.history.count()

    def delete_history(self) -> int:
        deleted = self.backend.history.delete_all()
        self.backend.personal.delete_all()  # the learned words go with the history
        self.typing.refresh_suggestions()  # beside the panel in a wide window
        self.typing.clear_bubbles()  # 'stored on this device' is no longer true of them
        if self.screens.current == "personal":  # beside the panel in a wide window
            self.personal_screen.load(entering=True)  # nothing left to list, nor to undo
        self.refresh()
        return deleted

    def set_incognito(self, on: bool) -> None:
        self.incognito = on
        self.refresh()

    def set_learning_paused(self, paused: bool) -> None:
        self.learning_paused = paused
        self.backend.set_paused(paused)
        self.refresh()

    def apply_prefs(self, prefs: Prefs) -> None:
        """Validate, save and use new settings (raises PrefsError); reconnect on a new URL."""
        save_prefs(self.data_dir, prefs)
        self.prefs = prefs
        if self.backend.apply_prefs(prefs):
            threading.Thread(target=self._open_backend, args=(True,), name="reconnect",
                             daemon=True).start()
        self.refresh()

    # --- window ----------------------------------------------------------------------------
    def _on_window_size(self, _window, size) -> None:
        width, height = size
        wide = width >= dp(theme.WIDE_DP) and width > height
        if wide == self.wide and self.panel.parent is not None:
            return
        self.wide = wide
        if self.panel.parent:
            self.panel.parent.remove_widget(self.panel)
        if wide:
            self.side.add_widget(self.panel)
            self.root_box.add_widget(self.side)
            if self.screens.current == "privacy":
                self.screens.current = "typing"
        else:
            self.privacy.ids.box.add_widget(self.panel)
            if self.side.parent:
                self.root_box.remove_widget(self.side)
        self.refresh()

    def _on_key_down(self, _window, key, _scancode, codepoint, modifiers) -> bool:
        """Alt+1/2/3: the suggestion in slot 1, 2 or 3 (left to right); Escape: back."""
        if "alt" in modifiers and codepoint in ("1", "2", "3"):
            if self.screens.current == "typing":
                self.typing.strip.pick(int(codepoint) - 1)
            return True
        if key == 27 and self.screens.current != "typing":
            self.show("typing")
            return True
        return False
