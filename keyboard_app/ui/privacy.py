"""The privacy panel: what is kept, what was sent, which model, and the controls."""
from kivy.app import App
from kivy.lang import Builder
from kivy.properties import DictProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.popup import Popup
from kivy.uix.screenmanager import Screen

from keyboard_app.ui import widgets  # noqa: F401  (kv rules)

Builder.load_string("""
#:import theme keyboard_app.ui.theme

<PrivacyPanel>:
    orientation: 'vertical'
    canvas.before:
        Color:
            rgba: theme.SURFACE
        Rectangle:
            pos: self.pos
            size: self.size
    ScrollView:
        do_scroll_x: False
        BoxLayout:
            orientation: 'vertical'
            size_hint_y: None
            height: self.minimum_height
            padding: dp(14), dp(6), dp(14), dp(14)
            spacing: dp(2)
            Heading:
                text: 'Stored on this device'
            Para:
                id: stored
            Para:
                id: kept
                color: theme.MUTED
                font_size: theme.SMALL_SP
            Heading:
                text: 'Training the shared model'
            Para:
                id: participation
            Para:
                id: update
            Para:
                id: learning
                color: theme.MUTED
                font_size: theme.SMALL_SP
            Heading:
                text: 'Model and privacy budget'
            Para:
                id: model
            Para:
                id: epsilon
            Widget:
                size_hint_y: None
                height: dp(10)
            FlatToggle:
                id: pause
                text: 'Training paused (tap to resume)' if self.active else 'Pause training'
                size_hint_y: None
                height: dp(48)
                active: app.learning_paused
                on_active: app.set_learning_paused(self.active)
            FlatButton:
                id: learned_words
                text: 'Learned words (list, remove, pause, export)'
                size_hint_y: None
                height: dp(48)
                on_release: app.show('personal')
            FlatToggle:
                id: incognito
                text: 'Incognito is on (tap to turn off)' if self.active else 'Turn incognito on'
                size_hint_y: None
                height: dp(48)
                active: app.incognito
                on_active: app.set_incognito(self.active)
            FlatButton:
                id: delete
                text: 'Delete typing history'
                fill: theme.DANGER
                size_hint_y: None
                height: dp(48)
                on_release: root.confirm_delete()
            Heading:
                text: 'Privacy spent by this phone'
            Para:
                id: ledger
            Para:
                id: ledger_seen
                color: theme.MUTED
                font_size: theme.SMALL_SP
            Para:
                id: refusal
            Para:
                id: policy
                color: theme.MUTED
                font_size: theme.SMALL_SP

<ConfirmDelete>:
    title: 'Delete typing history?'
    size_hint: 0.9, None
    height: dp(230)
    auto_dismiss: False
    BoxLayout:
        orientation: 'vertical'
        spacing: dp(8)
        Para:
            text: root.message
            color: 1, 1, 1, 1
        BoxLayout:
            size_hint_y: None
            height: dp(48)
            spacing: dp(8)
            FlatButton:
                id: cancel
                text: 'Cancel'
                fill: 0.45, 0.47, 0.52, 1
                on_release: root.dismiss()
            FlatButton:
                id: confirm
                text: 'Delete'
                fill: theme.DANGER
                on_release: root.confirm()
        Widget:

<PrivacyScreen>:
    BoxLayout:
        id: box
        orientation: 'vertical'
        BackBar:
            title: 'Privacy'
""")


class PrivacyPanel(BoxLayout):
    """Shows `lines` (from describe.privacy_lines) and the privacy controls."""

    lines = DictProperty({})

    def on_lines(self, _panel, lines: dict) -> None:
        for key, text in lines.items():
            self.ids[key].text = text

    def confirm_delete(self) -> Popup:
        """Ask first; the history is deleted only on 'Delete'."""
        app = App.get_running_app()
        count, words = app.history_count(), len(app.backend.personal.model.unigrams)
        learned = (f" and the {words:,} words the keyboard learned from you (imported ones "
                   "too)" if words else "")
        keep = " To keep your words, export them first (Learned words)." if words else ""
        popup = ConfirmDelete(message=f"All {count:,} stored messages{learned} will be erased "
                                      f"from this device. This cannot be undone.{keep}")
        popup.open()
        return popup


class ConfirmDelete(Popup):
    """The confirmation dialog for deleting the history."""

    message = StringProperty("")

    def confirm(self) -> None:
        App.get_running_app().delete_history()
        self.dismiss()


class PrivacyScreen(Screen):
    """The privacy panel as a screen of its own (narrow windows)."""
