"""Settings: server URL, taking part in training, retention and filters (saved as JSON)."""
from kivy.app import App
from kivy.lang import Builder
from kivy.properties import BooleanProperty, StringProperty
from kivy.uix.screenmanager import Screen

from keyboard_app.ui import widgets  # noqa: F401  (kv rules)
from keyboard_app.ui.prefs import RETENTION_CHOICES, Prefs, PrefsError

Builder.load_string("""
#:import theme keyboard_app.ui.theme
#:import RETENTION_CHOICES keyboard_app.ui.prefs.RETENTION_CHOICES

<Choice@FlatToggle>:
    size_hint_y: None
    height: dp(44)
    allow_no_selection: False
    fill: theme.ACCENT if self.state == 'down' else theme.STRIP

<SettingsScreen>:
    Painted:
        fill: theme.SURFACE
        BackBar:
            title: 'Settings'
        ScrollView:
            do_scroll_x: False
            BoxLayout:
                orientation: 'vertical'
                size_hint_y: None
                height: self.minimum_height
                padding: dp(14), dp(6), dp(14), dp(14)
                spacing: dp(4)
                Heading:
                    text: 'Aggregation server'
                TextInput:
                    id: server_url
                    multiline: False
                    write_tab: False
                    hint_text: 'http://host:port  (empty: offline)'
                    font_size: theme.BODY_SP
                    size_hint_y: None
                    height: dp(44)
                    padding: dp(10), (self.height - self.line_height) / 2
                Heading:
                    text: 'Take part in training'
                Choice:
                    id: participate
                    text:
                        ('On: learn from my typing when idle' if self.active else
                        'Off: never train on this device')
                    allow_no_selection: True
                Heading:
                    text: 'Keep typing history for'
                BoxLayout:
                    size_hint_y: None
                    height: dp(44)
                    Choice:
                        id: days_7
                        text: '7 days'
                        group: 'retention'
                    Choice:
                        id: days_30
                        text: '30 days'
                        group: 'retention'
                    Choice:
                        id: days_90
                        text: '90 days'
                        group: 'retention'
                    Choice:
                        id: days_365
                        text: '1 year'
                        group: 'retention'
                Heading:
                    text: 'Never store'
                Choice:
                    id: filter_digits
                    text: 'Long numbers (cards, phones): ' + ('filtered' if self.active else 'kept')
                    allow_no_selection: True
                Choice:
                    id: filter_emails
                    text: 'E-mail addresses: ' + ('filtered' if self.active else 'kept')
                    allow_no_selection: True
                BoxLayout:
                    size_hint_y: None
                    height: dp(44)
                    Choice:
                        id: mode_redact
                        text: 'Cut them out'
                        group: 'mode'
                    Choice:
                        id: mode_drop
                        text: 'Skip the message'
                        group: 'mode'
                Para:
                    text: 'Password fields and incognito mode are never stored.'
                    color: theme.MUTED
                    font_size: theme.SMALL_SP
                Widget:
                    size_hint_y: None
                    height: dp(8)
                FlatButton:
                    id: save
                    text: 'Save'
                    size_hint_y: None
                    height: dp(48)
                    on_release: root.save()
                Para:
                    id: message
                    text: root.message
                    color: theme.DANGER if root.error else theme.MUTED
                Para:
                    text: 'Data directory: ' + app.data_dir
                    color: theme.MUTED
                    font_size: theme.SMALL_SP
""")


class SettingsScreen(Screen):
    """Edits a copy of the app's Prefs; Save validates, persists and applies them."""

    message = StringProperty("")
    error = BooleanProperty(False)

    def load(self, prefs: Prefs) -> None:
        """Show `prefs` in the form."""
        ids = self.ids
        ids.server_url.text = prefs.server_url
        ids.participate.active = prefs.participate
        days = min(RETENTION_CHOICES, key=lambda d: abs(d - prefs.retention_days))
        for choice in RETENTION_CHOICES:
            ids[f"days_{choice}"].active = choice == days
        ids.filter_digits.active = prefs.filter_digits
        ids.filter_emails.active = prefs.filter_emails
        ids.mode_redact.active = prefs.filter_mode == "redact"
        ids.mode_drop.active = prefs.filter_mode == "drop"
        self.message, self.error = "", False

    def read(self) -> Prefs:
        """The form as Prefs (not yet validated)."""
        ids = self.ids
        days = next((d for d in RETENTION_CHOICES if ids[f"days_{d}"].active), 90)
        return Prefs(server_url=ids.server_url.text.strip(), participate=ids.participate.active,
                     retention_days=days, filter_digits=ids.filter_digits.active,
                     filter_emails=ids.filter_emails.active,
                     filter_mode="drop" if ids.mode_drop.active else "redact")

    def save(self) -> bool:
        """Validate, persist and apply; the message line says what happened."""
        try:
            App.get_running_app().apply_prefs(self.read())
        except PrefsError as err:
            self.message, self.error = f"Not saved: {err}", True
            return False
        self.message, self.error = "Saved.", False
        return True
