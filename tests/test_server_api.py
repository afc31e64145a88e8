"""Every endpoint's happy path and its refusals over real HTTP (SQLite)."""
from __future__ import annotations

import hashlib

import pytest
import requests
import schemathesis

from aggregation_server.db import Device
from model.tokenizer import WordTokenizer


def test_enrolment_stores_only_a_hash_of_the_token(server):
    device = server.enrol()
    assert len(device.device_id) == 32 and len(device.token) >= 40
    files = b"".join(p.read_bytes() for p in server.data_dir.glob("server.sqlite3*"))
    assert device.token.encode() not in files  # not in the database file nor its WAL
    service = server.app.extensions["pk.service"]
    with service.db.read() as s:
        row = s.get(Device, device.device_id)
    assert row.token_sha256 == hashlib.sha256(device.token.encode()).hexdigest()


def test_checkin_gives_a_task_with_the_privacy_parameters(server):
    task = server.task(server.enrol())
    assert set(task) == {"round_id", "model_version", "model_sha256", "deadline", "train",
                         "clip_norm", "noise_multiplier", "min_reports", "dishonest_share",
                         "secure_aggregation", "min_examples"}
    # the device sizes its noise itself from these; a plain round: the full z*C
    assert (task["noise_multiplier"], task["min_reports"]) == (1.0, 2)
    assert task["dishonest_share"] == pytest.approx(1 / 3)
    assert task["secure_aggregation"] is False
    assert set(task["train"]) == {"epochs", "batch_size", "lr", "optimizer", "max_examples"}
    _, _, r = server.model()
    assert task["model_sha256"] == hashlib.sha256(r.content).hexdigest()


@pytest.mark.parametrize("body, content_type, status, code", [
    ({"num_examples": 5}, "application/json", 400, "bad_field"),  # never asked for
    ({"model_version": "5"}, "application/json", 400, "bad_field"),
    ({"model_version": True}, "application/json", 400, "bad_field"),
    ({"model_version": -3}, "application/json", 400, "bad_field"),
    ({"model_version": 5, "colour": "red"}, "application/json", 400, "bad_field"),
    ([1, 2], "application/json", 400, "bad_json"),
    ("{not json", "application/json", 400, "bad_json"),
    ("num_examples=5", "text/plain", 415, "unsupported_media_type"),
])
def test_checkin_refusals(server, body, content_type, status, code):
    device = server.enrol()
    import json as _json
    data = body if isinstance(body, str) else _json.dumps(body)
    r = server.http.post(f"{server.url}/v1/checkin", data=data,
                         headers={**device.headers, "Content-Type": content_type}, timeout=30)
    assert r.status_code == status and r.json()["error"] == code, r.text
    assert r.json()["message"]
    assert server.status()["round"]["tasks_issued"] == 0


@pytest.mark.parametrize("auth", [None, "Bearer", "Bearer wrong", "Basic abc"])
def test_device_calls_need_a_device_token(server, auth):
    headers = {"Authorization": auth} if auth else {}
    r = server.http.post(f"{server.url}/v1/checkin", json={}, headers=headers, timeout=30)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"


def test_model_etag_and_304(server):
    _, _, r = server.model()
    etag = r.headers["ETag"]
    assert etag == f'"{hashlib.sha256(r.content).hexdigest()}"'
    assert r.headers["X-Model-Version"] == "0"
    again = server.http.get(f"{server.url}/v1/model", headers={"If-None-Match": etag}, timeout=30)
    assert again.status_code == 304 and again.content == b""
    stale = server.http.get(f"{server.url}/v1/model", headers={"If-None-Match": '"abc"'},
                            timeout=30)
    assert stale.status_code == 200 and stale.content == r.content
    by_version = server.http.get(f"{server.url}/v1/models/0", headers={"If-None-Match": etag},
                                 timeout=30)
    assert by_version.status_code == 304


def test_unknown_model_version_is_404(server):
    for path in ("/v1/models/5", "/v1/models/99999999999", "/v1/models/-1", "/v1/models/x"):
        r = server.http.get(server.url + path, timeout=30)
        assert r.status_code == 404 and r.json()["error"], path


def test_tokenizer_is_served_with_etag(server, tiny_model):
    r = server.http.get(f"{server.url}/v1/tokenizer", timeout=30)
    assert r.status_code == 200
    assert WordTokenizer.from_json(r.text).sha256 == tiny_model["tokenizer_sha256"]
    assert r.headers["ETag"] == f'"{tiny_model["tokenizer_sha256"]}"'
    again = server.http.get(f"{server.url}/v1/tokenizer",
                            headers={"If-None-Match": r.headers["ETag"]}, timeout=30)
    assert again.status_code == 304


def test_status_document(server):
    st = server.status()
    assert st["training"] == "running" and st["round"]["state"] == "open"
    assert st["model"] == {"version": 0, "sha256": st["versions"][0]["sha256"],
                           "num_params": sum(v.size for v in server.model()[0].values())}
    assert st["privacy"]["epsilon_budget"] == 20.0 and st["privacy"]["delta"] == 1e-6
    assert any("participation cap" in a for a in st["privacy"]["assumptions"])
    assert st["config"]["target_reports"] == 3


def test_openapi_document_lists_every_route(server):
    doc = server.http.get(f"{server.url}/v1/openapi.json", timeout=30).json()
    assert doc["openapi"].startswith("3.")
    routes = {str(rule) for rule in server.app.url_map.iter_rules()} - {"/static/<path:filename>"}
    documented = {p.replace("{round_id}", "<int(max=2147483647):round_id>")
                   .replace("{version}", "<int(max=2147483647):version>")
                   .replace("{code_id}", "<code_id>") for p in doc["paths"]}
    assert routes == documented


def test_the_answers_are_what_the_served_document_says(server):
    """The protocol's schemas are derived from its types: real answers validate against the
    document the server serves (check-in with and without a task, an upload's receipt)."""
    doc = server.http.get(f"{server.url}/v1/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    device = server.enrol()

    def checkin() -> requests.Response:
        server.tick()
        answer = server.http.post(f"{server.url}/v1/checkin", json={"model_version": None},
                                  headers=device.headers, timeout=60)
        schema["/v1/checkin"]["POST"].validate_response(answer)
        return answer
    task = checkin().json()["task"]
    assert set(task) <= set(doc["components"]["schemas"]["Task"]["properties"])
    upload = server.upload(device, task["round_id"], server.update_bytes(task))
    schema["/v1/rounds/{round_id}/update"]["PUT"].validate_response(upload)
    assert upload.json() == {"accepted": True, "round_id": task["round_id"], "reports": 1}
    assert checkin().json()["task"] is None  # it reported: NoTask, as documented


def test_metrics_endpoint(server):
    device = server.enrol()
    task = server.task(device)
    server.upload(device, task["round_id"], server.update_bytes(task))
    server.upload(device, task["round_id"], b"junk")
    text = server.http.get(f"{server.url}/metrics", timeout=30).text
    assert "pk_round_reports 1.0" in text and "pk_model_version 0.0" in text
    assert 'pk_updates_total{outcome="accepted"} 1.0' in text
    assert 'pk_updates_total{outcome="already_submitted"} 1.0' in text
    assert "pk_http_request_seconds_bucket" in text and "pk_devices_enrolled 1.0" in text


def test_dashboard_html(server):
    r = server.http.get(server.url + "/", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.text.count("<svg") >= 3 and "<script" not in r.text


def test_unknown_route_and_method_are_json_errors(server):
    r = server.http.get(f"{server.url}/v1/nothing", timeout=30)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = server.http.delete(f"{server.url}/v1/model", timeout=30)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


# ----- admin ---------------------------------------------------------------------------

def test_admin_config_round_trip(server):
    assert server.status()["round"]["target"] == 3
    r = server.http.get(f"{server.url}/v1/admin/config", headers=server.admin, timeout=30)
    assert r.status_code == 200 and r.json()["target_reports"] == 3
    r = server.set_config(target_reports=4, server_optimizer="fedadam", server_lr=0.05)
    assert r.status_code == 200
    assert r.json()["target_reports"] == 4 and r.json()["server_optimizer"] == "fedadam"
    assert server.status()["round"]["target"] == 3  # the open round keeps its config


@pytest.mark.parametrize("change, needle", [
    ({"target_reports": 1}, "target_reports must be at least min_reports"),
    ({"min_reports": 0}, "min_reports"),
    ({"clip_norm": -1.0}, "clip_norm"),
    ({"clip_norm": "big"}, "clip_norm must be float"),
    ({"target_reports": 2.5}, "target_reports must be int"),
    ({"server_optimizer": "sgd"}, "server_optimizer must be one of"),
    ({"colour": 1}, "unknown round setting"),
    ({"secure_aggregation": True, "round_seconds": 120.0}, "more than 4 x secagg_phase_seconds"),
])
def test_admin_config_refusals_change_nothing(server, change, needle):
    before = server.http.get(f"{server.url}/v1/admin/config", headers=server.admin,
                             timeout=30).json()
    r = server.set_config(**change)
    assert r.status_code == 400 and needle in r.json()["message"], r.text
    after = server.http.get(f"{server.url}/v1/admin/config", headers=server.admin,
                            timeout=30).json()
    assert after == before


@pytest.mark.parametrize("headers, status", [({}, 401), ({"Authorization": "Bearer no"}, 403)])
def test_admin_calls_need_the_admin_token(server, headers, status):
    device = server.enrol()
    for method, path, body in (("get", "/v1/admin/config", None),
                               ("put", "/v1/admin/config", {"target_reports": 5}),
                               ("post", "/v1/admin/training", {"action": "stop"})):
        r = server.http.request(method, server.url + path, json=body, headers=headers,
                                timeout=30)
        assert r.status_code == status, (path, r.text)
    r = server.http.get(f"{server.url}/v1/admin/config", headers=device.headers, timeout=30)
    assert r.status_code == 403  # a device token is not the admin token
    assert server.status()["training"] == "running"


@pytest.mark.parametrize("body", [{"action": "pause"}, {}, {"action": "stop", "now": True}])
def test_training_action_refusals(server, body):
    r = server.http.post(f"{server.url}/v1/admin/training", json=body, headers=server.admin,
                         timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "bad_field"
    assert server.status()["training"] == "running"
