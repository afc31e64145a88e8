"""The app's privacy panel shows the device's own ledger and policy in plain words; Settings
can only make the policy stricter; deleting the history leaves the ledger as it was.

Headless Kivy with real widgets, a real ledger file and the tiny offline model.
"""
import json

import pytest

import kivy_env  # noqa: E402  sets up Kivy's environment first

kivy_env.configure_window(kivy_env.PHONE)


def scroll_to_bottom(drv, widget) -> None:
    """Scroll the ScrollView inside `widget` to its end (the phone screen is short)."""
    from kivy.uix.scrollview import ScrollView
    drv.frames(2)
    next(w for w in widget.walk() if isinstance(w, ScrollView)).scroll_y = 0
    drv.frames(3)


@pytest.fixture(scope="module")
def drv(tmp_path_factory):
    from keyboard_app.ledger import FILE_NAME, PrivacyLedger
    from keyboard_app.privacy_policy import PolicyRefusal, RoundTerms
    from keyboard_app.ui.app import KeyboardApp
    data_dir = tmp_path_factory.mktemp("device")
    ledger = PrivacyLedger(data_dir / FILE_NAME)  # two earlier rounds, one refusal
    for round_id, secure in ((3, False), (4, True)):
        terms = RoundTerms(1.0, 1.0, 5, secure, 1.0 if not secure else 0.5, 1.0)
        ledger.mark(ledger.record_sent("http://old-server:8080", round_id, terms), True)
    ledger.record_refusal("http://old-server:8080", 5, PolicyRefusal(
        "noise_too_low", "This round asked for less noise than your privacy settings allow, "
                         "so your phone did not take part.", "z 0"))
    model, tokenizer = kivy_env.tiny_model()
    driver = kivy_env.Driver(KeyboardApp(data_dir, pretrained_model=model,
                                         tokenizer_path=tokenizer))
    driver.until(lambda: driver.app.predictor is not None, what="the model to load")
    yield driver
    driver.close()


def test_the_panel_shows_the_ledger_and_the_limits(drv):
    app = drv.app
    drv.tap(app.typing.ids.privacy_button)
    drv.until(lambda: "contributed" in app.panel.ids.ledger.text, what="the ledger")
    ids = app.panel.ids
    assert ids.ledger.text.startswith("Your phone has contributed to 2 rounds. Privacy spent: "
                                      "ε = 7.8 of your limit 10 (δ = 1e-06).")
    assert "only the sum of at least 5 phones' updates" in ids.ledger_seen.text
    assert "round 5" in ids.refusal.text and "less noise than your privacy" in ids.refusal.text
    assert "noise of at least 1 times" in ids.policy.text and "cannot loosen" in ids.policy.text
    scroll_to_bottom(drv, app.panel)
    drv.screenshot("app_privacy_ledger")
    app.commit_message("see you at 5 tomorrow")
    before = ids.ledger.text
    assert app.delete_history() == 1
    drv.frames(2)
    assert ids.ledger.text == before  # privacy spent stays spent
    assert "does not reset this ledger" in ids.policy.text


def test_settings_tighten_the_policy_and_the_panel_follows(drv):
    app = drv.app
    app.show("settings")
    ids = app.settings_screen.ids
    assert ids.noise_0.active and ids.epsilon_0.active and ids.cohort_0.active
    assert ids.clip_0.active and ids.share_0.active and not ids.require_secure.active
    scroll_to_bottom(drv, app.settings_screen)
    for choice in (ids.noise_1, ids.epsilon_2, ids.cohort_1, ids.clip_1, ids.share_1,
                   ids.require_secure):
        drv.tap(choice)
    drv.tap(ids.save)
    assert app.settings_screen.message == "Saved."
    drv.screenshot("app_settings_privacy_limits")
    saved = json.loads((kivy_env.Path(app.data_dir) / "settings.json").read_text())
    assert (saved["min_noise_multiplier"], saved["epsilon_limit"], saved["min_round_size"],
            saved["require_secure_aggregation"], saved["max_clip_norm"],
            saved["dishonest_share"]) == (1.5, 3.0, 20, True, 0.5, 0.5)
    policy = app.backend.policy()
    assert (policy.min_noise_multiplier, policy.epsilon_budget, policy.min_reports,
            policy.max_clip_norm, policy.dishonest_share) == (1.5, 3.0, 20, 0.5, 0.5)
    assert policy.require_secure_aggregation
    app.show("privacy")
    panel = app.panel.ids
    assert "of your limit 3" in panel.ledger.text and "limit is reached" in panel.ledger.text
    assert "at least 20 phones" in panel.policy.text
    assert "secure aggregation required" in panel.policy.text
    assert "at most 0.5" in panel.policy.text and "1 in 2 of the phones" in panel.policy.text
