"""Eligibility: idle, charging, unmetered, enough new messages; training stops when typing."""
import threading

import torch

from keyboard_app.eligibility import Battery, Eligibility, EligibilitySettings, psutil_battery
from model.config import ModelConfig
from model.lstm import NextWordLSTM
from model.train import TrainConfig, train


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Phone:
    """The one allowed stand-in: a phone's battery."""

    def __init__(self, plugged: bool = True, percent: float = 80.0) -> None:
        self.state = Battery(percent, plugged)

    def __call__(self) -> Battery:
        return self.state


def make(clock=None, phone=None, **settings) -> Eligibility:
    return Eligibility(EligibilitySettings(**settings), clock=clock or Clock(),
                       battery=phone or Phone())


def test_idle_transition_after_typing():
    clock = Clock()
    e = make(clock, idle_seconds=60, min_new_messages=0)
    assert e.check(0).eligible  # never typed: idle
    e.note_activity()
    verdict = e.check(0)
    assert not verdict.eligible and "in use" in verdict.reasons[0]
    assert verdict.wait == 60
    clock.now += 59
    assert not e.check(0).eligible
    clock.now += 1
    assert e.check(0).eligible


def test_charging_transitions():
    phone = Phone(plugged=False, percent=42)
    e = make(phone=phone, min_new_messages=0)
    verdict = e.check(0)
    assert not verdict.eligible and verdict.reasons == ["on battery (42%), not charging"]
    phone.state = Battery(43, True)
    assert e.check(0).eligible
    assert make(phone=phone, require_charging=False, min_new_messages=0).check(0).eligible


def test_no_battery_means_mains_power():
    e = Eligibility(EligibilitySettings(min_new_messages=0), battery=lambda: None)
    assert e.check(0).eligible
    probe = psutil_battery()  # the real probe: None on this battery-less machine, or a reading
    assert probe is None or isinstance(probe, Battery)


def test_metered_network_setting():
    e = make(network_metered=True, min_new_messages=0)
    assert e.check(0).reasons == ["on a metered network"]
    e.settings.network_metered = False
    assert e.check(0).eligible
    assert make(network_metered=True, require_unmetered=False, min_new_messages=0).check(0).eligible


def test_needs_enough_new_messages():
    e = make(min_new_messages=10)
    assert not e.check(9).eligible
    assert "9 new messages" in e.check(9).reasons[0]
    assert e.check(10).eligible


def test_pause_and_every_reason_listed():
    clock, phone = Clock(), Phone(plugged=False)
    e = make(clock, phone, network_metered=True, min_new_messages=5)
    e.note_activity()
    e.pause()
    assert len(e.check(0).reasons) == 5 and e.should_stop()
    e.resume()
    clock.now += 1e6
    phone.state = Battery(50, True)
    e.settings.network_metered = False
    assert not e.should_stop() and e.check(5).eligible


def test_should_stop_follows_conditions_not_message_count():
    clock, phone = Clock(), Phone()
    e = make(clock, phone, min_new_messages=100)
    assert not e.should_stop()
    phone.state = Battery(50, False)
    assert e.should_stop()
    phone.state = Battery(50, True)
    e.note_activity()
    assert e.should_stop()


def test_training_stops_promptly_when_the_user_types():
    """A real training run polls should_stop; typing from another thread ends it within a batch."""
    torch.manual_seed(0)
    e = Eligibility(EligibilitySettings(idle_seconds=3600, min_new_messages=0),
                    battery=lambda: None)  # real monotonic clock
    model = NextWordLSTM(ModelConfig(vocab_size=50, embed_dim=8, hidden_size=16))
    sequences = [[2, *(torch.randint(4, 50, (12,)).tolist()), 3] for _ in range(64)]
    steps_seen = []

    def should_stop() -> bool:
        steps_seen.append(1)
        if len(steps_seen) == 5:  # the user types (UI thread) before the 5th batch
            typing = threading.Thread(target=e.note_activity)
            typing.start()
            typing.join()
        return e.should_stop()

    result = train(model, sequences, TrainConfig(epochs=100, batch_size=4, threads=1),
                   should_stop=should_stop, progress=False)
    assert result.stopped
    assert result.steps == 4  # stopped at the first poll after typing, of 1600 planned
