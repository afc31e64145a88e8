"""The round life cycle over real HTTP: target, deadline with the minimum, abandonment,
the ticker, pace steering, participation cap, budget refusal, and the aggregation maths."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sqlalchemy import select

from aggregation_server.db import Round, Task

NO_DP = {"noise_multiplier": 0.0, "epsilon_budget": None}


def _upload_all(server, devices, tasks, **kw):
    for i, (d, t) in enumerate(zip(devices, tasks)):
        r = server.upload(d, t["round_id"], server.update_bytes(t, seed=i, **kw))
        assert r.status_code == 202, r.text


def test_round_closes_at_target_and_keeps_versions(server, tiny_model):
    devices = [server.enrol() for _ in range(3)]
    tasks = [server.task(d) for d in devices]
    assert {t["round_id"] for t in tasks} == {1} and tasks[0]["model_version"] == 0
    _upload_all(server, devices, tasks)
    st = server.status()
    first = st["rounds"][0]
    assert first["state"] == "closed" and first["new_version"] == 1
    assert "target" in first["reason"]
    assert st["round"]["id"] == 2 and st["round"]["state"] == "open"  # next one opened
    assert st["round"]["model_version"] == 1
    assert [v["version"] for v in st["versions"]] == [0, 1]
    assert st["versions"][1]["round_id"] == 1 and st["versions"][1]["reports"] == 3
    # updates are gone once aggregated; versions stay, metadata rewritten
    assert not [p for p in (server.data_dir / "updates").rglob("*") if p.is_file()]
    _, meta0, _ = server.model(0)
    _, meta1, r = server.model()
    assert meta0["version"] == "0" and meta1["version"] == "1"
    assert r.headers["X-Model-Version"] == "1"
    training = json.loads(meta1["training"])["federated"]
    assert training["round_id"] == 1 and training["reports"] == 3
    assert meta1["config"] == meta0["config"]
    assert meta1["tokenizer_sha256"] == tiny_model["tokenizer_sha256"]
    assert st["rounds"][0]["metrics"]["loss"] == pytest.approx(3.0)
    service = server.app.extensions["pk.service"]
    with service.db.read() as s:
        tasks = s.scalars(select(Task).where(Task.round_id == 1)).all()
    # only aggregates are kept: no per-device update, metrics or example count
    assert [(t.state, t.path, t.metrics, t.num_examples) for t in tasks] == \
        [("aggregated", None, None, None)] * 3


def test_overcommit_and_pace_steering(server):
    devices = [server.enrol() for _ in range(6)]
    answers = [server.checkin(d) for d in devices]
    assert [a["task"] is not None for a in answers] == [True] * 5 + [False]  # ceil(3 * 1.5)
    full = answers[5]
    assert "full" in full["reason"] and 0 < full["retry_after"] <= 30 * 1.2
    # the same device checking in again gets the same task back
    assert server.checkin(devices[0])["task"] == answers[0]["task"]
    assert server.status()["round"]["tasks_issued"] == 5


def test_deadline_with_minimum_closes(start_server):
    server = start_server(round={"round_seconds": 4.0})
    devices = [server.enrol() for _ in range(2)]
    tasks = [server.task(d) for d in devices]
    _upload_all(server, devices, tasks)
    server.advance(tasks[0]["deadline"] - server.clock() + 0.1)
    st = server.status()
    assert st["rounds"][0]["state"] == "closed" and st["rounds"][0]["new_version"] == 1
    assert "deadline reached with 2 reports" in st["rounds"][0]["reason"]


def test_deadline_below_minimum_abandons_with_reason(start_server):
    server = start_server(round={"round_seconds": 8.0})
    devices = [server.enrol() for _ in range(2)]
    tasks = [server.task(d) for d in devices]
    _upload_all(server, devices[:1], tasks[:1])
    server.advance(tasks[0]["deadline"] - server.clock() + 0.1)
    st = server.status()
    first = st["rounds"][0]
    assert first["state"] == "abandoned" and first["new_version"] is None
    assert first["reason"] == ("deadline passed with 1 of the minimum 2 reports "
                               "(2 tasks handed out)")
    assert [v["version"] for v in st["versions"]] == [0]
    assert not [p for p in (server.data_dir / "updates").rglob("*") if p.is_file()]
    late = server.upload(devices[1], tasks[1]["round_id"], server.update_bytes(tasks[1]))
    assert late.status_code == 409 and "abandoned" in late.json()["message"]
    # the server saw the accepted update: its device is charged although the round was
    # abandoned (the late one was refused, so its device is not)
    assert st["devices"]["participants"] == 1 and st["privacy"]["epsilon_spent_max"] > 0
    assert first["epsilon_max"] == st["privacy"]["epsilon_spent_max"]


def test_background_worker_applies_the_deadline_without_requests(start_server):
    server = start_server(round={"round_seconds": 4.0}, tick_seconds=0.05)
    devices = [server.enrol() for _ in range(2)]
    tasks = [server.task(d) for d in devices]
    _upload_all(server, devices, tasks)
    service = server.app.extensions["pk.service"]
    server.clock.advance(4.1)  # past the deadline; no request and no test tick follows
    server.app.extensions["pk.worker"].wait_ticks(2)  # (one may have begun before)
    with service.db.read() as s:  # read the database directly
        assert s.get(Round, 1).state == "closed" and s.get(Round, 2).state == "open"


def test_requests_and_reads_never_advance_a_round(start_server):
    """Uploads store, reads read: only the round worker (or a direct tick) closes rounds."""
    server = start_server(round={"target_reports": 2, "min_reports": 2, "round_seconds": 60.0})
    devices = [server.enrol() for _ in range(3)]
    tasks = [server.task(d) for d in devices]
    worker = server.app.extensions["pk.worker"]
    worker.stop()
    worker.join(timeout=30)
    for i, (d, t) in enumerate(zip(devices[:2], tasks)):  # raw HTTP: the helper would tick
        r = server.http.put(f"{server.url}/v1/rounds/1/update", data=server.update_bytes(
            t, seed=i), headers={**d.headers, "Idempotency-Key": f"k{i}"}, timeout=60)
        assert r.status_code == 202 and r.json()["reports"] == i + 1
    late = server.http.put(f"{server.url}/v1/rounds/1/update", data=server.update_bytes(
        tasks[2], seed=2), headers={**devices[2].headers, "Idempotency-Key": "k2"}, timeout=60)
    assert late.status_code == 409 and "being aggregated" in late.json()["message"]
    server.clock.advance(120.0)  # and past the deadline
    for _ in range(2):
        st = server.http.get(f"{server.url}/v1/status", timeout=30).json()
        assert server.http.get(server.url + "/", timeout=30).status_code == 200
        assert st["round"]["id"] == 1 and st["round"]["state"] == "open"
        assert [v["version"] for v in st["versions"]] == [0]
    answer = server.http.post(f"{server.url}/v1/checkin", json={"model_version": None},
                              headers=devices[2].headers, timeout=30).json()
    assert answer["task"] is None and "being aggregated" in answer["reason"]
    server.app.extensions["pk.service"].tick()  # what the worker would do
    st = server.http.get(f"{server.url}/v1/status", timeout=30).json()
    assert st["rounds"][0]["state"] == "closed" and st["round"]["id"] == 2
    assert st["rounds"][0]["reason"] == "reached the target of 2 reports"


def test_participation_cap(start_server):
    server = start_server(round={"target_reports": 1, "min_reports": 1,
                                 "participation_cap": 2})
    device = server.enrol()
    for round_id in (1, 2):
        task = server.task(device)
        assert task["round_id"] == round_id
        assert server.upload(device, round_id, server.update_bytes(task)).status_code == 202
    answer = server.checkin(device)
    assert answer["task"] is None
    assert "participation cap" in answer["reason"] and "2" in answer["reason"]
    assert server.task(server.enrol())["round_id"] == 3  # others still get tasks
    assert server.status()["devices"]["participations"] == {"2": 1}


def test_budget_refusal_is_shown_and_lifted(start_server):
    server = start_server(round={"epsilon_budget": 5.0})  # cap 3 at z=1 needs ~9.85
    st = server.status()
    assert st["round"] is None
    assert "past the budget 5.0" in st["blocked_reason"]
    answer = server.checkin(server.enrol())
    assert answer["task"] is None and "no round can start" in answer["reason"]
    html = server.http.get(server.url + "/", timeout=30).text
    assert "past the budget 5.0" in html
    assert server.set_config(epsilon_budget=10.0).status_code == 200
    st = server.status()
    assert st["blocked_reason"] is None and st["round"]["state"] == "open"


def test_dp_off_with_a_budget_is_refused(start_server):
    server = start_server(round={"noise_multiplier": 0.0, "epsilon_budget": 10.0})
    assert "no privacy guarantee (no noise)" in server.status()["blocked_reason"]


def test_device_past_budget_after_config_change_gets_no_task(start_server):
    server = start_server(round={**NO_DP, "noise_multiplier": 0.5, "target_reports": 1,
                                 "min_reports": 1, "participation_cap": 3})
    device = server.enrol()
    for _ in range(2):
        task = server.task(device)
        assert server.upload(device, task["round_id"], server.update_bytes(task)).status_code == 202
    # round 3 is open with the old config; the new one applies from round 4 on
    assert server.set_config(noise_multiplier=0.7, epsilon_budget=20.0).status_code == 200
    other = server.enrol()
    task = server.task(other)
    assert task["round_id"] == 3 and task["noise_multiplier"] == pytest.approx(0.5)
    assert server.upload(other, task["round_id"], server.update_bytes(task)).status_code == 202
    answer = server.checkin(device)  # round 4: two rounds at z=0.5, one at z=0.7: 20.6 > 20
    assert answer["task"] is None and "past the budget" in answer["reason"]
    assert server.task(server.enrol())["round_id"] == 4


def test_stop_abandons_and_start_resumes(server):
    device = server.enrol()
    server.task(device)
    assert server.training("stop").json() == {"training": "stopped"}
    st = server.status()
    assert st["training"] == "stopped" and st["rounds"][0]["state"] == "abandoned"
    answer = server.checkin(device)
    assert answer["task"] is None and answer["reason"] == "training is stopped"
    assert server.training("start").json() == {"training": "running"}
    assert server.task(device)["round_id"] == 2


def test_the_task_says_the_minimum_of_examples(start_server):
    server = start_server(round={"min_examples": 10})
    assert server.task(server.enrol())["min_examples"] == 10  # the device decides


def _fixed_updates(server, scale: float, n: int):
    rng = np.random.default_rng(42)
    out = []
    for _ in range(n):
        t = {k: rng.normal(0, 1, s).astype(np.float32) for k, s in server.shapes.items()}
        norm = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in t.values()))
        out.append({k: (v * (scale / norm)).astype(np.float32) for k, v in t.items()})
    return out


def _run_round(server, updates, examples):
    devices = [server.enrol() for _ in updates]
    tasks = [server.task(d) for d in devices]
    for d, t, u, n in zip(devices, tasks, updates, examples):
        body = server.update_bytes(t, tensors=u, num_examples=n)
        assert server.upload(d, t["round_id"], body).status_code == 202
    return server.model()[0]


@pytest.mark.parametrize("round_config", [
    {"server_optimizer": "fedavg", "server_lr": 0.5, "weighting": "examples"},
    {"server_optimizer": "fedavg", "server_lr": 1.0, "weighting": "uniform"},
    {"server_optimizer": "fedavgm", "server_lr": 0.7, "server_momentum": 0.9,
     "weighting": "examples"},
    {"server_optimizer": "fedavgm", "server_lr": 0.7, "server_momentum": 0.9,
     "weighting": "uniform", "server_lr_schedule": "cosine", "server_lr_rounds": 3},
    {"server_optimizer": "fedadam", "server_lr": 0.01, "adam_beta1": 0.9, "adam_beta2": 0.99,
     "adam_tau": 1e-3, "weighting": "examples"},
])
def test_aggregation_matches_the_reference_maths(start_server, tiny_model, round_config):
    cfg = {**NO_DP, "target_reports": 3, "min_reports": 3, "participation_cap": 10,
           **round_config}
    server = start_server(round=cfg)
    weights = {k: v.astype(np.float64) for k, v in tiny_model["weights"].items()}
    m = {k: np.zeros_like(v) for k, v in weights.items()}
    v_ = {k: np.full_like(w, cfg.get("adam_tau", 0) ** 2) for k, w in weights.items()}
    examples = [5, 10, 25]
    for step in range(2):
        updates = _fixed_updates(server, scale=0.9, n=3)
        got = _run_round(server, updates, examples)
        w = np.array(examples, float) if cfg["weighting"] == "examples" else np.ones(3)
        lr = cfg["server_lr"]
        if cfg.get("server_lr_schedule") == "cosine":  # 0.7, then 0.7 * 0.75
            lr *= 0.5 * (1 + math.cos(math.pi * step / cfg["server_lr_rounds"]))
        training = json.loads(server.model()[1]["training"])["federated"]
        assert training["server_lr"] == pytest.approx(lr)
        for k in weights:
            delta = sum(wi * u[k].astype(np.float64) for wi, u in zip(w, updates)) / w.sum()
            if cfg["server_optimizer"] == "fedavg":
                weights[k] = weights[k] + lr * delta
            elif cfg["server_optimizer"] == "fedavgm":
                m[k] = cfg["server_momentum"] * m[k] + delta
                weights[k] = weights[k] + lr * m[k]
            else:
                m[k] = cfg["adam_beta1"] * m[k] + (1 - cfg["adam_beta1"]) * delta
                v_[k] = cfg["adam_beta2"] * v_[k] + (1 - cfg["adam_beta2"]) * delta ** 2
                weights[k] = weights[k] + lr * m[k] / (np.sqrt(v_[k]) + cfg["adam_tau"])
            np.testing.assert_allclose(got[k], weights[k], rtol=1e-4, atol=1e-6,
                                       err_msg=f"round {step + 1}, tensor {k}")


def test_dp_forces_uniform_weighting(start_server, tiny_model):
    server = start_server(round={"weighting": "examples", "noise_multiplier": 1.0,
                                 "epsilon_budget": None, "target_reports": 2,
                                 "min_reports": 2})
    devices = [server.enrol() for _ in range(2)]
    tasks = [server.task(d) for d in devices]
    updates = _fixed_updates(server, 0.5, 2)
    for d, t, u, n in zip(devices, tasks, updates, (1, 99)):
        assert server.upload(d, t["round_id"],
                             server.update_bytes(t, tensors=u, num_examples=n)).status_code == 202
    got = server.model()[0]
    for k, w in tiny_model["weights"].items():
        np.testing.assert_allclose(got[k], w + (updates[0][k] + updates[1][k]) / 2,
                                   rtol=1e-4, atol=1e-6)
    assert server.status()["versions"][1]["provenance"]["weighting"] == "uniform"
