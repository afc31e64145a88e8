"""Lease takeover across hosts (aggregation_server/liveness.py): a closing round whose lease
owner runs on another host is taken over at once when that owner's heartbeat is stale or
it stopped, and left alone while it beats."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from aggregation_server.db import Round, ServerProcess
from aggregation_server.liveness import STALE_SECONDS

ELSEWHERE = "other-host/4242/1700000000.000"  # a lease owner this host cannot look up


def stuck_round(server) -> tuple[object, int]:
    """A round with 2 of 3 reports, switched to closing under ELSEWHERE's long lease."""
    service = server.app.extensions["pk.service"]
    code = server.enrolment_code(uses=2)
    for device in (server.enrol(code), server.enrol(code)):
        task = server.task(device)
        assert server.upload(device, task["round_id"],
                             server.update_bytes(task)).status_code == 202
    with service.db.write() as s:
        r = s.scalars(select(Round).where(Round.state == "open")).one()
        r.state, r.new_version, r.reason = "closing", 1, "closed by the test"
        r.lease_owner, r.lease_until = ELSEWHERE, server.clock() + 3600
    return service, r.id


def beat(service, heartbeat: float, stopped: bool = False) -> None:
    with service.db.write() as s:
        s.merge(ServerProcess(owner=ELSEWHERE, host="other-host", heartbeat=heartbeat,
                              stopped=stopped))


def state(service, round_id: int) -> str:
    with service.db.read() as s:
        return s.get(Round, round_id).state


@pytest.mark.parametrize("heartbeat_age, stopped", [(STALE_SECONDS + 5, False), (0, True)])
def test_a_dead_owner_on_another_host_loses_its_lease_at_once(server, heartbeat_age,
                                                              stopped):
    service, round_id = stuck_round(server)
    beat(service, server.clock() - heartbeat_age, stopped)
    service.tick()
    assert state(service, round_id) == "closed"
    assert server.status()["model"]["version"] == 1


def test_a_beating_owner_on_another_host_keeps_its_lease(server):
    service, round_id = stuck_round(server)
    beat(service, server.clock())
    service.tick()
    assert state(service, round_id) == "closing"
    beat(service, server.clock(), stopped=True)  # it stops cleanly: taken over now
    service.tick()
    assert state(service, round_id) == "closed"


def test_an_owner_without_heartbeat_keeps_its_lease_until_it_runs_out(server):
    service, round_id = stuck_round(server)
    service.tick()
    assert state(service, round_id) == "closing"


def test_a_server_beats_and_says_when_it_stops(start_server):
    server = start_server()
    service = server.app.extensions["pk.service"]
    with service.db.read() as s:
        row = s.get(ServerProcess, service.liveness.owner)
    assert row is not None and not row.stopped and server.clock() - row.heartbeat < STALE_SECONDS
    service.liveness.stop()
    with service.db.read() as s:
        assert s.get(ServerProcess, service.liveness.owner).stopped
