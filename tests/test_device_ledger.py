"""The device's privacy ledger: what it records, that it outlives restarts, token loss,
re-enrolment, a different server and deleting the history, and how the panel words it."""
from __future__ import annotations

import pytest

from data import load_split
from federated.privacy import composed_epsilon
from keyboard_app.eligibility import Eligibility, EligibilitySettings
from keyboard_app.history import HistoryStore
from keyboard_app.ledger import FILE_NAME, PrivacyLedger
from keyboard_app.privacy_policy import DevicePolicy, PolicyRefusal, RoundTerms
from keyboard_app.runtime import DeviceRuntime
from keyboard_app.ui import describe
from keyboard_app.ui.prefs import Prefs, PrefsError, load_prefs, save_prefs

ONE_DEVICE = {"target_reports": 1, "min_reports": 1, "overcommit": 1.0, "retry_after": 0.2,
              "noise_multiplier": 1.0, "clip_norm": 1.0, "epsilon_budget": None,
              "participation_cap": 20, "train_batch_size": 8, "train_max_examples": 30,
              "secure_aggregation": False}
# one-device rounds: looser than a phone's cohort, so set in code; the lifetime limit is
# the default one (epsilon 10 at delta 1e-6: three rounds at z = 1)
POLICY = DevicePolicy.relaxed(min_reports=1)
PLAIN = RoundTerms(clip_norm=1.0, noise_multiplier=1.0, min_reports=5, secure=False,
                   noise_stddev=1.0, visible_multiplier=1.0)


@pytest.fixture(scope="module")
def messages() -> list[str]:
    return next(d for d in load_split("federated") if 30 <= len(d.messages) <= 60).messages


def phone(folder, server, history: HistoryStore) -> DeviceRuntime:
    eligibility = Eligibility(EligibilitySettings(idle_seconds=0, min_new_messages=0),
                              battery=lambda: None)
    return DeviceRuntime(folder, server.url, history=history, eligibility=eligibility,
                         poll_seconds=0.1, load_model=False, policy=POLICY,
                         enrolment_code=server.enrolment_code())


def test_the_ledger_outlives_restarts_token_loss_re_enrolment_and_servers(
        start_server, tmp_path, messages):
    server = start_server(round=ONE_DEVICE)
    history = HistoryStore(tmp_path / "phone" / "history.sqlite", retention_days=None)
    history.add_many(messages)
    device = phone(tmp_path / "phone", server, history)
    assert device.run_once().outcome == "uploaded"
    server.tick()  # the round worker closes round 1 and opens round 2 (a phone asks later)
    first_id = device.client.device_id

    restarted = phone(tmp_path / "phone", server, history)  # the app restarted
    assert restarted.status().ledger_rounds == 1
    assert restarted.run_once().outcome == "uploaded"
    server.tick()

    from aggregation_server.db import Device
    with server.app.extensions["pk.service"].db.write() as s:  # the server forgets the token
        s.get(Device, first_id).token_sha256 = "0" * 64
    assert restarted.run_once().outcome == "uploaded"  # 401, token recovered, round 3
    server.tick()
    assert restarted.client.device_id == first_id  # with its identity key: the same device
    status = restarted.status()
    assert (status.ledger_rounds, status.ledger_sent) == (3, 3)
    assert status.ledger_epsilon == pytest.approx(composed_epsilon([1.0] * 3, 1e-6))
    assert status.ledger_epsilon < POLICY.epsilon_budget < composed_epsilon([1.0] * 4, 1e-6)

    (tmp_path / "phone" / "device.json").unlink()  # the token is lost
    history.delete_all()  # and the history deleted: privacy spent stays spent
    history.add_many(messages)
    again = phone(tmp_path / "phone", server, history)
    step = again.run_once()
    assert step.outcome == "budget-spent" and "privacy limit" in step.detail
    assert all(r["tasks_issued"] == 0 for r in server.status()["rounds"] if r["id"] > 3)

    other = start_server(round=ONE_DEVICE)  # a different server: the same ledger
    moved = phone(tmp_path / "phone", other, history)
    assert moved.run_once().outcome == "budget-spent"
    assert moved.status().ledger_rounds == 3
    entries = PrivacyLedger(tmp_path / "phone" / FILE_NAME).entries()
    assert [e.round_id for e in entries] == [1, 2, 3]
    assert {e.server for e in entries} == {server.url} and all(e.accepted for e in entries)
    assert all(e.noise_stddev == 1.0 and not e.secure for e in entries)


def test_an_update_counts_once_it_is_sent_whatever_the_server_answers(tmp_path):
    ledger = PrivacyLedger(tmp_path / FILE_NAME)
    accepted = ledger.record_sent("http://a", 1, PLAIN)
    ledger.mark(accepted, accepted=True)
    ledger.mark(ledger.record_sent("http://a", 2, PLAIN), accepted=False)  # kept, said 4xx
    ledger.record_sent("http://b", 1, PLAIN)  # no answer ever came
    ledger.record_refusal("http://b", 2, PolicyRefusal("noise_too_low", "why", "z 0"))
    reopened = PrivacyLedger(tmp_path / FILE_NAME)
    assert [e.accepted for e in reopened.entries()] == [True, False, None]
    assert reopened.summary(1e-6)["rounds"] == 1 and reopened.summary(1e-6)["sent"] == 3
    assert reopened.epsilon(1e-6) == pytest.approx(composed_epsilon([1.0] * 3, 1e-6))
    assert reopened.refusals()[0]["code"] == "noise_too_low"
    assert (tmp_path / FILE_NAME).stat().st_mode & 0o777 == 0o600
    assert reopened.summary(1e-6)["epsilon_alone"] == reopened.epsilon(1e-6)  # plain: the same
    secure = RoundTerms(clip_norm=0.5, noise_multiplier=1.0, min_reports=5, secure=True,
                        noise_stddev=0.25, visible_multiplier=1.0)  # its share: z*C/sqrt(4)
    reopened.record_sent("http://b", 3, secure)
    assert reopened.own_multipliers()[-1] == pytest.approx(0.5)
    assert reopened.summary(1e-6)["epsilon_alone"] == pytest.approx(
        composed_epsilon([1.0, 1.0, 1.0, 0.5], 1e-6))  # if all the others had been fake


def test_the_panel_words_the_ledger_and_the_policy():
    ledger = {"rounds": 3, "sent": 4, "epsilon": 4.21, "limit": 8.0, "delta": 1e-5,
              "exhausted": False, "last_seen": "only the sum of at least 5 phones' updates",
              "last_ts": 1_700_000_000.0, "policy": DevicePolicy().settings(), "relaxed": False,
              "refusal": {"round_id": 9, "ts": 1_700_000_100.0, "reason": "This round asked "
                          "for less noise than your privacy settings allow, so your phone did "
                          "not take part."}}
    lines = describe.ledger_lines(ledger, now=1_700_000_200.0)
    assert lines["ledger"].startswith("Your phone has contributed to 3 rounds. Privacy spent: "
                                      "ε = 4.2 of your limit 8 (δ = 1e-05).")
    assert "1 more update left the phone" in lines["ledger"]
    assert "fake" not in lines["ledger"]  # no epsilon_alone given
    worst = describe.ledger_lines({**ledger, "epsilon_alone": 9.87})["ledger"]
    assert "If every other phone in those rounds had been fake (adding no noise), it would " \
           "be ε = 9.9." in worst
    assert "could see only the sum of at least 5" in lines["ledger_seen"]
    assert "round 9" in lines["refusal"] and "less noise" in lines["refusal"]
    assert "at least 5 phones" in lines["policy"] and "cannot loosen" in lines["policy"]
    assert "does not reset this ledger" in lines["policy"]
    done = describe.ledger_lines({**ledger, "exhausted": True, "refusal": None})
    assert "no longer takes part" in done["ledger"] and "No round" in done["refusal"]
    assert "opening" in describe.ledger_lines(None)["ledger"]
    fresh = describe.ledger_lines({**ledger, "rounds": 0, "sent": 0, "epsilon": 0.0})
    assert fresh["ledger"].startswith("Your phone has not contributed to any round yet. "
                                      "Privacy spent: ε = 0.0 of your limit 8")


def test_settings_can_only_tighten_the_policy(tmp_path):
    tight = Prefs(min_noise_multiplier=1.5, epsilon_limit=3.0, min_round_size=20,
                  require_secure_aggregation=True, max_clip_norm=0.25, dishonest_share=2 / 3)
    save_prefs(tmp_path, tight)
    assert load_prefs(tmp_path) == (tight, None)
    policy = tight.policy()
    assert (policy.min_noise_multiplier, policy.epsilon_budget, policy.min_reports,
            policy.max_clip_norm, policy.dishonest_share) == (1.5, 3.0, 20, 0.25, 2 / 3)
    assert policy.require_secure_aggregation and not policy.explicitly_relaxed
    for loose in (Prefs(min_noise_multiplier=0.5), Prefs(epsilon_limit=50.0),
                  Prefs(min_round_size=2), Prefs(max_clip_norm=2.0),
                  Prefs(dishonest_share=0.1)):
        with pytest.raises(PrefsError, match="only be made stricter"):
            save_prefs(tmp_path, loose)
    assert load_prefs(tmp_path) == (tight, None)  # nothing looser was written
    (tmp_path / "settings.json").write_text('{"epsilon_limit": 1000.0}')  # edited by hand
    prefs, problem = load_prefs(tmp_path)
    assert prefs == Prefs() and "stricter" in problem  # back to the safe defaults


def test_a_ledger_from_before_compressed_rounds_opens_and_keeps_its_rounds(tmp_path):
    """A ledger file written before the own_multiplier column gains it on opening; its
    rows keep their noise over C as their own multiplier."""
    import sqlite3
    path = tmp_path / FILE_NAME
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE rounds (id INTEGER PRIMARY KEY, ts REAL NOT NULL, server TEXT "
                   "NOT NULL, round_id INTEGER NOT NULL, clip_norm REAL NOT NULL, "
                   "noise_multiplier REAL NOT NULL, noise_stddev REAL NOT NULL, secure INTEGER "
                   "NOT NULL, min_reports INTEGER NOT NULL, visible_multiplier REAL NOT NULL, "
                   "seen TEXT NOT NULL, accepted INTEGER)")
        db.execute("INSERT INTO rounds VALUES (1, 0, 'http://a', 1, 0.5, 1, 0.25, 1, 5, 1, "
                   "'the sum', 1)")
    ledger = PrivacyLedger(path)
    ledger.record_sent("http://a", 2, PLAIN)
    assert ledger.own_multipliers() == [pytest.approx(0.5), pytest.approx(1.0)]
    assert [e.accepted for e in ledger.entries()] == [True, None]
