"""The app against a real aggregation server on loopback: a round runs in the background
while the user keeps typing, and the model version on screen changes."""
import kivy_env  # noqa: E402  sets up Kivy's environment first
from federated.clock import ManualClock

kivy_env.configure_window(kivy_env.PHONE)

ROUND = {"target_reports": 1, "min_reports": 1, "overcommit": 1.0, "retry_after": 0.5,
         "round_seconds": 120.0, "train_epochs": 1.0, "train_batch_size": 8,
         "train_lr": 0.5, "noise_multiplier": 1.0, "clip_norm": 1.0,
         "secure_aggregation": False}  # one device per round: secure aggregation needs 2+
IDLE = 60.0  # seconds without typing before the device may train (on the test's clock)


def _policy():
    """One-device rounds: looser than a phone's default policy, so set in code."""
    from keyboard_app.privacy_policy import DevicePolicy
    return DevicePolicy.relaxed(min_reports=1, epsilon_budget=None)


def test_round_in_background_while_typing(start_server, tiny_model, tmp_path):
    from keyboard_app.eligibility import Eligibility, EligibilitySettings
    from keyboard_app.ui.app import KeyboardApp
    server = start_server(round=ROUND)
    start_version = server.status()["model"]["version"]
    idle_clock = ManualClock(0.0)  # the user's pauses: moved by the test, never waited for
    eligibility = Eligibility(EligibilitySettings(idle_seconds=IDLE, require_charging=False,
                                                  min_new_messages=3), clock=idle_clock)
    pretrained, tokenizer = kivy_env.tiny_model()
    app = KeyboardApp(tmp_path / "device", server_url=server.url, pretrained_model=pretrained,
                      tokenizer_path=tokenizer,
                      runtime_options={"eligibility": eligibility, "poll_seconds": 0.2,
                                       "policy": _policy(),
                                       "enrolment_code": server.enrolment_code()})
    drv = kivy_env.Driver(app)
    try:
        screen = app.typing
        screen.field.focus = True
        drv.until(lambda: app.model_source == "global" and app.model_version == start_version,
                  what="the server's model")
        drv.until(lambda: app.status_text.startswith("Connected"), what="connected status")
        assert f"v{start_version}" in app.status_text

        for text in ("see you tomorrow", "how are you doing", "thanks a lot"):
            drv.type(text)
            idle_clock.advance(1.0)
            assert eligibility.idle_for() == 1.0  # typing = busy: idle since the last key
            drv.key(13)
        assert app.backend.history.count() == 3

        # Type, then pause: the round trains and uploads in the idle gap, in the runtime's
        # thread, while every keystroke still gets its suggestions at once.
        keystrokes = 0
        for char in "so what ":
            drv.type(char)
            keystrokes += 1
            assert screen.strip.suggestions == app.predictor.suggest(screen.before_cursor())
        assert app.model_version == start_version  # busy typing: no round yet
        idle_clock.advance(IDLE * 2)  # the user pauses
        drv.until(lambda: app.model_version != start_version, what="a new model")
        assert app.model_version > start_version and keystrokes > 0
        drv.until(lambda: f"v{app.model_version}" in app.status_text, what="status update")
        status = app.backend.runtime_status()
        assert status["rounds_joined"] == 1 and status["last_update_bytes"] > 0
        assert status["clip_norm"] == 1.0 and status["noise_stddev"] > 0
        drv.type("and then ")
        assert len(screen.strip.suggestions) == 3         # the new model suggests
        drv.screenshot("app_after_round")

        drv.tap(screen.ids.privacy_button)
        lines = app.panel.lines
        assert f"round {status['last_round_id']}" in lines["participation"]
        assert "capped (at 1)" in lines["update"]
        assert f"strength {status['noise_stddev']:g}" in lines["update"]
        assert f"model v{app.model_version}" in lines["model"]
        assert "epsilon" in lines["epsilon"]
        drv.screenshot("app_privacy_after_round")

        drv.tap(app.panel.ids.pause)                        # the user pauses learning
        assert app.backend.runtime.status().paused
        drv.until(lambda: "paused" in app.panel.ids.learning.text, what="paused shown")
    finally:
        drv.close()


def test_setting_a_server_url_connects_without_restarting_the_app(start_server, tmp_path):
    from keyboard_app.ui.app import KeyboardApp
    server = start_server(round=ROUND)
    pretrained, tokenizer = kivy_env.tiny_model()
    app = KeyboardApp(tmp_path / "device", pretrained_model=pretrained, tokenizer_path=tokenizer)
    drv = kivy_env.Driver(app)
    try:
        drv.until(lambda: app.predictor is not None, what="the pre-trained model")
        assert app.model_source == "pretrained" and app.status_text.startswith("Offline")
        drv.tap(app.typing.ids.settings_button)
        app.settings_screen.ids.server_url.text = server.url
        app.settings_screen.ids.enrolment_code.text = server.enrolment_code()
        drv.tap(app.settings_screen.ids.save)
        assert app.settings_screen.message == "Saved."
        drv.until(lambda: app.model_source == "global", what="the server's model")
        drv.until(lambda: app.status_text.startswith("Connected"), what="connected status")
        assert app.backend.runtime is not None and app.prefs.server_url == server.url
        app.show("typing")
        app.typing.field.focus = True
        drv.type("hi ")
        assert len(app.typing.strip.suggestions) == 3
        drv.screenshot("app_connected")

        app.show("settings")                                # take part in training: off
        drv.tap(app.settings_screen.ids.participate)
        drv.tap(app.settings_screen.ids.save)
        assert app.prefs.participate is False and app.backend.runtime.status().paused
        app.show("privacy")
        assert "take part in training is off" in app.panel.ids.learning.text
    finally:
        drv.close()
