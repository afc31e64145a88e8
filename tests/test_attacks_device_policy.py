"""The attacks of issue 12 that the device's own privacy policy and ledger stop, replayed
against a real server over HTTP whose round config is malicious; one test per attack.

Each device here is a phone with the default policy (`DevicePolicy()`), or one its user
tightened; the server is the adversary: it sets the round config it likes through its
admin API, or edits its own database.
"""
from __future__ import annotations

import numpy as np
import pytest

from data import load_split
from federated.secagg.params import hiding_problem
from federated.wire import tensors_from_bytes
from keyboard_app.eligibility import Eligibility, EligibilitySettings
from keyboard_app.history import HistoryStore
from keyboard_app.ledger import FILE_NAME, PrivacyLedger
from keyboard_app.privacy_policy import DevicePolicy
from keyboard_app.runtime import DeviceRuntime

# What a phone's default policy accepts: z >= 1, C <= 1, rounds of at least 5 reports.
HONEST = {"target_reports": 5, "min_reports": 5, "overcommit": 1.0, "retry_after": 0.2,
          "noise_multiplier": 1.0, "clip_norm": 1.0, "epsilon_budget": None,
          "participation_cap": 50, "train_batch_size": 8, "train_max_examples": 30,
          "secure_aggregation": False}


@pytest.fixture(scope="module")
def messages() -> list[str]:
    return next(d for d in load_split("federated") if 30 <= len(d.messages) <= 60).messages


def phone(tmp_path, server, messages: list[str], policy: DevicePolicy | None = None,
          name: str = "phone") -> DeviceRuntime:
    """A device that is always eligible, with the default policy unless one is given."""
    history = HistoryStore(":memory:", retention_days=None)
    history.add_many(messages)
    eligibility = Eligibility(EligibilitySettings(idle_seconds=0, min_new_messages=0),
                              battery=lambda: None)
    return DeviceRuntime(tmp_path / name, server.url, history=history, eligibility=eligibility,
                         poll_seconds=0.1, load_model=False, policy=policy,
                         enrolment_code=server.enrolment_code())


def fill_round(server, round_id: int, count: int) -> None:
    """`count` other devices (the test's own) report to `round_id`."""
    for _ in range(count):
        other = server.enrol()
        task = server.task(other)
        assert task["round_id"] == round_id
        assert server.upload(other, round_id, server.update_bytes(task)).status_code == 202


def assert_refused(device: DeviceRuntime, server, code: str, words: str) -> None:
    """The device refused round 1 for `code`, trained nothing, sent nothing, and says why."""
    step = device.run_once()
    assert step.outcome == "refused" and words in step.detail
    status = device.status()
    assert status.refusal == step.detail and status.refused_round == 1
    assert status.last_loss is None and status.rounds_joined == 0  # nothing trained
    assert device.ledger.entries() == [] and device.ledger.epsilon(1e-6) == 0.0
    assert [r["code"] for r in device.ledger.refusals()] == [code]
    assert device.run_once().outcome == "refused"  # asked again: still no
    assert [r["code"] for r in device.ledger.refusals()] == [code]  # recorded once
    assert server.status()["rounds"][0]["reports"] == 0  # nothing reached the server


def test_noise_0_accepted(start_server, tmp_path, messages):
    server = start_server(round={**HONEST, "noise_multiplier": 0.0})
    device = phone(tmp_path, server, messages)
    assert_refused(device, server, "noise_too_low",
                   "This round asked for less noise than your privacy settings allow")


def test_clip_norm_1e5_accepted(start_server, tmp_path, messages):
    server = start_server(round={**HONEST, "clip_norm": 1e5})
    device = phone(tmp_path, server, messages)
    assert_refused(device, server, "clip_too_large", "weigh more than your privacy settings")


def test_secure_aggregation_off_accepted_without_full_local_noise(start_server, tmp_path,
                                                                  messages):
    """A plain round: the device adds the full z*C itself (not z*C/sqrt(m)), so the update
    the server sees is as noisy as a secure round's sum; a user who requires secure
    aggregation does not take part at all."""
    server = start_server(round=HONEST)
    strict = phone(tmp_path, server, messages, DevicePolicy(require_secure_aggregation=True),
                   name="strict")
    assert_refused(strict, server, "secure_required", "secure aggregation off")
    device = phone(tmp_path, server, messages)
    assert device.run_once().outcome == "uploaded"
    [stored] = (server.data_dir / "updates" / "1").glob("*.safetensors")
    tensors, _ = tensors_from_bytes(stored.read_bytes())
    seen = np.concatenate([t.ravel() for t in tensors.values()]).astype(np.float64)
    # the clipped update has norm <= C = 1 over tens of thousands of values: the rest is noise
    assert seen.std() == pytest.approx(1.0, rel=0.03)  # z*C, not z*C/sqrt(5) = 0.45
    [entry] = device.ledger.entries()
    assert (entry.secure, entry.noise_stddev, entry.visible_multiplier) == (False, 1.0, 1.0)
    assert entry.accepted and "this phone's update itself" in entry.seen


def test_secagg_threshold_t_1_accepted(start_server, tmp_path, messages):
    """The server hands out a secure round whose threshold t = 1 lets it recover one
    device's input; the device refuses before training (nothing masked, nothing sent)."""
    from aggregation_server.db import SecAggRound
    server = start_server(round={**HONEST, "secure_aggregation": True,
                                 "secagg_phase_seconds": 15.0})
    server.checkin(server.enrol())  # opens round 1 with an honest protocol config
    with server.app.extensions["pk.service"].db.write() as s:
        row = s.get(SecAggRound, 1)
        assert row.config["threshold"] >= 2
        row.config = config = {**row.config, "threshold": 1}
    device = phone(tmp_path, server, messages)
    assert_refused(device, server, "secagg_unsafe", "could let the server uncover a single "
                                                    "phone's update")
    assert device.ledger.refusals()[0]["detail"] == hiding_problem(
        config["num_clients"], config["degree"], 1)


def test_re_enrolment_resets_the_budget(start_server, tmp_path, messages):
    """The server's budget is per enrolment; the device's own ledger is not. A phone whose
    user set a limit of epsilon 6 (one round at z = 1: 5.2) takes part once, loses its token
    (recovered: the same device), then its token and identity key (it enrols anew with a
    fresh code: a new device with a fresh budget at the server), restarts and moves to
    another server: it takes part in no further round."""
    server = start_server(round=HONEST)
    policy = DevicePolicy(epsilon_budget=6.0)
    device = phone(tmp_path, server, messages, policy)
    fill_round(server, 1, 4)
    assert device.run_once().outcome == "uploaded"
    server.wait_for(lambda st: st["rounds_closed"] == 1, what="round 1 closed")
    first_id = device.client.device_id
    spent = device.status().ledger_epsilon
    assert spent == pytest.approx(5.22, abs=0.01) and device.status().ledger_rounds == 1

    (tmp_path / "phone" / "device.json").unlink()  # token lost: recovered with the
    again = phone(tmp_path, server, messages, policy)  # identity key, after a restart
    assert again.run_once().outcome == "budget-spent"
    assert again.client.device_id == first_id  # the same device at the server, too
    assert server.checkin(server.enrol())["task"]["round_id"] == 2  # which has round 2
    assert "privacy limit" in again.status().detail
    assert again.status().ledger_epsilon == pytest.approx(spent)

    for lost in ("device.json", "identity_key.pem"):  # everything the server knew it by
        (tmp_path / "phone" / lost).unlink()
    fresh = phone(tmp_path, server, messages, policy)  # enrols with a new operator's code
    assert fresh.run_once().outcome == "budget-spent"
    assert fresh.client.device_id not in (None, first_id)  # a new device to the server
    assert fresh.status().ledger_epsilon == pytest.approx(spent)

    other = start_server(round=HONEST)
    moved = phone(tmp_path, other, messages, policy)  # the same phone, another server
    assert moved.run_once().outcome == "budget-spent"
    assert all(r["tasks_issued"] == 0 for r in other.status()["rounds"])
    assert len(PrivacyLedger(tmp_path / "phone" / FILE_NAME).entries()) == 1


def test_history_filters_let_separated_numbers_through(tmp_path):
    """The formats that got through before never reach the history file."""
    store = HistoryStore(tmp_path / "history.sqlite", retention_days=None)
    for text in ("card 4111 - 1111 - 1111 - 1111 ok", "call 555/123/4567 later",
                 "card 4111_1111_1111_1111 ok"):
        assert store.add(text)
    assert store.messages() == ["card ok", "call later", "card ok"]
    store.close()
    raw = (tmp_path / "history.sqlite").read_bytes()
    assert b"1111" not in raw and b"4567" not in raw and b"555" not in raw
