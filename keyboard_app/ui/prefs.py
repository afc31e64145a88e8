"""The app's settings, kept as JSON in the data directory (pure Python, no Kivy)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import urlparse

from device_model.files import write_atomic

FILE_NAME = "settings.json"
RETENTION_CHOICES = (7, 30, 90, 365)
# The privacy limits Settings offers, the default (the device policy's) first: each step
# is stricter. Nothing looser than the first can be saved.
NOISE_CHOICES = (1.0, 1.5, 2.0)
EPSILON_CHOICES = (10.0, 6.0, 3.0)
COHORT_CHOICES = (5, 20, 100)
CLIP_CHOICES = (1.0, 0.5, 0.25)  # smaller is stricter: one phone moves the model less
SHARE_CHOICES = (1 / 3, 1 / 2, 2 / 3)  # larger is stricter: more fake phones withstood


class PrefsError(ValueError):
    """A setting has a value the app cannot use."""


@dataclass
class Prefs:
    """What the user chose in the settings screen."""

    server_url: str = ""
    enrolment_code: str = ""  # the server operator's code, needed to enrol the first time
    participate: bool = True
    retention_days: int = 90
    filter_digits: bool = True  # long digit runs (card and phone numbers) never stored
    filter_emails: bool = True  # e-mail addresses never stored
    filter_mode: str = "redact"  # "redact": cut the match out; "drop": skip the message
    # the device privacy policy, tightened by the user (never below DevicePolicy's defaults)
    min_noise_multiplier: float = 1.0
    epsilon_limit: float = 10.0
    min_round_size: int = 5
    require_secure_aggregation: bool = False
    max_clip_norm: float = 1.0
    dishonest_share: float = 1 / 3

    def validate(self) -> None:
        """Raise PrefsError naming the first bad value."""
        if self.server_url:
            url = urlparse(self.server_url)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise PrefsError(f"server URL must look like http://host:port, "
                                 f"not {self.server_url!r}")
        code = self.enrolment_code
        if not isinstance(code, str) or len(code) > 200 or any(c.isspace() for c in code):
            raise PrefsError("the enrolment code must be the text the server's operator gave "
                             "you, without spaces")
        days = self.retention_days
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
            raise PrefsError(f"retention must be 1 to 3650 days, not {self.retention_days!r}")
        for name in ("participate", "filter_digits", "filter_emails",
                     "require_secure_aggregation"):
            if not isinstance(getattr(self, name), bool):
                raise PrefsError(f"{name} must be true or false")
        if self.filter_mode not in ("redact", "drop"):
            raise PrefsError(f"filter_mode must be 'redact' or 'drop', not {self.filter_mode!r}")
        self.policy()

    def policy(self):
        """The device privacy policy these settings ask for; PrefsError if any limit is
        looser than the defaults (they can only be made stricter)."""
        from keyboard_app.privacy_policy import DevicePolicy, PolicyError
        try:
            return DevicePolicy(min_noise_multiplier=float(self.min_noise_multiplier),
                                epsilon_budget=float(self.epsilon_limit),
                                min_reports=self.min_round_size,
                                require_secure_aggregation=self.require_secure_aggregation,
                                max_clip_norm=float(self.max_clip_norm),
                                dishonest_share=float(self.dishonest_share))
        except (PolicyError, TypeError, ValueError) as err:
            raise PrefsError(f"privacy limits can only be made stricter than the defaults "
                             f"({err})") from None

    def filters(self):
        """The history store's Filters for these settings."""
        from keyboard_app.history import Filters
        return Filters(digits=self.filter_digits, emails=self.filter_emails,
                       mode=self.filter_mode)


def load_prefs(data_dir: str | Path) -> tuple[Prefs, str | None]:
    """The saved settings, or the defaults and a message saying why they were not usable."""
    path = Path(data_dir) / FILE_NAME
    if not path.exists():
        return Prefs(), None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(Prefs)}
        if not isinstance(raw, dict):
            raise PrefsError("not a JSON object")
        if set(raw) - known:
            raise PrefsError(f"unknown keys {sorted(set(raw) - known)}")
        prefs = Prefs(**raw)
        prefs.validate()
        return prefs, None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, PrefsError, TypeError) as err:
        return Prefs(), f"{path}: {err}; using default settings"


def save_prefs(data_dir: str | Path, prefs: Prefs) -> None:
    """Validate, then write atomically."""
    prefs.validate()
    text = json.dumps(asdict(prefs), indent=2, sort_keys=True)
    write_atomic(Path(data_dir) / FILE_NAME, text.encode("utf-8"))
