"""Secure aggregation in the real server and device runtime, over real HTTP.

Devices run `federated.secagg` through `/v1/rounds/<id>/secagg/` (the device code in
`keyboard_app.secure_upload`, or a `SecAggClient` driven step by step from the test); the
server keeps every protocol message in SQLite and every masked input on disk.
"""
from __future__ import annotations

import json
import threading
import uuid

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (negative_data_rejection, not_a_server_error,
                                 positive_data_acceptance)
from scipy import stats
from sqlalchemy import func, select

from conftest import task_noise

from aggregation_server.db import SecAggMessage, SecAggRound, Task
from aggregation_server.openapi import openapi_document
from federated.privacy import privatize
from federated.secagg import (ConsistencyRequest, KeysRelay, MaskedInput, MessageError,
                              SecAggClient, SharesRelay, UnmaskRequest, flatten,
                              message_from_json)
from federated.secagg import SecAggConfig
from federated.wire import Update
from keyboard_app.client import ServerRejected, SyncClient
from keyboard_app.secure_upload import SecureRoundError, SecureUpload

# Phases close once everyone expected has answered; a dropout is waited for until the phase
# deadline, which tests reach by moving the server's clock (`expire`) instead of sleeping.
SECURE = {"secure_aggregation": True, "overcommit": 1.0, "round_seconds": 120.0,
          "secagg_phase_seconds": 15.0, "retry_after": 0.5}


def secure_round(n: int, minimum: int, **extra) -> dict:
    return {**SECURE, "target_reports": n, "min_reports": minimum, **extra}


# ---------------------------------------------------------------- helpers

class Member:
    """A device of a secure round driven step by step from the test."""

    def __init__(self, server, index: int) -> None:
        self.server, self.creds = server, server.enrol()
        self.task = server.task(self.creds)
        self.round_id = self.task["round_id"]
        self.config = SecAggConfig.from_dict(self.task["secagg"]["config"])
        self.id = self.task["secagg"]["client_id"]
        self.device = SecAggClient(self.config, self.id, identity=self.creds.key)
        rng = np.random.default_rng(index)
        raw = {k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in server.shapes.items()}
        self.update, _ = privatize(raw, self.task["clip_norm"], task_noise(self.task),
                                   np.random.default_rng(index + 100))

    def url(self, step: str) -> str:
        return f"{self.server.url}/v1/rounds/{self.round_id}/secagg/{step}"

    def post(self, step: str, message: dict | bytes):
        if isinstance(message, bytes):
            return self.server.http.post(self.url(step), data=message, timeout=30, headers={
                **self.creds.headers, "Content-Type": "application/json"})
        return self.server.http.post(self.url(step), json=message, headers=self.creds.headers,
                                     timeout=30)

    def put_masked(self, body: bytes):
        return self.server.http.put(self.url("masked"), data=body, timeout=30, headers={
            **self.creds.headers, "Content-Type": "application/octet-stream"})

    def get(self, step: str):
        return self.server.http.get(self.url(step), headers=self.creds.headers, timeout=30)

    def relay(self, step: str) -> dict:
        r = self.get(step)
        assert r.status_code == 200, r.text
        return r.json()

    def flat(self) -> np.ndarray:
        return flatten(self.update, self.server.shapes)

    def advertise(self):
        return self.post("advertise", self.device.advertise_keys().to_dict())

    def share(self):
        return self.post("shares", self.device.share_keys(
            KeysRelay.from_dict(self.relay("keys"))).to_dict())

    def mask(self):
        return self.put_masked(self.device.masked_input(
            SharesRelay.from_dict(self.relay("shares")), self.flat()).to_bytes())

    def sign(self):
        return self.post("consistency", self.device.consistency(
            ConsistencyRequest.from_dict(self.relay("consistency"))).to_dict())

    def unmask(self):
        self.answer = self.device.unmask(UnmaskRequest.from_dict(self.relay("unmask"))).to_dict()
        return self.post("unmask", self.answer)


def accepted(response) -> None:
    assert response.status_code == 202 and response.json()["accepted"], response.text


def refused(response, status: int, code: str, needle: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and needle in body["message"], body


def service(server):
    return server.app.extensions["pk.service"]


def stored(server, round_id: int) -> tuple[int, str]:
    """(protocol messages stored, phase) of a round: what a refusal must not change."""
    with service(server).db.read() as s:
        count = s.scalar(select(func.count()).select_from(SecAggMessage)
                         .where(SecAggMessage.round_id == round_id))
        return count, s.get(SecAggRound, round_id).phase


def expire(server, round_id: int, phase: str) -> None:
    """Move the server's clock past the deadline of `phase`, if current, and let it act."""
    with service(server).db.read() as s:
        row = s.get(SecAggRound, round_id)
        wait = row.phase_deadline - server.clock() if row.phase == phase else None
    if wait is not None:
        server.advance(max(wait, 0.0) + 0.01)


def expire_after(server, answers: dict[str, int], stop: threading.Event) -> threading.Thread:
    """A watcher that expires each phase as soon as `answers[phase]` messages of it are stored
    (the devices that did not drop out have all answered)."""
    def watch() -> None:
        while not stop.wait(0.05):
            with service(server).db.read() as s:
                row = s.scalars(select(SecAggRound).order_by(SecAggRound.round_id.desc())
                                .limit(1)).first()
                if row is None or row.phase not in answers:
                    continue
                count = s.scalar(select(func.count()).select_from(SecAggMessage).where(
                    SecAggMessage.round_id == row.round_id, SecAggMessage.phase == row.phase))
            if count >= answers[row.phase]:
                expire(server, row.round_id, row.phase)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def expect_new_model(server, updates: list[dict], step: float, version: int = 1) -> None:
    """The new global model is the old one plus the plain mean of `updates` (FedAvg, lr 1),
    to within the fixed-point step (and float32 rounding)."""
    base, _, _ = server.model(version - 1)
    new, meta, _ = server.model(version)
    for name in server.shapes:
        mean = (sum(u[name].astype(np.float64) for u in updates) / len(updates)).astype(np.float32)
        expected = (base[name] + np.float32(1.0) * mean).astype(np.float32)
        slack = step / 2 + 2 * np.spacing(np.maximum(np.abs(expected), np.abs(mean)))
        assert np.all(np.abs(new[name] - expected) <= slack), name
    assert '"secure_aggregation": true' in meta["training"]


def run_device(server, data_dir, index: int, results: dict, stop_at: str | None = None) -> None:
    """One device in a thread: check in, then `SecureUpload` (the device's real code) with a
    known update; `stop_at` makes it vanish just before that step (a dropout)."""
    client = SyncClient(server.url, data_dir / f"device{index}",
                        enrolment_code=server.enrolment_code())
    try:
        task = client.checkin()
        rng = np.random.default_rng(index)
        raw = {k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in server.shapes.items()}
        tensors, _ = privatize(raw, task.clip_norm, task_noise(task),
                               np.random.default_rng(index + 100))
        update = Update(tensors, task.round_id, task.model_version, 20, {})

        def phase(step: str) -> None:
            if step == stop_at:
                raise SecureRoundError(f"dropped out before {step}")
        sent = []
        upload = SecureUpload(client, task, on_phase=phase, on_masked=sent.append)
        try:
            upload.run(update)
            results[index] = ("done", tensors, task)
        except (SecureRoundError, ServerRejected) as err:
            results[index] = (str(err), tensors if sent else None, task)
    finally:
        client.close()


def run_fleet(servers: list, data_dir, n: int, stops: dict[int, str],
              answers: dict[str, int]) -> dict:
    """n devices in threads (device i talks to servers[i % len(servers)])."""
    results: dict = {}
    stop = threading.Event()
    expire_after(servers[0], answers, stop)
    threads = [threading.Thread(target=run_device, args=(servers[i % len(servers)], data_dir, i,
                                                         results, stops.get(i)))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    servers[0].wait_for(lambda st: st["rounds"][0]["state"] != "open", what="round ended")
    stop.set()
    assert len(results) == n, results
    return results


# ---------------------------------------------------------------- whole rounds

def test_devices_run_a_secure_round_with_the_real_runtime(start_server, tmp_path):
    """Five real device runtimes (training, clipping, noise, masking) in threads: the round
    closes on the unmasked mean, and device, status and dashboard say it was secure."""
    from data import load_split
    from keyboard_app.eligibility import Eligibility, EligibilitySettings
    from keyboard_app.history import HistoryStore
    from keyboard_app.privacy_policy import DevicePolicy
    from keyboard_app.runtime import DeviceRuntime
    server = start_server(round=secure_round(5, 4, train_batch_size=8, train_max_examples=30))
    senders = [d for d in load_split("federated") if 20 <= len(d.messages) <= 60][:5]
    runtimes, steps = [], {}
    for i, sender in enumerate(senders):
        history = HistoryStore(":memory:", retention_days=None)
        history.add_many(sender.messages)
        eligibility = Eligibility(EligibilitySettings(idle_seconds=0, min_new_messages=0),
                                  battery=lambda: None)
        runtimes.append(DeviceRuntime(tmp_path / f"phone{i}", server.url, history=history,
                                      enrolment_code=server.enrolment_code(),
                                      eligibility=eligibility, poll_seconds=0.1,
                                      load_model=False, policy=DevicePolicy.relaxed(
                                          min_reports=4, epsilon_budget=None)))
    threads = [threading.Thread(target=lambda i=i: steps.__setitem__(i, runtimes[i].run_once()))
               for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [steps[i].outcome for i in range(5)] == ["uploaded"] * 5, steps
    st = server.wait_for(lambda st: st["model"]["version"] == 1, what="secure round closed")
    closed = st["rounds"][0]
    assert closed["state"] == "closed" and closed["secure_aggregation"] is True
    assert closed["reports"] == 5 and "unmasked the sum of 5" in closed["reason"]
    assert st["round"]["secure_aggregation"] is True  # the next round, secure too
    assert st["versions"][-1]["provenance"]["secure_aggregation"] is True
    for runtime in runtimes:
        status = runtime.status()
        assert status.secure_aggregation is True and status.rounds_joined == 1
        assert status.last_update_bytes >= 4 * sum(map(np.prod, server.shapes.values()))
        runtime.client.close()
    page = server.http.get(server.url + "/", timeout=30).text
    assert "secure aggregation" in page and "<td>yes</td>" in page
    assert not list((server.data_dir / "updates" / "1").glob("*"))  # masked inputs deleted


def test_fleet_simulator_runs_secure_rounds(start_server, tmp_path):
    """fleet.simulate with --secure-aggregation: a round's devices run concurrently."""
    from data import load_split
    from fleet.config import FleetConfig
    from fleet.run import run_fleet
    server = start_server(start_training=False)  # the simulator configures, then starts
    senders = [d.sender for d in load_split("federated") if 20 <= len(d.messages) <= 60][:4]
    config = FleetConfig(rounds=1, devices_per_round=3, max_examples=20, batch_size=8,
                         clip_norm=5.0, server_optimizer="fedavg", eval_every=0,
                         final_eval=False, secure_aggregation=True, seed=1)
    summary = run_fleet(config, tmp_path / "run", server_url=server.url,
                        admin_token=server.admin_token, senders=senders, progress=False)
    assert summary["rounds_closed"] == 1 and summary["reports"] == 3
    assert summary["round_settings"]["secure_aggregation"] is True
    assert all(r["secure_aggregation"] for r in server.status()["rounds"])
    last = json.loads((tmp_path / "run" / "rounds.jsonl").read_text().splitlines()[-1])
    assert 0 < last["train_seconds"] < last["device_seconds"]  # training, then the phases


def test_unmasked_sum_is_the_plain_sum_despite_dropouts_in_every_phase(start_server, tmp_path):
    """Seven devices, over two server instances sharing the database (so the protocol state
    is rebuilt from stored messages, never taken from one process's memory); one vanishes
    after advertising keys, one after sharing them, one after sending its masked input."""
    a = start_server(round=secure_round(7, 4))
    b = start_server(data_dir=a.data_dir, round=secure_round(7, 4), clock=a.clock)
    results = run_fleet([a, b], tmp_path, 7, stops={1: "shares", 3: "masked", 5: "unmask"},
                        answers={"share": 6, "masked": 5, "consistency": 5, "unmask": 4})
    outcome = {i: r[0] for i, r in results.items()}
    assert [outcome[i] for i in (0, 2, 4, 6)] == ["done"] * 4, outcome
    assert outcome[1] == "dropped out before shares", outcome
    assert outcome[3] == "dropped out before masked", outcome
    assert outcome[5] != "done" and results[5][1] is not None  # its masked input was taken
    st = a.wait_for(lambda st: st["model"]["version"] == 1, what="secure round closed")
    assert st["rounds"][0]["reports"] == 5  # device 5's masked input is in the sum
    step = results[0][2].secagg.config.encoding.step
    expect_new_model(a, [r[1] for r in results.values() if r[1] is not None], step)


@pytest.mark.postgres
def test_secure_round_on_postgresql_with_two_servers(start_server, pg_url, tmp_path):
    """The same over PostgreSQL: the servers serialise each round's changes by row locks."""
    a = start_server(db_url=pg_url, round=secure_round(5, 3))
    b = start_server(db_url=pg_url, data_dir=a.data_dir, round=secure_round(5, 3),
                     clock=a.clock)
    results = run_fleet([a, b], tmp_path, 5, stops={2: "masked"}, answers={"masked": 4})
    assert [results[i][0] for i in range(5)] == ["done"] * 2 + [
        "dropped out before masked"] + ["done"] * 2
    st = b.wait_for(lambda st: st["model"]["version"] == 1, what="secure round closed")
    assert st["rounds"][0]["reports"] == 4
    step = results[0][2].secagg.config.encoding.step
    expect_new_model(b, [r[1] for r in results.values() if r[1] is not None], step)


def test_too_many_dropouts_abandon_the_round_with_the_reason(start_server, tmp_path):
    server = start_server(round=secure_round(5, 4))
    results = run_fleet([server], tmp_path, 5, stops={0: "shares", 1: "shares"},
                        answers={"share": 3})
    st = server.wait_for(lambda st: st["rounds"][0]["state"] == "abandoned", what="abandoned")
    reason = st["rounds"][0]["reason"]
    assert "secure aggregation, share phase" in reason and "at least 4 needed" in reason, reason
    assert all("round_closed" in results[i][0] for i in (2, 3, 4)), results
    assert st["model"]["version"] == 0 and st["round"]["id"] == 2  # the next round opened
    assert not list((server.data_dir / "updates" / "1").glob("*"))


# ---------------------------------------------------------------- refusals

def test_late_replayed_and_out_of_phase_messages_are_refused_and_change_nothing(start_server):
    server = start_server(round=secure_round(4, 3))
    members = [Member(server, i) for i in range(4)]
    first, rid = members[0], members[0].round_id
    message = first.device.advertise_keys().to_dict()
    accepted(first.post("advertise", message))
    before = stored(server, rid)
    accepted(first.post("advertise", message))  # a resend (lost answer): the same answer
    other = SecAggClient(first.config, first.id, identity=first.creds.key).advertise_keys(
        ).to_dict()  # other keys
    refused(first.post("advertise", other), 409, "replayed", "already sent")
    refused(first.post("shares", {"type": "share_keys"}), 409, "wrong_phase", "come later")
    assert first.get("keys").status_code == 202 and "retry_after" in first.get("keys").json()
    outsider = server.enrol()
    assert server.checkin(outsider)["task"] is None  # the round's 4 tasks are handed out
    r = server.http.post(first.url("advertise"), json=message, headers=outsider.headers,
                         timeout=30)
    refused(r, 403, "not_participant")
    r = server.http.post(first.url("advertise").replace(f"/{rid}/", "/999/"), json=message,
                         headers=first.creds.headers, timeout=30)
    refused(r, 404, "no_such_round")
    r = server.http.post(first.url("advertise"), data=b"{}", headers={
        **first.creds.headers, "Content-Type": "text/plain"}, timeout=30)
    refused(r, 415, "unsupported_media_type")
    plain = server.upload(first.creds, rid, server.update_bytes(first.task))
    refused(plain, 409, "secure_aggregation", "masked update")
    assert stored(server, rid) == before
    for m in members[1:]:
        accepted(m.advertise())
    assert stored(server, rid)[1] == "share"
    refused(first.post("advertise", other), 409, "late", "closed")
    for m in members[:3]:  # the last device never shares its keys: dropped at the deadline
        accepted(m.share())
    expire(server, rid, "share")
    assert stored(server, rid)[1] == "masked"
    last = members[3]
    before = stored(server, rid)
    refused(last.post("shares", {"type": "share_keys"}), 409, "late", "closed")
    refused(last.get("shares"), 409, "not_live", "missed a phase")
    for m in members[:3]:
        accepted(m.mask())
    refused(first.put_masked(MaskedInput(rid, first.id, np.zeros(
        first.config.dimension, first.config.encoding.dtype)).to_bytes()), 409, "late")
    assert stored(server, rid)[0] == before[0] + 3
    for m in members[:3]:
        accepted(m.sign())
    for m in members[:3]:
        accepted(m.unmask())
    st = server.wait_for(lambda st: st["model"]["version"] == 1, what="round closed")
    assert st["rounds"][0]["reports"] == 3
    accepted(first.post("unmask", first.answer))  # a resend: it was taken
    refused(first.post("unmask", {**first.answer, "note": 1}), 409, "round_closed", "closed")
    expect_new_model(server, [m.update for m in members[:3]], first.config.encoding.step)


def test_malformed_messages_exclude_the_sender_and_the_round_goes_on(start_server):
    server = start_server(round=secure_round(5, 3))
    members = [Member(server, i) for i in range(5)]
    rid, bad_keys, bad_masked = members[0].round_id, members[1], members[3]
    message = bad_keys.device.advertise_keys().to_dict()
    refused(bad_keys.post("advertise", {**message, "cipher_key": "not base64!"}), 400,
            "malformed_message", "excluded")
    assert stored(server, rid) == (1, "advertise")  # the exclusion is stored (replayed later)
    refused(bad_keys.post("advertise", message), 409, "late", "excluded")
    for m in members[:1] + members[2:]:
        accepted(m.advertise())
    assert stored(server, rid)[1] == "share"  # everyone left has answered
    refused(bad_keys.get("keys"), 409, "not_live")
    for m in members[:1] + members[2:]:
        accepted(m.share())
    relay = SharesRelay.from_dict(bad_masked.relay("shares"))
    good = bad_masked.device.masked_input(relay, bad_masked.flat())
    wrong = MaskedInput(rid, bad_masked.id, good.masked[:-1]).to_bytes()  # one value short
    refused(bad_masked.put_masked(wrong), 400, "malformed_message", "excluded")
    refused(members[4].post("unmask", b"{not json"), 409, "wrong_phase")
    for step in ("mask", "sign", "unmask"):
        for m in (members[0], members[2], members[4]):
            accepted(getattr(m, step)())
    st = server.wait_for(lambda st: st["model"]["version"] == 1, what="round closed")
    assert st["rounds"][0]["reports"] == 3
    expect_new_model(server, [members[i].update for i in (0, 2, 4)],
                     members[0].config.encoding.step)


# ---------------------------------------------------------------- what the server holds

def test_stored_round_data_does_not_reveal_an_update(start_server):
    """Everything the server stores for a round (protocol messages in the database, masked
    inputs on disk) once all masked inputs are in: a device's stored masked input looks
    uniformly random and the same whether its update is all at +bound or all zeros. (An
    update with every value at the bound is far longer than the clip norm allows: once
    unmasked, the sum's norm check refuses the round.)"""
    server = start_server(round=secure_round(4, 3))
    members = [Member(server, i) for i in range(4)]
    rid, config = members[0].round_id, members[0].config
    bound = config.encoding.bound
    members[0].update = {k: np.full(s, bound, np.float32) for k, s in server.shapes.items()}
    members[1].update = {k: np.zeros(s, np.float32) for k, s in server.shapes.items()}
    for phase in ("advertise", "share", "mask"):
        for m in members:
            accepted(getattr(m, phase)())
    assert stored(server, rid)[1] == "consistency"
    with service(server).db.read() as s:
        rows = s.scalars(select(SecAggMessage).where(SecAggMessage.round_id == rid)).all()
        tasks = s.scalars(select(Task).where(Task.round_id == rid)).all()
    files = sorted((server.data_dir / "updates" / str(rid)).iterdir())
    masked_rows = [m for m in rows if m.phase == "masked"]
    assert sorted(server.data_dir / m.path for m in masked_rows) == files  # nothing else
    assert all(m.body is None for m in masked_rows) and all(m.path is None for m in rows
                                                            if m.phase != "masked")
    assert all(t.num_examples == 0 and t.metrics == {} for t in tasks)
    blob = {m.client_id: MaskedInput.from_bytes((server.data_dir / m.path).read_bytes(),
                                                config.max_masked_bytes).masked
            for m in masked_rows}
    at_bound, zeros = blob[members[0].id], blob[members[1].id]
    for masked in (at_bound, zeros):
        for part in (masked >> 24, masked & 0xFF):  # high and low byte: 256 bins each
            counts = np.bincount(part.astype(np.int64), minlength=256)
            assert stats.chisquare(counts).pvalue > 1e-4
    assert stats.ks_2samp(at_bound, zeros).pvalue > 1e-4
    plain = config.encoding.encode(members[0].flat())
    assert stats.ks_2samp(at_bound, plain).pvalue < 1e-10  # the test would see an update
    for step in ("sign", "unmask"):
        for m in members:
            accepted(getattr(m, step)())
    # what stops such a device: all its values at the bound make the unmasked sum too long
    st = server.wait_for(lambda st: st["rounds"][0]["state"] == "abandoned", what="abandoned")
    assert "over 4 times the bound of one update" in st["rounds"][0]["reason"]
    assert st["secure_aggregation"]["abandoned_by_cause"]["sum_out_of_range"] == 1
    assert not (server.data_dir / "updates" / str(rid)).exists()


def test_secure_tasks_and_the_plain_path_by_configuration(start_server):
    server = start_server(round=secure_round(3, 2))
    device = server.enrol()
    task = server.task(device)
    assert task["secure_aggregation"] is True and task["secagg"]["client_id"] == 1
    config = SecAggConfig.from_dict(task["secagg"]["config"])
    assert config.num_clients == 3 and config.dimension == sum(
        int(np.prod(s)) for s in server.shapes.values())
    assert task["secagg"]["advertise_by"] == pytest.approx(task["deadline"] - 4 * 15.0)
    assert server.task(device) == task  # asking again: the same task and client id
    assert server.set_config(secure_aggregation=False).status_code == 200
    assert server.training("stop").status_code == 200
    assert server.training("start").status_code == 200
    plain = server.task(device)
    assert plain["secure_aggregation"] is False and "secagg" not in plain
    r = server.upload(device, plain["round_id"], server.update_bytes(plain), str(uuid.uuid4()))
    assert r.status_code == 202, r.text
    st = server.status()
    assert [(r["id"], r["secure_aggregation"]) for r in st["rounds"]] == [(1, True), (2, False)]
    r = server.http.get(f"{server.url}/v1/rounds/2/secagg/keys", headers=device.headers,
                        timeout=30)
    refused(r, 409, "not_secure")


# ---------------------------------------------------------------- fuzzing

@pytest.mark.parametrize("body", [b'{"type": {}}', b'{"type": ["advertise_keys"]}',
                                  b"[" * 100_000 + b"]" * 100_000, b"1" * 5000])
def test_odd_json_is_a_malformed_message(body):
    """What the fuzzer below once turned into 500s: parsing says 'malformed'."""
    with pytest.raises(MessageError):
        message_from_json(body)


def test_a_waiting_device_is_told_when_the_phase_should_be_complete(start_server):
    """retry_after: phase_seconds / 20 (1.5 s) until two devices answered, then when the
    devices still expected should have answered at the pace so far, never below 0.2 s."""
    server = start_server(round=secure_round(4, 3, round_seconds=300.0,
                                             secagg_phase_seconds=30.0))
    members = [Member(server, i) for i in range(4)]

    def retry(member: Member, step: str) -> float:
        r = member.get(step)
        assert r.status_code == 202, r.text
        return r.json()["retry_after"]

    accepted(members[0].advertise())
    assert retry(members[0], "keys") == 1.5  # one arrival: no pace yet
    server.clock.advance(0.3)
    accepted(members[1].advertise())  # 0.3 s a device, two more expected: due in 0.6 s
    assert retry(members[0], "keys") == 0.6
    server.clock.advance(0.3)
    assert retry(members[1], "keys") == 0.3
    server.clock.advance(0.5)
    assert retry(members[1], "keys") == 0.2  # overdue: ask soon, not in a flood
    server.clock.advance(10)
    accepted(members[2].advertise())  # the pace slows to 5.4 s a device: at most 1.5 s
    assert retry(members[2], "keys") == 1.5
    accepted(members[3].advertise())  # the target advertised: the phase closed
    assert members[0].get("keys").status_code == 200
    accepted(members[0].share())  # the next phase expects the 4 devices given keys
    assert retry(members[0], "shares") == 1.5
    server.clock.advance(0.1)
    accepted(members[1].share())
    assert retry(members[1], "shares") == 0.2


SECAGG_API = schemathesis.openapi.from_dict(openapi_document()).include(path_regex="/secagg/")


@pytest.fixture
def fuzz_target(start_server):
    """A secure round and a device holding a task in it (its first bad message excludes it)."""
    server = start_server(round=secure_round(3, 2))
    device = server.enrol()
    return server, device, server.task(device)["round_id"]


@pytest.mark.slow
@SECAGG_API.parametrize()
@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_fuzzed_protocol_calls_get_documented_answers_never_5xx(case, fuzz_target):
    server, device, round_id = fuzz_target
    case.path_parameters = {**(case.path_parameters or {}), "round_id": round_id}
    response = case.call(base_url=server.url, timeout=60, headers=device.headers)
    assert response.status_code < 500, response.text
    # the round id and the token are replaced by real ones above, so a case generated to
    # break them is a valid request: "negative data rejected" cannot apply
    case.validate_response(response, additional_checks=[not_a_server_error],
                           excluded_checks=[positive_data_acceptance, negative_data_rejection])
