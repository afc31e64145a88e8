"""When a device may train (Bonawitz et al. 2019): idle, charging, unmetered, enough new text.

On Android the platform reports the battery and whether the network is metered
(`keyboard_app.android`). On a desktop: `psutil` reports the battery where there is one (no
battery means mains power); whether the network is metered cannot be detected, so it is a
setting.
Training polls `should_stop()` between batches and ends as soon as the user types,
unplugs, the network becomes metered or learning is paused.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from keyboard_app import android


@dataclass(frozen=True)
class Battery:
    """What a battery probe reports: charge in percent and whether on mains power."""

    percent: float
    plugged: bool


def psutil_battery() -> Battery | None:
    """The machine's battery via psutil, or None when it has none (mains powered)."""
    import psutil  # desktop only: python-for-android has no psutil recipe
    try:
        info = psutil.sensors_battery()
    except (AttributeError, NotImplementedError, OSError):
        return None
    return None if info is None else Battery(float(info.percent), bool(info.power_plugged))


def platform_battery() -> Battery | None:
    """The battery as the platform reports it: Android's BatteryManager, else psutil."""
    return Battery(*android.battery()) if android.ON_ANDROID else psutil_battery()


def platform_metered() -> bool | None:
    """Whether the network is metered, where the platform can tell (Android); else None."""
    return android.network_metered() if android.ON_ANDROID else None


@dataclass
class EligibilitySettings:
    """The conditions; the defaults are the phone-like ones, relaxed for headless devices."""

    idle_seconds: float = 60.0
    require_charging: bool = True
    require_unmetered: bool = True
    network_metered: bool = False  # desktop: the user's say-so, it cannot be detected there
    min_new_messages: int = 10


@dataclass
class Verdict:
    """Whether the device may train now and, if not, every reason why not."""

    eligible: bool
    reasons: list[str] = field(default_factory=list)
    wait: float = 0.0  # seconds until the idle condition could next be met


class Eligibility:
    """Tracks typing activity and the device's condition; thread-safe.

    `clock` (monotonic seconds), `battery` and `metered` (probes; `metered` None: cannot
    tell, the setting decides) are injectable for tests.
    """

    def __init__(self, settings: EligibilitySettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 battery: Callable[[], Battery | None] = platform_battery,
                 metered: Callable[[], bool | None] = platform_metered) -> None:
        self.settings = settings or EligibilitySettings()
        self.clock = clock
        self.battery = battery
        self.metered = metered
        self.paused = False
        self._last_activity: float | None = None
        self._lock = threading.Lock()

    def note_activity(self) -> None:
        """The user typed: not idle from now on, and any running training stops."""
        with self._lock:
            self._last_activity = self.clock()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def idle_for(self) -> float:
        """Seconds since the user last typed (infinite if never)."""
        with self._lock:
            last = self._last_activity
        return float("inf") if last is None else self.clock() - last

    def _conditions(self) -> tuple[list[str], float]:
        s, reasons, wait = self.settings, [], 0.0
        if self.paused:
            reasons.append("learning is paused")
        idle = self.idle_for()
        if idle < s.idle_seconds:
            reasons.append(f"in use ({idle:.0f} s since typing, needs {s.idle_seconds:.0f} s)")
            wait = s.idle_seconds - idle
        if s.require_charging:
            battery = self.battery()
            if battery is not None and not battery.plugged:
                reasons.append(f"on battery ({battery.percent:.0f}%), not charging")
        if s.require_unmetered:
            detected = self.metered()
            if s.network_metered if detected is None else detected:
                reasons.append("on a metered network")
        return reasons, wait

    def check(self, new_messages: int) -> Verdict:
        """May the device start training, given messages typed since it last took part?"""
        reasons, wait = self._conditions()
        if new_messages < self.settings.min_new_messages:
            reasons.append(f"{new_messages} new messages since last participation, "
                           f"needs {self.settings.min_new_messages}")
        return Verdict(not reasons, reasons, wait)

    def should_stop(self) -> bool:
        """For the training loop: True as soon as the device is no longer fit to train."""
        return bool(self._conditions()[0])
