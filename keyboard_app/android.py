"""What only Android can say: battery, metered network, the app's private storage.

Imported everywhere, but the Android calls run only on Android (`ON_ANDROID`, set by
python-for-android's launcher): they use `pyjnius` and p4a's `android` module, both built
into the APK by buildozer.spec, and neither installed on a desktop. The desktop answers are
in `keyboard_app.eligibility` (psutil, a setting) and `keyboard_app.__main__` (XDG folder).
"""
from __future__ import annotations

import os
from pathlib import Path

ON_ANDROID = "ANDROID_ARGUMENT" in os.environ or "P4A_BOOTSTRAP" in os.environ


def _context():
    from jnius import autoclass  # Android only
    return autoclass("org.kivy.android.PythonActivity").mActivity


def battery() -> tuple[float, bool]:
    """(charge in percent, plugged in) from the sticky ACTION_BATTERY_CHANGED broadcast."""
    from jnius import autoclass
    intent, manager = autoclass("android.content.Intent"), autoclass("android.os.BatteryManager")
    status = _context().registerReceiver(
        None, autoclass("android.content.IntentFilter")(intent.ACTION_BATTERY_CHANGED))
    level = status.getIntExtra(manager.EXTRA_LEVEL, -1)
    scale = status.getIntExtra(manager.EXTRA_SCALE, -1)
    percent = 100.0 * level / scale if level >= 0 and scale > 0 else 0.0
    return percent, status.getIntExtra(manager.EXTRA_PLUGGED, 0) != 0


def network_metered() -> bool:
    """ConnectivityManager.isActiveNetworkMetered() (needs ACCESS_NETWORK_STATE)."""
    from jnius import autoclass
    service = autoclass("android.content.Context").CONNECTIVITY_SERVICE
    return bool(_context().getSystemService(service).isActiveNetworkMetered())


def storage_dir() -> Path:
    """The app's private storage (deleted with the app, unreadable by other apps)."""
    from android.storage import app_storage_path  # p4a's `android` recipe
    return Path(app_storage_path()) / "private-keyboard"
