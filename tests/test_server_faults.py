"""Faults: kill -9 of a real server process mid-round, and 20 uploads at once."""
from __future__ import annotations

import signal
import sqlite3
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from aggregation_server.clock import OffsetClock
from conftest import poll
from federated.wire import decode_update


def expected_model(base: dict, bodies: list[bytes], shapes: dict, lr: float = 1.0) -> dict:
    """FedAvg of these update bodies (uniform: DP is on) applied to `base`."""
    updates = [decode_update(b, shapes).tensors for b in bodies]
    return {k: base[k] + lr * np.mean([u[k].astype(np.float64) for u in updates], axis=0)
            for k in base}


def assert_model(got: dict, want: dict) -> None:
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_kill_9_mid_round_loses_no_acknowledged_update(start_process, tiny_model, tmp_path):
    data = tmp_path / "data"
    first = start_process(data, round={"target_reports": 6, "min_reports": 2,
                                       "overcommit": 1.0, "round_seconds": 300.0})
    devices = [first.enrol() for _ in range(6)]
    tasks = [first.task(d) for d in devices]
    bodies = [first.update_bytes(t, seed=i) for i, t in enumerate(tasks)]
    keys = [str(uuid.uuid4()) for _ in devices]
    acked: dict[int, dict] = {}
    two_acked = threading.Event()

    def upload(i: int) -> None:
        try:
            r = first.upload(devices[i], tasks[i]["round_id"], bodies[i], keys[i])
        except Exception:  # noqa: BLE001 - the server may die mid-request
            return
        if r.status_code == 202:
            acked[i] = r.json()
            if len(acked) >= 2:
                two_acked.set()

    for i in range(2):  # two uploads surely acknowledged before the kill
        upload(i)
    threads = [threading.Thread(target=upload, args=(i,)) for i in range(2, 5)]
    for t in threads:
        t.start()
    assert two_acked.wait(60)
    first.proc.send_signal(signal.SIGKILL)  # kill -9 while uploads may be in flight
    first.proc.wait()
    for t in threads:
        t.join(timeout=60)
    assert {0, 1} <= set(acked)

    second = start_process(data)
    st = second.status()
    assert st["round"]["id"] == 1 and st["round"]["state"] == "open"
    assert st["round"]["reports"] >= len(acked) and st["round"]["tasks_issued"] == 6
    for i in acked:  # an acknowledged update survived: its retry gets the same answer
        again = second.upload(devices[i], tasks[i]["round_id"], bodies[i], keys[i])
        assert again.status_code == 202 and again.json() == acked[i]
    for i in range(6):  # everyone retries or uploads; nothing is counted twice
        r = second.upload(devices[i], tasks[i]["round_id"], bodies[i], keys[i])
        assert r.status_code == 202, r.text
    st = second.wait_for(lambda s: s["rounds"][0]["state"] == "closed", what="round closed")
    assert st["rounds"][0]["reports"] == 6
    assert [v["version"] for v in st["versions"]] == [0, 1]
    assert_model(second.model(1)[0], expected_model(tiny_model["weights"], bodies,
                                                    tiny_model["shapes"]))
    base, _, _ = second.model(0)
    for k, w in tiny_model["weights"].items():
        np.testing.assert_array_equal(base[k], w)


def heartbeat_after(data: Path, after: float, timeout: float = 60.0) -> None:
    """Wait until a server process on this SQLite data dir noted it is up after `after`."""
    def up() -> bool:
        with sqlite3.connect(f"file:{data / 'server.sqlite3'}?mode=ro", uri=True,
                             timeout=30) as conn:
            return conn.execute("SELECT heartbeat FROM server_state").fetchone()[0] > after
    poll(up, timeout, "the server process to note that it is up")


def test_round_closes_by_its_deadline_after_a_restart(start_process, tiny_model, tmp_path):
    data, clock = tmp_path / "data", OffsetClock(tmp_path / "clock")
    first = start_process(data, round={"target_reports": 5, "min_reports": 2,
                                       "round_seconds": 10.0}, clock=clock)
    assert first.training("stop").status_code == first.training("start").status_code == 200
    devices = [first.enrol() for _ in range(2)]
    tasks = [first.task(d) for d in devices]  # a fresh round: its deadline is 10 s away
    bodies = [first.update_bytes(t, seed=i) for i, t in enumerate(tasks)]
    for d, t, b in zip(devices, tasks, bodies):
        assert first.upload(d, t["round_id"], b).status_code == 202
    first.proc.kill()
    first.proc.wait()
    killed = clock()
    second = start_process(data, tick=0.2, clock=clock)
    heartbeat_after(data, killed)  # (it is up: what follows is no outage)
    clock.advance(max(0.0, tasks[0]["deadline"] + 0.5 - clock()))  # (a slow restart: past it)
    # the restarted process's round worker closes the round at its deadline
    round_id = tasks[0]["round_id"]
    st = second.wait_for(lambda s: s["rounds"][round_id - 1]["state"] == "closed",
                         what="deadline close")
    closed = st["rounds"][round_id - 1]
    assert closed["reports"] == 2 and "deadline" in closed["reason"]
    assert second.events("round_closed")[0]["round_id"] == round_id
    assert_model(second.model(1)[0], expected_model(tiny_model["weights"], bodies,
                                                    tiny_model["shapes"]))


def run_concurrent_round(server, tiny_model, n: int = 20, servers: list | None = None) -> None:
    """n devices check in, then all upload at the same moment; the round must add up."""
    servers = servers or [server]
    devices = [servers[i % len(servers)].enrol() for i in range(n)]
    tasks = [servers[i % len(servers)].task(d) for i, d in enumerate(devices)]
    assert {t["round_id"] for t in tasks} == {tasks[0]["round_id"]}
    bodies = [server.update_bytes(t, seed=i) for i, t in enumerate(tasks)]
    barrier = threading.Barrier(n)

    def upload(i: int):
        target = servers[(i + 1) % len(servers)]  # upload to another process than check-in
        barrier.wait()
        return target.upload(devices[i], tasks[i]["round_id"], bodies[i])

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(upload, range(n)))
    assert [a.status_code for a in answers] == [202] * n, [a.text for a in answers]
    assert sorted(a.json()["reports"] for a in answers) == list(range(1, n + 1))
    st = server.wait_for(lambda s: s["rounds"][0]["state"] == "closed" and len(s["rounds"]) > 1,
                         what="round closed and the next one open")
    assert st["rounds"][0]["reports"] == n and st["rounds"][0]["new_version"] == 1
    assert st["versions"][-1]["reports"] == n
    assert_model(server.model(1)[0], expected_model(tiny_model["weights"], bodies,
                                                    tiny_model["shapes"]))
    for other in servers:
        assert other.status()["rounds"][0] == st["rounds"][0]


CONCURRENT = {"target_reports": 20, "min_reports": 20, "overcommit": 1.0,
              "participation_cap": 2, "epsilon_budget": None}


def test_twenty_concurrent_uploads_sqlite(start_server, tiny_model):
    run_concurrent_round(start_server(round=CONCURRENT), tiny_model)


@pytest.mark.postgres
def test_twenty_concurrent_uploads_postgres(start_server, tiny_model, pg_url):
    run_concurrent_round(start_server(db_url=pg_url, round=CONCURRENT), tiny_model)


@pytest.mark.postgres
def test_two_processes_on_one_postgres_serve_one_round(start_process, tiny_model, pg_url,
                                                      tmp_path):
    data = tmp_path / "shared"  # blobs on a shared folder, state in PostgreSQL
    a = start_process(data, db_url=pg_url, round=CONCURRENT)
    b = start_process(data, db_url=pg_url, round=CONCURRENT)
    run_concurrent_round(a, tiny_model, servers=[a, b])
    closers = a.events("round_closed") + b.events("round_closed")
    assert [e["round_id"] for e in closers] == [1]  # exactly one process closed it
    assert a.status()["round"] == b.status()["round"]  # both see round 2, opened once
    assert a.status()["round"]["id"] == 2


@pytest.mark.postgres
def test_two_tickers_close_a_deadline_round_once(start_process, tiny_model, pg_url, tmp_path):
    data, clock = tmp_path / "shared", OffsetClock(tmp_path / "clock")
    config = {"target_reports": 10, "min_reports": 2, "round_seconds": 10.0}
    a = start_process(data, db_url=pg_url, round=config, tick=0.05, clock=clock)
    b = start_process(data, db_url=pg_url, round=config, tick=0.05, clock=clock)
    assert a.training("stop").status_code == b.training("start").status_code == 200
    devices = [a.enrol(), b.enrol(), a.enrol()]
    tasks = [a.task(devices[0]), b.task(devices[1]), b.task(devices[2])]
    round_id = tasks[0]["round_id"]  # round 1 may have expired while b was starting
    assert {t["round_id"] for t in tasks} == {round_id}
    bodies = [a.update_bytes(t, seed=i) for i, t in enumerate(tasks)]
    assert a.upload(devices[0], round_id, bodies[0]).status_code == 202
    assert b.upload(devices[1], round_id, bodies[1]).status_code == 202
    clock.advance(tasks[0]["deadline"] + 1.0 - clock())  # no requests: the workers act
    st = a.wait_for(lambda s: s["rounds"][-1]["state"] == "open" and s["rounds"][-2]["state"]
                    == "closed", what="deadline close")
    assert st["rounds"][-2]["id"] == round_id and st["rounds"][-2]["reports"] == 2
    closers = a.events("round_closed") + b.events("round_closed")
    assert [e["round_id"] for e in closers] == [round_id]
    opened = a.events("round_opened") + b.events("round_opened")
    assert sorted(e["round_id"] for e in opened) == list(range(1, round_id + 2))
    late = b.upload(devices[2], round_id, bodies[2])
    assert late.status_code == 409 and late.json()["error"] == "round_closed"
    assert_model(b.model(1)[0], expected_model(tiny_model["weights"], bodies[:2],
                                               tiny_model["shapes"]))
