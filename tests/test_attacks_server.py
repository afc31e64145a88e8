"""The attacks of issue 12 that the server side stops, each replayed against a real server
over HTTP (loopback) and shown to fail now. One test per attack, named after it."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import requests
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant
from test_secure_rounds import Member, accepted, secure_round

from federated import identity
from federated.privacy import honest_reports, privatize
from federated.wire import Update, encode_update
from keyboard_app.client import SyncClient


def direct_epsilon(multipliers: list[float], delta: float) -> float:
    """dp-accounting called directly: Gaussian mechanisms composed."""
    accountant = RdpAccountant()
    for z in multipliers:
        accountant.compose(dp_event.GaussianDpEvent(z))
    return accountant.get_epsilon(delta)


def _post(server, path: str, body: dict, **kw) -> requests.Response:
    return server.http.post(f"{server.url}{path}", json=body, timeout=30, **kw)


def _plain_round(server, devices, seed: int = 0) -> dict:
    """Every device checks in and uploads; the round's id."""
    tasks = [server.task(d) for d in devices]
    for i, (d, t) in enumerate(zip(devices, tasks)):
        assert server.upload(d, t["round_id"], server.update_bytes(t, seed=seed + i)) \
            .status_code == 202
    return tasks[0]


def test_anyone_can_enrol_without_limit(start_server):
    server = start_server(enrol_rate_limit=3, enrol_rate_seconds=60.0)
    # no sleeping: the test moves the server's clock
    key = lambda: identity.public_key_text(identity.new_key())  # noqa: E731
    # no code, or a made-up one: no device
    r = _post(server, "/v1/devices", {"identity_key": key()})
    assert r.status_code == 401 and r.json()["error"] == "enrolment_code_required"
    r = _post(server, "/v1/devices", {"enrolment_code": "pk-guessed", "identity_key": key()})
    assert r.status_code == 403 and r.json()["error"] == "bad_enrolment_code"
    # a code for 1 device enrols 1 device (the 3rd call of the window)
    code = server.enrolment_code(uses=1)
    assert _post(server, "/v1/devices", {"enrolment_code": code,
                                         "identity_key": key()}).status_code == 201
    # hammering: the 4th call from this address in the window is refused with Retry-After
    r = _post(server, "/v1/devices", {"enrolment_code": code, "identity_key": key()})
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    assert r.headers["Retry-After"] == "60"
    server.clock.advance(60.0)  # the window has passed
    r = _post(server, "/v1/devices", {"enrolment_code": code, "identity_key": key()})
    assert r.status_code == 403 and "no uses left" in r.json()["message"]
    # a revoked code enrols nobody; the operator sees what each code did
    spare = server.enrolment_code(uses=5)
    listed = server.http.get(f"{server.url}/v1/admin/enrolment-codes", headers=server.admin,
                             timeout=30).json()["codes"]
    assert [(c["uses"], c["used"]) for c in listed] == [(1, 1), (5, 0)]
    assert all("code" not in c for c in listed)  # shown once, stored hashed
    revoked = server.http.delete(f"{server.url}/v1/admin/enrolment-codes/{listed[1]['id']}",
                                 headers=server.admin, timeout=30)
    assert revoked.status_code == 200 and revoked.json()["remaining"] == 0
    r = _post(server, "/v1/devices", {"enrolment_code": spare, "identity_key": key()})
    assert r.status_code == 403 and "revoked" in r.json()["message"]
    assert server.status()["devices"]["enrolled"] == 1


def test_a_new_enrolment_starts_the_budget_from_zero(start_server):
    server = start_server(round={"target_reports": 1, "min_reports": 1,
                                 "participation_cap": 1})
    device = server.enrol()
    _plain_round(server, [device])
    public = identity.public_key_text(device.key)
    # the same identity cannot enrol again, not even with a fresh code
    r = _post(server, "/v1/devices", {"enrolment_code": server.enrolment_code(),
                                      "identity_key": public})
    assert r.status_code == 409 and r.json()["error"] == "identity_enrolled"
    # a device that lost its token proves its identity and gets back the SAME device
    challenge = _post(server, "/v1/devices/challenge", {"identity_key": public})
    assert challenge.status_code == 201
    text = challenge.json()["challenge"]
    forged = identity.sign(identity.new_key(), identity.RECOVERY_CONTEXT, text.encode())
    r = _post(server, "/v1/devices/recover", {"identity_key": public, "challenge": text,
                                              "signature": forged})
    assert r.status_code == 403 and r.json()["error"] == "bad_signature"
    signed = identity.sign(device.key, identity.RECOVERY_CONTEXT, text.encode())
    r = _post(server, "/v1/devices/recover", {"identity_key": public, "challenge": text,
                                              "signature": signed})
    assert r.status_code == 200 and r.json()["device_id"] == device.device_id
    again = _post(server, "/v1/devices/recover", {"identity_key": public, "challenge": text,
                                                  "signature": signed})
    assert again.status_code == 403 and again.json()["error"] == "bad_challenge"  # used once
    old = server.http.post(f"{server.url}/v1/checkin", json={"num_examples": 20},
                           headers=device.headers, timeout=30)
    assert old.status_code == 401  # the old token is gone
    recovered = type(device)(device.device_id, r.json()["token"], device.key)
    answer = server.checkin(recovered)
    assert answer["task"] is None and "participation cap reached" in answer["reason"]


def test_reported_epsilon_is_not_the_one_against_the_server(start_server):
    """A plain round: the server sees each update, so each device adds the full z*C and the
    figure against the server counts the round at z; model users see only the mean of
    >= min_reports updates, h of them honest: z*sqrt(h). Both are shown, labelled."""
    z, m = 1.1, 3
    server = start_server(round={"noise_multiplier": z, "target_reports": m, "min_reports": m,
                                 "participation_cap": 2, "epsilon_budget": None})
    devices = [server.enrol() for _ in range(m)]
    task = _plain_round(server, devices)
    assert (task["noise_multiplier"], task["min_reports"]) == (z, m)  # the device sizes z*C
    st = server.wait_for(lambda st: st["rounds_closed"] == 1, what="round closed")
    h = honest_reports(m)
    p = st["privacy"]
    assert p["epsilon_spent_max"] == pytest.approx(direct_epsilon([z], 1e-6), rel=1e-9)
    assert p["epsilon_spent_max_model_users"] == pytest.approx(
        direct_epsilon([z * math.sqrt(h)], 1e-6), rel=1e-9)
    assert p["epsilon_at_cap"] == pytest.approx(direct_epsilon([z, z], 1e-6), rel=1e-9)
    assert [f["label"] for f in p["figures"]] == ["against the server", "against model users"]
    assert any("dishonest share" in a for a in p["assumptions"])
    assert any("honest-but-curious" in a for a in p["assumptions"])
    page = server.http.get(server.url + "/", timeout=30).text
    assert "against the server" in page and "against model users" in page
    assert f"epsilon {p['epsilon_spent_max']:.2f}" in page
    for word in ("None", "inf", "nan"):
        assert f">{word}<" not in page and f" {word} " not in page
    # without noise, people read words, not "inf" or "None"
    assert server.set_config(noise_multiplier=0.0, epsilon_budget=None).status_code == 200
    server.training("stop")
    server.training("start")
    _plain_round(server, [server.enrol() for _ in range(m)], seed=10)
    st = server.wait_for(lambda st: st["rounds_closed"] == 2, what="round 2 closed")
    assert st["privacy"]["epsilon_spent_max"] is None
    assert st["privacy"]["figures"][0]["spent_text"] == "no privacy guarantee (no noise)"
    assert "no privacy guarantee (no noise)" in server.http.get(server.url + "/").text


def _secure_round_through(members, phases=("advertise", "share", "mask", "sign", "unmask")) -> None:
    for phase in phases:
        for member in members:
            accepted(getattr(member, phase)())


def test_fake_devices_uploading_zeros_remove_the_noise(start_server):
    """A secure round of 3 where one 'device' is fake and sends zeros (no noise): each honest
    device's noise is sized for the dishonest share (1/3 of 3: 2 honest), so the released
    sum still carries noise of standard deviation z*C. (Sized for 3 reports, as before,
    the sum would carry z*C*sqrt(2/3).)"""
    z, clip = 1.0, 1.0
    server = start_server(round=secure_round(3, 3, noise_multiplier=z, clip_norm=clip,
                                             epsilon_budget=None))
    members = [Member(server, i) for i in range(3)]
    for i, member in enumerate(members[:2]):  # honest: nothing learned, only the noise
        zeros = {k: np.zeros(s, np.float32) for k, s in server.shapes.items()}
        member.update, _ = privatize(zeros, clip, _noise(member.task),
                                     np.random.default_rng(500 + i))
    members[2].update = {k: np.zeros(s, np.float32) for k, s in server.shapes.items()}
    _secure_round_through(members)
    server.wait_for(lambda st: st["rounds_closed"] == 1, what="secure round closed")
    before, after = server.model(0)[0], server.model(1)[0]
    total = np.concatenate([(after[k].astype(np.float64) - before[k]).ravel() * 3
                            for k in server.shapes])  # the sum of the 3 inputs
    spread = float(total.std())
    assert spread == pytest.approx(z * clip, rel=6 / math.sqrt(2 * total.size) + 0.01)
    assert abs(spread - z * clip * math.sqrt(2 / 3)) > 0.05  # the old sizing is ruled out


def _noise(task: dict) -> float:
    from conftest import task_noise
    return task_noise(task)


def test_a_round_abandoned_after_unmasking_charges_nobody(start_server):
    """One tampered device sends values at the encoding's bound: the unmasked sum is too
    long and the server abandons the round after unmasking. It saw the unmasked sum, so
    every device whose masked input it accepted is charged (at z, the honest sum's noise)."""
    z = 1.2
    server = start_server(round=secure_round(3, 3, noise_multiplier=z, epsilon_budget=None,
                                             participation_cap=2))
    members = [Member(server, i) for i in range(3)]
    bound = members[0].config.encoding.bound
    members[0].update = {k: np.full(s, bound, np.float32) for k, s in server.shapes.items()}
    _secure_round_through(members)
    st = server.wait_for(lambda st: st["rounds"][0]["state"] == "abandoned", what="abandoned")
    assert "unmasked sum" in st["rounds"][0]["reason"]
    assert st["devices"]["participants"] == 3 and st["devices"]["participations"] == {"1": 3}
    expected = direct_epsilon([z], 1e-6)
    assert st["privacy"]["epsilon_spent_max"] == pytest.approx(expected, rel=1e-9)
    assert st["privacy"]["epsilon_spent_max_model_users"] == pytest.approx(expected, rel=1e-9)
    assert st["rounds"][0]["epsilon_max"] == pytest.approx(expected, rel=1e-9)


def test_check_in_sends_the_exact_history_size(server):
    sent: list[bytes] = []
    client = SyncClient(server.url, server.data_dir / "phone",
                        enrolment_code=server.enrolment_code())
    client.session.hooks["response"].append(lambda r, *a, **k: sent.append(r.request.body))
    task = client.checkin(None)
    assert task.min_examples == 1  # a Task, not a NoTask: the device compares, not the server
    assert json.loads(sent[-1]) == {"model_version": None,  # nothing about its history
                                    "kinds": ["train", "evaluate"]}
    device = server.enrol()
    r = server.http.post(f"{server.url}/v1/checkin", json={"num_examples": 1234},
                         headers=device.headers, timeout=30)
    assert r.status_code == 400 and "num_examples" in r.json()["message"]


def test_num_examples_2_31_minus_1_accepted_and_published(start_server):
    server = start_server(round={"target_reports": 2, "min_reports": 2,
                                 "train_max_examples": 1000})
    devices = [server.enrol() for _ in range(2)]
    tasks = [server.task(d) for d in devices]
    huge = server.update_bytes(tasks[0], num_examples=2**31 - 1)
    r = server.upload(devices[0], tasks[0]["round_id"], huge)
    assert r.status_code == 422 and r.json()["error"] == "num_examples_over_cap"
    assert server.status()["round"]["reports"] == 0  # nothing stored
    for i, (d, t) in enumerate(zip(devices, tasks)):
        body = server.update_bytes(t, seed=i, num_examples=987 - i)
        assert server.upload(d, t["round_id"], body).status_code == 202
    st = server.wait_for(lambda st: st["rounds_closed"] == 1, what="round closed")
    published = json.dumps(st) + server.http.get(server.url + "/", timeout=30).text
    assert "num_examples" not in json.dumps(st["rounds"]) + json.dumps(st["versions"])
    # as numbers of their own (hex digests and timestamps contain such digits by chance)
    assert not re.search(r"\b(987|986|1973)\b", published)


def test_device_chosen_metric_names_published(server):
    devices = [server.enrol() for _ in range(3)]
    tasks = [server.task(d) for d in devices]
    odd = server.update_bytes(tasks[0], metrics={"loss": 2.0, "alice_typed_hello": 1.0})
    r = server.upload(devices[0], tasks[0]["round_id"], odd)
    assert r.status_code == 400 and "alice_typed_hello" in r.json()["message"]
    for i, (d, t) in enumerate(zip(devices, tasks)):
        body = server.update_bytes(t, seed=i, metrics={"loss": 2.0 + i, "accuracy": 0.1})
        assert server.upload(d, t["round_id"], body).status_code == 202
    st = server.wait_for(lambda st: st["rounds_closed"] == 1, what="round closed")
    assert set(st["rounds"][0]["metrics"]) == {"loss", "accuracy", "reports"}
    assert st["rounds"][0]["metrics"]["loss"] == pytest.approx(3.0)  # only the round's mean


@pytest.mark.parametrize("header", [b"[" * 200_000 + b"]" * 200_000,
                                    b'{"a": ' + b"{" * 5000 + b"}" * 5001,
                                    b"{" + b" " * (2 << 20) + b"}"])
def test_deeply_nested_safetensors_header_answers_500(server, header):
    device = server.enrol()
    task = server.task(device)
    body = len(header).to_bytes(8, "little") + header
    r = server.upload(device, task["round_id"], body)
    assert r.status_code in (400, 413), r.text
    assert r.json()["error"] in ("invalid_update", "too_large") and r.json()["message"]
    assert server.status()["round"]["reports"] == 0
    ok = encode_update(Update({k: np.zeros(s, np.float32) for k, s in server.shapes.items()},
                              task["round_id"], task["model_version"], 5, {}))
    assert server.upload(device, task["round_id"], ok).status_code == 202  # still served
