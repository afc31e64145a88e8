"""The attacks of issue 12 that the server side stops, each replayed against a real server
over HTTP (loopback) and shown to fail now. One test per attack, named after it."""
from __future__ import annotations

import requests

from federated import identity


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
    service = server.app.extensions["pk.service"]
    now = [1000.0]
    service.enrolment.clock = lambda: now[0]  # no sleeping: the test moves the clock
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
    now[0] += 60.0  # the window has passed
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
