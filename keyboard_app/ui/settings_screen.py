"""Settings: server URL and enrolment code, taking part in training, privacy limits,
retention and filters
(saved as JSON)."""
from kivy.app import App
from kivy.lang import Builder
from kivy.properties import BooleanProperty, StringProperty
from kivy.uix.screenmanager import Screen

from keyboard_app.ui import widgets  # noqa: F401  (kv rules)
from keyboard_app.ui.prefs import (CLIP_CHOICES, COHORT_CHOICES, EPSILON_CHOICES,
                                   NOISE_CHOICES, RETENTION_CHOICES, SHARE_CHOICES, Prefs,
                                   PrefsError)

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
                TextInput:
                    id: enrolment_code
                    multiline: False
                    write_tab: False
                    hint_text: "Enrolment code from the server's operator (first time only)"
                    font_size: theme.BODY_SP
                    size_hint_y: None
                    height: dp(44)
                    padding: dp(10), (self.height - self.line_height) / 2
                Heading:
                    text: 'Take part in training'
                Choice:
                    id: participate
                    text:
                        ('On: train the shared model when idle' if self.active else
                        'Off: never train the shared model here')
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
                Para:
                    id: retention_note
                    text: 'Words learned from your messages stay after the messages go, until you remove them (Privacy, Learned words) or delete the history.'
                    color: theme.MUTED
                    font_size: theme.SMALL_SP
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
                Heading:
                    text: 'Privacy limits (only stricter than the defaults)'
                Para:
                    text: 'Least noise a round must add (noise multiplier):'
                    font_size: theme.SMALL_SP
                BoxLayout:
                    size_hint_y: None
                    height: dp(44)
                    Choice:
                        id: noise_0
                        text: '1 (default)'
                        group: 'noise'
                    Choice:
                        id: noise_1
                        text: '1.5'
                        group: 'noise'
                    Choice:
                        id: noise_2
                        text: '2'
                        group: 'noise'
                Para:
                    text: 'Privacy limit for this phone, for ever (epsilon; lower is stricter):'
                    font_size: theme.SMALL_SP
                BoxLayout:
                    size_hint_y: None
                    height: dp(44)
                    Choice:
                        id: epsilon_0
                        text: '10 (default)'
                        group: 'epsilon'
                    Choice:
                        id: epsilon_1
                        text: '6'
                        group: 'epsilon'
                    Choice:
                        id: epsilon_2
                        text: '3'
                        group: 'epsilon'
                Para:
                    text: 'Fewest phones in a round:'
                    font_size: theme.SMALL_SP
                BoxLayout:
                    size_hint_y: None
                    height: dp(44)
                    Choice:
                        id: cohort_0
                        text: '5 (default)'
                        group: 'cohort'
                    Choice:
                        id: cohort_1
                        text: '20'
                        group: 'cohort'
                    Choice:
                        id: cohort_2
                        text: '100'
                        group: 'cohort'
                Para:
                    text: 'How far one phone can move the shared model (clipping norm):'
                    font_size: theme.SMALL_SP
                BoxLayout:
                    size_hint_y: None
                    height: dp(44)
                    Choice:
                        id: clip_0
                        text: '1 (default)'
                        group: 'clip'
                    Choice:
                        id: clip_1
                        text: '0.5'
                        group: 'clip'
                    Choice:
                        id: clip_2
                        text: '0.25'
                        group: 'clip'
                Para:
                    text: 'Share of fake phones in a round the noise must withstand:'
                    font_size: theme.SMALL_SP
                BoxLayout:
                    size_hint_y: None
                    height: dp(44)
                    Choice:
                        id: share_0
                        text: '1 in 3 (default)'
                        group: 'share'
                    Choice:
                        id: share_1
                        text: '1 in 2'
                        group: 'share'
                    Choice:
                        id: share_2
                        text: '2 in 3'
                        group: 'share'
                Choice:
                    id: require_secure
                    text:
                        ('Secure aggregation: required' if self.active else
                        'Secure aggregation: or the full noise added on this phone')
                    allow_no_selection: True
                Para:
                    text:
                        ('Your phone refuses any round outside these limits. The server '
                        'cannot change them.')
                    color: theme.MUTED
                    font_size: theme.SMALL_SP
                Para:
                    text: 'Data directory: ' + app.data_dir
                    color: theme.MUTED
                    font_size: theme.SMALL_SP
        BoxLayout:
            orientation: 'vertical'
            size_hint_y: None
            height: self.minimum_height
            padding: dp(14), dp(4), dp(14), dp(8)
            spacing: dp(2)
            Para:
                id: message
                text: root.message
                color: theme.DANGER if root.error else theme.MUTED
                height: (self.texture_size[1] + dp(6)) if self.text else 0
            FlatButton:
                id: save
                text: 'Save'
                size_hint_y: None
                height: dp(48)
                on_release: root.save()
""")


class SettingsScreen(Screen):
    """Edits a copy of the app's Prefs; Save validates, persists and applies them."""

    message = StringProperty("")
    error = BooleanProperty(False)

    def load(self, prefs: Prefs) -> None:
        """Show `prefs` in the form."""
        ids = self.ids
        ids.server_url.text = prefs.server_url
        ids.enrolment_code.text = prefs.enrolment_code
        ids.participate.active = prefs.participate
        days = min(RETENTION_CHOICES, key=lambda d: abs(d - prefs.retention_days))
        for choice in RETENTION_CHOICES:
            ids[f"days_{choice}"].active = choice == days
        ids.filter_digits.active = prefs.filter_digits
        ids.filter_emails.active = prefs.filter_emails
        ids.mode_redact.active = prefs.filter_mode == "redact"
        ids.mode_drop.active = prefs.filter_mode == "drop"
        for name, choices, value in self._limits(prefs):
            chosen = max(i for i, c in enumerate(choices) if _stricter_or_equal(name, value, c))
            for i in range(len(choices)):
                ids[f"{name}_{i}"].active = i == chosen
        ids.require_secure.active = prefs.require_secure_aggregation
        self.message, self.error = "", False

    @staticmethod
    def _limits(prefs: Prefs) -> list[tuple[str, tuple, float]]:
        return [("noise", NOISE_CHOICES, prefs.min_noise_multiplier),
                ("epsilon", EPSILON_CHOICES, prefs.epsilon_limit),
                ("cohort", COHORT_CHOICES, prefs.min_round_size),
                ("clip", CLIP_CHOICES, prefs.max_clip_norm),
                ("share", SHARE_CHOICES, prefs.dishonest_share)]

    def _chosen(self, name: str, choices: tuple):
        return next((c for i, c in enumerate(choices) if self.ids[f"{name}_{i}"].active),
                    choices[0])

    def read(self) -> Prefs:
        """The form as Prefs (not yet validated)."""
        ids = self.ids
        days = next((d for d in RETENTION_CHOICES if ids[f"days_{d}"].active), 90)
        return Prefs(server_url=ids.server_url.text.strip(),
                     enrolment_code=ids.enrolment_code.text.strip(),
                     participate=ids.participate.active,
                     retention_days=days, filter_digits=ids.filter_digits.active,
                     filter_emails=ids.filter_emails.active,
                     filter_mode="drop" if ids.mode_drop.active else "redact",
                     min_noise_multiplier=self._chosen("noise", NOISE_CHOICES),
                     epsilon_limit=self._chosen("epsilon", EPSILON_CHOICES),
                     min_round_size=self._chosen("cohort", COHORT_CHOICES),
                     require_secure_aggregation=ids.require_secure.active,
                     max_clip_norm=self._chosen("clip", CLIP_CHOICES),
                     dishonest_share=self._chosen("share", SHARE_CHOICES))

    def save(self) -> bool:
        """Validate, persist and apply; the message line says what happened."""
        try:
            App.get_running_app().apply_prefs(self.read())
        except PrefsError as err:
            self.message, self.error = f"Not saved: {err}", True
            return False
        self.message, self.error = "Saved.", False
        return True


def _stricter_or_equal(name: str, value: float, choice: float) -> bool:
    """Whether a saved limit is at least as strict as a choice (a lower epsilon or clipping
    norm is stricter; for the rest, higher is)."""
    return value <= choice if name in ("epsilon", "clip") else value >= choice
