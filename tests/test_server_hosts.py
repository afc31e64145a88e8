"""One deployment across hosts: two server processes with separate data dirs on one
PostgreSQL, models and updates in its `blobs` table (`blob_store = "database"`)."""
from __future__ import annotations

import numpy as np
import pytest

from federated.clock import ManualClock
from aggregation_server.config import ConfigError, load_settings

ROUND = {"target_reports": 2, "min_reports": 2, "overcommit": 1.0}


def test_database_blobs_need_postgresql():
    with pytest.raises(ConfigError, match="shared PostgreSQL database: set db_url"):
        load_settings({"blob_store": "database"}, env={})
    with pytest.raises(ConfigError, match="blob_store must be one of"):
        load_settings({"blob_store": "s3"}, env={})


@pytest.mark.postgres
def test_two_hosts_serve_one_deployment(start_process, pg_url, tmp_path, monkeypatch,
                                        tiny_model):
    monkeypatch.setenv("PK_BLOB_STORE", "database")
    a = start_process(tmp_path / "host-a", pg_url, round=ROUND)
    b = start_process(tmp_path / "host-b", pg_url, round=ROUND)
    code = a.enrolment_code(uses=2)
    first, second = a.enrol(code), b.enrol(code)
    tasks = [a.task(first), b.task(second)]  # each checks in at one host ...
    bodies = [a.update_bytes(task, seed=i) for i, task in enumerate(tasks)]
    assert b.upload(first, tasks[0]["round_id"], bodies[0]).status_code == 202  # ... uploads
    assert a.upload(second, tasks[1]["round_id"], bodies[1]).status_code == 202  # to the other
    a.wait_for(lambda st: st["model"]["version"] == 1 and st["round"]["id"] == 2,
               what="version 1, and the worker done with round 1")

    from federated.wire import decode_update
    deltas = [decode_update(body, tiny_model["shapes"]).tensors for body in bodies]
    models = [host.model(1) for host in (a, b)]
    assert models[0][2].content == models[1][2].content  # the same bytes from either host
    for name, weight in tiny_model["weights"].items():
        expected = weight + (deltas[0][name] + deltas[1][name]) / 2  # FedAvg, server lr 1
        np.testing.assert_allclose(models[0][0][name], expected, rtol=1e-5, atol=1e-6)
    for host in (a, b):
        assert not list((host.data_dir / "updates").rglob("*.safetensors"))  # none on disk
        assert host.model()[2].headers["X-Model-Version"] == "1"


@pytest.mark.postgres
def test_a_secure_round_across_two_hosts(start_server, pg_url, tmp_path):
    """Masked inputs, the protocol's replay and the unmasked mean through the database:
    devices alternate between two servers with separate data dirs."""
    from test_secure_rounds import expect_new_model, run_fleet, secure_round
    clock = ManualClock()  # one time for both hosts, as NTP gives them
    a, b = (start_server(db_url=pg_url, data_dir=tmp_path / host, blob_store="database",
                         round=secure_round(4, 3), clock=clock) for host in ("host-a", "host-b"))
    results = run_fleet([a, b], tmp_path, 4, stops={}, answers={})
    assert [results[i][0] for i in range(4)] == ["done"] * 4
    st = b.wait_for(lambda st: st["model"]["version"] == 1, what="secure round closed")
    assert st["rounds"][0]["reports"] == 4
    step = results[0][2].secagg.config.encoding.step
    expect_new_model(a, [r[1] for r in results.values()], step)
    assert not list(tmp_path.glob("host-*/updates/*/*"))  # masked inputs only in PostgreSQL
