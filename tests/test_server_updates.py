"""Update uploads over real HTTP: acceptance, idempotency, and every refusal (4xx JSON, no
state change)."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from federated.wire import UPDATE_FORMAT, Update, encode_update


def _pending_files(server) -> list:
    return sorted(p for p in (server.data_dir / "updates").rglob("*") if p.is_file())


@pytest.fixture
def setup(server):
    """A round with one device holding a task."""
    device = server.enrol()
    task = server.task(device)
    return server, device, task


def _assert_unchanged(server, device, task, reports: int = 0) -> None:
    """The refusal left no trace: same report count, no stored file, and the task still usable."""
    round_ = server.status()["round"]
    assert round_["id"] == task["round_id"] and round_["reports"] == reports
    assert _pending_files(server) == [] or reports > 0


def _body(server, task, **meta_overrides) -> bytes:
    tensors = {k: np.zeros(s, np.float32) for k, s in server.shapes.items()}
    meta = {"format": UPDATE_FORMAT, "round_id": str(task["round_id"]),
            "model_version": str(task["model_version"]), "num_examples": "5", "metrics": "{}"}
    meta.update(meta_overrides)
    return st_save(tensors, metadata=meta)


def test_accepted_update_is_stored_and_acknowledged(setup):
    server, device, task = setup
    r = server.upload(device, task["round_id"], server.update_bytes(task))
    assert r.status_code == 202
    assert r.json() == {"accepted": True, "round_id": task["round_id"], "reports": 1}
    assert len(_pending_files(server)) == 1
    assert server.status()["round"]["reports"] == 1


def test_same_idempotency_key_gets_the_same_answer(setup):
    server, device, task = setup
    body, key = server.update_bytes(task), str(uuid.uuid4())
    first = server.upload(device, task["round_id"], body, key=key)
    again = server.upload(device, task["round_id"], body, key=key)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert server.status()["round"]["reports"] == 1
    assert len(_pending_files(server)) == 1


def test_second_different_upload_is_refused(setup):
    server, device, task = setup
    assert server.upload(device, task["round_id"], server.update_bytes(task)).status_code == 202
    r = server.upload(device, task["round_id"], server.update_bytes(task, seed=5))
    assert r.status_code == 409 and r.json()["error"] == "already_submitted"
    assert server.status()["round"]["reports"] == 1
    assert len(_pending_files(server)) == 1


def test_same_key_with_a_different_body_is_refused(setup):
    server, device, task = setup
    key = str(uuid.uuid4())
    assert server.upload(device, task["round_id"], server.update_bytes(task), key).status_code == 202
    r = server.upload(device, task["round_id"], server.update_bytes(task, seed=9), key)
    assert r.status_code == 409 and r.json()["error"] == "idempotency_key_reused"
    assert server.status()["round"]["reports"] == 1


@pytest.mark.parametrize("case, status, code, needle", [
    ("no_auth", 401, "unauthorized", "Bearer"),
    ("bad_token", 401, "unauthorized", "unknown device token"),
    ("no_key", 400, "bad_idempotency_key", "Idempotency-Key"),
    ("bad_key", 400, "bad_idempotency_key", "Idempotency-Key"),
    ("no_round", 404, "no_such_round", "no round 999"),
    ("no_task", 403, "no_task", "holds no task"),
    ("garbage", 400, "invalid_update", "safetensors"),
    ("empty", 400, "invalid_update", "too short"),
    ("wrong_format", 400, "invalid_update", "format"),
    ("missing_tensor", 400, "invalid_update", "missing"),
    ("extra_tensor", 400, "invalid_update", "unexpected"),
    ("wrong_shape", 400, "invalid_update", "shape"),
    ("wrong_dtype", 400, "invalid_update", "float32"),
    ("nan", 400, "invalid_update", "non-finite"),
    ("inf", 400, "invalid_update", "non-finite"),
    ("bad_metrics", 400, "invalid_update", "metrics"),
    ("zero_examples", 400, "invalid_update", "num_examples"),
    ("wrong_round_meta", 400, "wrong_round", "round"),
    ("wrong_version", 400, "wrong_model_version", "model version"),
    ("norm", 422, "norm_too_large", "L2 norm"),
    ("too_large", 413, "too_large", "limit"),
])
def test_refusals_are_specific_and_change_nothing(setup, case, status, code, needle):
    server, device, task = setup
    other = server.enrol()
    url_round = task["round_id"]
    headers = {**device.headers, "Idempotency-Key": str(uuid.uuid4())}
    good = server.update_bytes(task)
    tensors = {k: np.zeros(s, np.float32) for k, s in server.shapes.items()}
    name = next(iter(tensors))
    body = good
    if case == "no_auth":
        headers.pop("Authorization")
    elif case == "bad_token":
        headers["Authorization"] = "Bearer nope"
    elif case == "no_key":
        headers.pop("Idempotency-Key")
    elif case == "bad_key":
        headers["Idempotency-Key"] = "a b"
    elif case == "no_round":
        url_round = 999
    elif case == "no_task":
        headers["Authorization"] = f"Bearer {other.token}"
    elif case == "garbage":
        body = b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"x" * 50
    elif case == "empty":
        body = b""
    elif case == "wrong_format":
        body = _body(server, task, format="something-else")
    elif case == "missing_tensor":
        body = st_save({k: v for k, v in tensors.items() if k != name},
                       metadata=json.loads(json.dumps(_meta(task))))
    elif case == "extra_tensor":
        body = st_save({**tensors, "extra": np.zeros(3, np.float32)}, metadata=_meta(task))
    elif case == "wrong_shape":
        body = st_save({**tensors, name: np.zeros((2, 2), np.float32)}, metadata=_meta(task))
    elif case == "wrong_dtype":
        body = st_save({**tensors, name: tensors[name].astype(np.float64)}, metadata=_meta(task))
    elif case in ("nan", "inf"):
        bad = tensors[name].copy()
        bad.flat[0] = np.nan if case == "nan" else np.inf
        body = st_save({**tensors, name: bad}, metadata=_meta(task))
    elif case == "bad_metrics":
        body = _body(server, task, metrics='{"loss": "high"}')
    elif case == "zero_examples":
        body = _body(server, task, num_examples="0")
    elif case == "wrong_round_meta":
        body = _body(server, task, round_id=str(task["round_id"] + 1))
    elif case == "wrong_version":
        body = _body(server, task, model_version="5")
    elif case == "norm":
        big = {k: np.full(s, 10.0, np.float32) for k, s in server.shapes.items()}
        body = encode_update(Update(big, task["round_id"], task["model_version"], 5, {}))
    elif case == "too_large":
        body = b"\x00" * (16 * 1024 * 1024 + 10)
    r = server.http.put(f"{server.url}/v1/rounds/{url_round}/update", data=body,
                        headers=headers, timeout=60)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code
    assert needle.lower() in r.json()["message"].lower()
    _assert_unchanged(server, device, task)
    # the device's task is untouched: a good upload still goes through
    assert server.upload(device, task["round_id"], good).status_code == 202


def _meta(task) -> dict[str, str]:
    return {"format": UPDATE_FORMAT, "round_id": str(task["round_id"]),
            "model_version": str(task["model_version"]), "num_examples": "5", "metrics": "{}"}


def test_upload_to_a_closed_round_is_refused(server):
    devices = [server.enrol() for _ in range(4)]
    tasks = [server.task(d) for d in devices]
    for d, t in zip(devices[:3], tasks[:3]):
        assert server.upload(d, t["round_id"], server.update_bytes(t)).status_code == 202
    late = server.upload(devices[3], tasks[3]["round_id"], server.update_bytes(tasks[3]))
    assert late.status_code == 409 and late.json()["error"] == "round_closed"
    assert "closed" in late.json()["message"]
    st = server.status()
    assert st["rounds"][0]["reports"] == 3 and st["rounds"][0]["state"] == "closed"


def test_upload_to_an_abandoned_round_says_why(server):
    device = server.enrol()
    task = server.task(device)
    assert server.training("stop").status_code == 200
    r = server.upload(device, task["round_id"], server.update_bytes(task))
    assert r.status_code == 409 and "abandoned" in r.json()["message"]
    assert "stopped by an administrator" in r.json()["message"]


def test_retry_after_the_round_closed_still_gets_its_answer(server):
    devices = [server.enrol() for _ in range(3)]
    tasks = [server.task(d) for d in devices]
    bodies = [server.update_bytes(t, seed=i) for i, t in enumerate(tasks)]
    keys = [str(uuid.uuid4()) for _ in devices]
    answers = [server.upload(d, t["round_id"], b, k).json()
               for d, t, b, k in zip(devices, tasks, bodies, keys)]
    assert server.status()["rounds"][0]["state"] == "closed"
    replay = server.upload(devices[0], tasks[0]["round_id"], bodies[0], keys[0])
    assert replay.status_code == 202 and replay.json() == answers[0]


@pytest.mark.parametrize("factor, status", [(0.999, 202), (1.001, 422)])
def test_norm_bound_is_exact_at_the_edge(start_server, factor, status):
    server = start_server(round={"noise_multiplier": 0.0, "epsilon_budget": None})
    device = server.enrol()
    task = server.task(device)
    assert task["noise_multiplier"] == 0.0  # no DP: the bound is the clipping norm itself
    rng = np.random.default_rng(3)
    raw = {k: rng.normal(0, 1, s) for k, s in server.shapes.items()}
    norm = np.sqrt(sum((v ** 2).sum() for v in raw.values()))
    tensors = {k: (v * factor * task["clip_norm"] / norm).astype(np.float32)
               for k, v in raw.items()}
    r = server.upload(device, task["round_id"], server.update_bytes(task, tensors=tensors))
    assert r.status_code == status, r.text
