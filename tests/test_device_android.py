"""The app's Android parts: the platform check, the desktop fallbacks, and what the Android
probes read (through a stand-in for pyjnius: there is no Android on these machines)."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from keyboard_app import android
from keyboard_app.__main__ import default_data_dir
from keyboard_app.eligibility import (Eligibility, EligibilitySettings, platform_battery,
                                      platform_metered, psutil_battery)


def test_a_desktop_uses_psutil_the_setting_and_the_xdg_folder(monkeypatch, tmp_path):
    assert not android.ON_ANDROID
    assert platform_battery() == psutil_battery()
    assert platform_metered() is None
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "private-keyboard"


@pytest.mark.parametrize("detected, setting, metered", [
    (None, False, False), (None, True, True),  # desktop: the setting decides
    (True, False, True), (False, True, False)])  # Android: the platform decides
def test_the_platform_decides_whether_the_network_is_metered(detected, setting, metered):
    eligibility = Eligibility(EligibilitySettings(min_new_messages=0, network_metered=setting),
                              battery=lambda: None, metered=lambda: detected)
    verdict = eligibility.check(0)
    assert ("on a metered network" in verdict.reasons) == metered
    assert verdict.eligible != metered and eligibility.should_stop() == metered


class _Extras:
    """A sticky ACTION_BATTERY_CHANGED intent: 37 of 50, on USB power."""

    def getIntExtra(self, key: str, default: int) -> int:  # noqa: N802 (Java's name)
        return {"level": 37, "scale": 50, "plugged": 2}.get(key, default)


class _Activity:
    def registerReceiver(self, receiver, intent_filter):  # noqa: N802
        assert receiver is None and intent_filter.action == "android.intent.action.BATTERY_CHANGED"
        return _Extras()

    def getSystemService(self, name: str):  # noqa: N802
        assert name == "connectivity"
        return types.SimpleNamespace(isActiveNetworkMetered=lambda: True)


def _autoclass(name: str):
    classes = {
        "org.kivy.android.PythonActivity": types.SimpleNamespace(mActivity=_Activity()),
        "android.content.Intent": types.SimpleNamespace(
            ACTION_BATTERY_CHANGED="android.intent.action.BATTERY_CHANGED"),
        "android.content.IntentFilter": lambda action: types.SimpleNamespace(action=action),
        "android.os.BatteryManager": types.SimpleNamespace(
            EXTRA_LEVEL="level", EXTRA_SCALE="scale", EXTRA_PLUGGED="plugged"),
        "android.content.Context": types.SimpleNamespace(CONNECTIVITY_SERVICE="connectivity")}
    return classes[name]


def test_on_android_the_probes_ask_the_platform(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "jnius", types.SimpleNamespace(autoclass=_autoclass))
    storage = types.ModuleType("android.storage")
    storage.app_storage_path = lambda: str(tmp_path)
    monkeypatch.setitem(sys.modules, "android", types.ModuleType("android"))
    monkeypatch.setitem(sys.modules, "android.storage", storage)
    monkeypatch.setattr(android, "ON_ANDROID", True)
    battery = platform_battery()
    assert (battery.percent, battery.plugged) == (74.0, True)
    assert platform_metered() is True
    assert default_data_dir() == Path(tmp_path) / "private-keyboard"
    verdict = Eligibility(EligibilitySettings(min_new_messages=0)).check(0)
    assert verdict.reasons == ["on a metered network"]
