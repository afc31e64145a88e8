"""The same server on PostgreSQL: life cycle, refusals, cap, budget (two-process tests are in
test_server_faults.py)."""
from __future__ import annotations

import uuid

import pytest

from federated.privacy import composed_epsilon

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_server(start_server, pg_url):
    def start(**round_config):
        return start_server(db_url=pg_url, round=round_config)
    return start


def test_round_life_cycle_on_postgres(pg_server):
    server = pg_server(target_reports=2, min_reports=2)
    devices = [server.enrol() for _ in range(3)]
    tasks = [server.task(d) for d in devices]
    key = str(uuid.uuid4())
    body = server.update_bytes(tasks[0])
    first = server.upload(devices[0], 1, body, key)
    assert first.status_code == 202
    assert server.upload(devices[0], 1, body, key).json() == first.json()
    again = server.upload(devices[0], 1, server.update_bytes(tasks[0], seed=3))
    assert again.status_code == 409 and again.json()["error"] == "already_submitted"
    assert server.upload(devices[1], 1, server.update_bytes(tasks[1])).status_code == 202
    late = server.upload(devices[2], 1, server.update_bytes(tasks[2]))
    assert late.status_code == 409 and late.json()["error"] == "round_closed"
    st = server.status()
    assert st["rounds"][0]["state"] == "closed" and st["round"]["id"] == 2
    assert [v["version"] for v in st["versions"]] == [0, 1]
    _, meta, _ = server.model()
    assert meta["version"] == "1"


def test_abandoned_round_on_postgres(pg_server):
    server = pg_server(round_seconds=4.0)
    device = server.enrol()
    task = server.task(device)
    assert server.upload(device, 1, server.update_bytes(task)).status_code == 202
    server.advance(task["deadline"] - server.clock() + 0.1)
    st = server.status()
    assert st["rounds"][0]["state"] == "abandoned"
    assert st["rounds"][0]["reason"].startswith("deadline passed with 1 of the minimum 2")
    # the server accepted the update, so the device is charged though the round was dropped
    # (a plain round: the device added the full z*C, z = 1, and the server saw its update)
    assert st["privacy"]["epsilon_spent_max"] == pytest.approx(
        composed_epsilon([1.0], st["privacy"]["delta"]), rel=1e-9)


def test_participation_cap_and_budget_on_postgres(pg_server):
    server = pg_server(target_reports=1, min_reports=1, participation_cap=1)
    device = server.enrol()
    task = server.task(device)
    assert server.upload(device, 1, server.update_bytes(task)).status_code == 202
    assert "participation cap" in server.checkin(device)["reason"]
    assert server.set_config(epsilon_budget=1.0).status_code == 200
    other = server.enrol()  # round 2 still runs with the old config
    assert server.upload(other, 2, server.update_bytes(server.task(other))).status_code == 202
    st = server.status()  # round 3 may not start
    assert st["round"]["id"] == 2 and st["round"]["state"] == "closed"
    assert "past the budget 1.0" in st["blocked_reason"]
