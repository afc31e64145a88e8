"""Fault injection (issue 20): nothing acknowledged is lost to a transient fault.

Each test drives a real server over HTTP on real SQLite; time that matters to the server
(leases, retry backoff) comes from the server's clock, which the test moves (`ManualClock`), and
faults are injected at the storage layer (a BlobStore whose writes fail with ENOSPC).
"""
from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from conftest import poll
from test_device import ONE_DEVICE_ROUNDS, make_device, sender_messages  # noqa: F401 (fixture)
from test_server_faults import assert_model, expected_model

from federated.clock import ManualClock
from federated.protocol import Task
from federated.secagg import SharesRelay
from keyboard_app.client import SyncClient, make_retry
from keyboard_app.secure_upload import SecureUpload


class FullDisk:
    """Makes `blobs.write` raise OSError(ENOSPC) for paths under `prefixes` while `full`."""

    def __init__(self, blobs, prefixes: tuple[str, ...] = ("models/", "optimizer/",
                                                          "updates/")) -> None:
        self.blobs, self.real, self.prefixes = blobs, blobs.write, prefixes
        self.full, self.failures = False, 0
        blobs.write = self.write

    def write(self, relative: str, data: bytes) -> None:
        if self.full and relative.startswith(self.prefixes):
            self.failures += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.blobs.abs(relative)))
        self.real(relative, data)


def rigged(server) -> tuple[object, ManualClock, FullDisk]:
    """The server's RoundService, its clock and a disk that can fill up."""
    service = server.app.extensions["pk.service"]
    return service, server.clock, FullDisk(service.blobs, ("models/", "optimizer/"))


def one_round(server, n: int = 3) -> tuple[list, list, list[bytes], list[str]]:
    devices = [server.enrol() for _ in range(n)]
    tasks = [server.task(d) for d in devices]
    bodies = [server.update_bytes(t, seed=i) for i, t in enumerate(tasks)]
    return devices, tasks, bodies, [str(uuid.uuid4()) for _ in devices]


def pending_files(server, round_id: int) -> list:
    return sorted((server.data_dir / "updates" / str(round_id)).glob("*.safetensors"))


def test_disk_full_during_aggregation_keeps_updates_and_retries_with_backoff(
        start_server, tiny_model):
    server = start_server(round={"target_reports": 3, "min_reports": 2})
    _, clock, disk = rigged(server)
    devices, tasks, bodies, keys = one_round(server)
    round_id = tasks[0]["round_id"]
    for i in range(2):
        assert server.upload(devices[i], round_id, bodies[i], keys[i]).status_code == 202
    disk.full = True  # the model file of the new version cannot be written
    last = server.upload(devices[2], round_id, bodies[2], keys[2])
    assert last.status_code == 202 and last.json()["reports"] == 3  # acknowledged
    st = server.status()
    stuck = st["round"]["aggregation"]
    assert st["round"]["state"] == "closing" and stuck["attempts"] == 1
    assert "No space left on device" in stuck["last_error"]
    assert stuck["next_attempt_at"] == clock.now + 1.0
    assert len(pending_files(server, round_id)) == 3
    assert "No space left" in server.checkin(server.enrol())["reason"]
    for attempt, wait in ((2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0)):  # backoff doubles
        clock.advance(wait - 0.01)
        assert server.status()["round"]["aggregation"]["attempts"] == attempt - 1
        clock.advance(0.02)
        assert server.status()["round"]["aggregation"]["attempts"] == attempt
    assert disk.failures == 5 and len(pending_files(server, round_id)) == 3
    again = server.upload(devices[0], round_id, bodies[0], keys[0])  # a lost response
    assert again.status_code == 202 and again.json()["reports"] == 1
    assert "not aggregated yet" in server.http.get(server.url + "/", timeout=30).text
    assert "pk_aggregation_failed_attempts 5.0" in server.http.get(server.url + "/metrics",
                                                                   timeout=30).text
    disk.full = False  # space freed: the next attempt commits version 1
    clock.advance(16.01)  # after the fifth failure: 16 s
    st = server.status()
    assert st["rounds"][0]["state"] == "closed" and st["rounds"][0]["aggregation"] is None
    assert st["rounds"][0]["reports"] == 3 and st["model"]["version"] == 1
    assert_model(server.model(1)[0], expected_model(tiny_model["weights"], bodies,
                                                    tiny_model["shapes"]))
    assert pending_files(server, round_id) == []  # deleted only once the version is in


def test_aggregation_abandoned_only_after_the_configured_retry_window(start_server):
    server = start_server(round={"target_reports": 2, "min_reports": 2},
                          aggregation_retry_seconds=30.0, aggregation_backoff_seconds=5.0)
    _, clock, disk = rigged(server)
    devices, tasks, bodies, keys = one_round(server, 2)
    round_id = tasks[0]["round_id"]
    disk.full = True
    start = clock.now
    for d, b, k in zip(devices, bodies, keys):
        assert server.upload(d, round_id, b, k).status_code == 202
    for at, attempts in ((10.0, 2), (21.0, 3), (40.0, 3)):  # backoff 5, 10, 20 s
        clock.now = start + at
        st = server.status()
        assert st["rounds"][0]["state"] == "closing", st["rounds"][0]
        assert st["rounds"][0]["aggregation"]["attempts"] == attempts
        assert len(pending_files(server, round_id)) == 2
    clock.now = start + 42.0  # attempt 4 fails past the 30 s window: the operator's rule
    st = server.status()
    gone = st["rounds"][0]
    assert gone["state"] == "abandoned" and "aggregation_retry_seconds" in gone["reason"]
    assert "No space left on device" in gone["reason"]
    assert pending_files(server, round_id) == [] and st["model"]["version"] == 0
    late = server.upload(devices[0], round_id, bodies[0], keys[0])  # a lost response's retry
    assert late.status_code == 409 and late.json()["error"] == "round_abandoned"
    assert "aggregation_retry_seconds" in late.json()["message"]


# ---------------------------------------------------------------- lost responses

class LossyProxy:
    """A real HTTP proxy in front of a server: it forwards every request, and for the first
    `drops[(method, path end)]` matching ones closes the connection instead of answering;
    the server did the work, the device never hears of it."""

    def __init__(self, target: str) -> None:
        self.target = urlsplit(target)
        self.drops: dict[tuple[str, str], int] = {}
        self.dropped: list[str] = []
        self.down = self.down_after_drop = False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.down:  # the server is down: nothing reaches it
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port,
                                                  timeout=60)
                conn.request(self.command, self.path, body=body, headers={
                    k: v for k, v in self.headers.items() if k.lower() != "connection"})
                answer = conn.getresponse()
                data, headers = answer.read(), answer.getheaders()
                conn.close()
                if proxy.drop(self.command, self.path):
                    self.close_connection = True  # no answer: "remote end closed connection"
                    return
                self.send_response(answer.status)
                for k, v in headers:
                    if k.lower() not in ("connection", "content-length", "transfer-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def drop(self, method: str, path: str) -> bool:
        for (m, end), left in self.drops.items():
            if m == method and path.endswith(end) and left > 0:
                self.drops[(m, end)] = left - 1
                self.dropped.append(f"{method} {path}")
                self.down = self.down_after_drop
                return True
        return False

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def lossy():
    proxies: list[LossyProxy] = []

    def make(server) -> LossyProxy:
        proxies.append(LossyProxy(server.url))
        return proxies[-1]
    yield make
    for p in proxies:
        p.close()


def device_client(url: str, creds, folder) -> SyncClient:
    """The device's SyncClient with these credentials; retries without back-off waits."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "device.json").write_text(json.dumps({"server": url, "device_id": creds.device_id,
                                                    "token": creds.token}))
    return SyncClient(url, folder, retry=make_retry(backoff=0.0))


def test_a_lost_checkin_response_is_retried_and_gets_the_same_task(server, lossy, tmp_path):
    proxy = lossy(server)
    proxy.drops[("POST", "/v1/checkin")] = 1
    creds = server.enrol()
    client = device_client(proxy.url, creds, tmp_path / "device")
    task = client.checkin(None)
    assert proxy.dropped == ["POST /v1/checkin"] and task.round_id == 1
    st = server.status()["round"]
    assert st["tasks_issued"] == 1  # the retry got the task the lost answer carried
    r = server.http.post(f"{server.url}/v1/checkin", json={"model_version": None},
                         headers={**creds.headers, "Idempotency-Key": "no spaces"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "bad_idempotency_key"


def test_a_lost_response_on_the_secure_path_counts_as_accepted(start_server, lossy, tmp_path):
    from test_secure_rounds import Member, accepted, expect_new_model, refused, secure_round
    server = start_server(round=secure_round(3, 3))
    proxy = lossy(server)
    members = [Member(server, i) for i in range(3)]
    first, rid = members[0], members[0].round_id
    client = device_client(proxy.url, first.creds, tmp_path / "device")
    task = Task.from_json(first.task)
    upload = SecureUpload(client, task, wait=lambda seconds: False)
    proxy.drops[("POST", "/secagg/advertise")] = 1  # POST: the device's own loop resends
    advertise = first.device.advertise_keys().to_dict()
    upload._send("advertise", advertise)
    refused(first.post("advertise", {**advertise, "cipher_key": advertise["mask_key"]}), 409, "replayed")
    for m in members[1:]:
        accepted(m.advertise())
    accepted(first.post("advertise", advertise))  # a late resend after the phase closed
    for m in members:
        accepted(m.share())
    masked = first.device.masked_input(SharesRelay.from_dict(first.relay("shares")),
                                       first.flat()).to_bytes()
    proxy.drops[("PUT", "/secagg/masked")] = 1  # PUT: urllib3 resends it
    assert client.secagg_send(rid, "masked", masked=masked).phase == "masked"
    assert proxy.dropped == [f"POST /v1/rounds/{rid}/secagg/advertise",
                             f"PUT /v1/rounds/{rid}/secagg/masked"]
    for m in members[1:]:
        accepted(m.mask())
    for m in members:
        accepted(m.sign())
    for m in members:
        accepted(m.unmask())
    st = server.wait_for(lambda st: st["model"]["version"] == 1, what="round closed")
    assert st["rounds"][0]["reports"] == 3
    expect_new_model(server, [m.update for m in members], first.config.encoding.step)
    accepted(first.put_masked(masked))  # after aggregation too: it is in version 1


def test_a_resend_to_an_abandoned_secure_round_is_told_so(start_server):
    from test_secure_rounds import Member, accepted, refused, secure_round
    server = start_server(round=secure_round(3, 3))
    members = [Member(server, i) for i in range(3)]
    message = members[0].device.advertise_keys().to_dict()
    accepted(members[0].post("advertise", message))
    assert server.training("stop").status_code == 200
    refused(members[0].post("advertise", message), 409, "round_abandoned",
            "training stopped by an administrator")


# ---------------------------------------------------------------- resource faults

def test_disk_full_or_read_only_at_upload_answers_507_or_503_and_stores_nothing(server):
    service = server.app.extensions["pk.service"]
    disk = FullDisk(service.blobs, ("updates/",))
    creds = server.enrol()
    task = server.task(creds)
    body, key = server.update_bytes(task), str(uuid.uuid4())
    disk.full = True
    r = server.upload(creds, task["round_id"], body, key)
    assert r.status_code == 507 and r.headers["Retry-After"] == "60"
    assert r.json()["error"] == "insufficient_storage" and "retry in 60 s" in r.json()["message"]
    real = disk.real
    disk.full, disk.real = False, lambda *a: (_ for _ in ()).throw(
        OSError(errno.EROFS, os.strerror(errno.EROFS)))  # the data dir went read-only
    r = server.upload(creds, task["round_id"], body, key)
    assert r.status_code == 503 and r.headers["Retry-After"] == "10"
    assert r.json()["error"] == "storage_unavailable"
    st = server.status()["round"]
    assert st["reports"] == 0 and pending_files(server, task["round_id"]) == []
    disk.real = real  # the operator fixed it: the device's retry goes through
    r = server.upload(creds, task["round_id"], body, key)
    assert r.status_code == 202 and r.json()["reports"] == 1


@pytest.mark.postgres
def test_database_down_answers_503_with_retry_after_and_changes_nothing(start_server,
                                                                       pg_url):
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    server = start_server(db_url=pg_url)
    creds = server.enrol()
    task = server.task(creds)
    body, key = server.update_bytes(task), str(uuid.uuid4())
    name = make_url(pg_url).database
    admin = create_engine(os.environ["PG_TEST_URL"], isolation_level="AUTOCOMMIT")

    def database(up: bool) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(up).lower()}'))
            if not up:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = :name"), {"name": name})
    database(False)
    try:
        for r in (server.upload(creds, task["round_id"], body, key),
                  server.http.post(f"{server.url}/v1/checkin", json={"num_examples": 20},
                                   headers=creds.headers, timeout=30)):
            assert r.status_code == 503 and r.headers["Retry-After"] == "10", r.text
            assert r.json()["error"] == "database_unavailable"
    finally:
        database(True)
        admin.dispose()
    assert server.status()["round"]["reports"] == 0
    r = server.upload(creds, task["round_id"], body, key)
    assert r.status_code == 202 and r.json()["reports"] == 1


# ---------------------------------------------------------------- lease takeover

def closing_row(db: Path, round_id: int, timeout: float = 60.0) -> tuple[int, str]:
    """(reports, lease owner) of the round once it is closing, read from SQLite directly."""
    def closing() -> tuple[int, str] | None:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            return conn.execute("SELECT reports, lease_owner FROM rounds WHERE id = ? AND "
                                "state = 'closing'", (round_id,)).fetchone()
    return poll(closing, timeout, f"round {round_id} to start closing in the server process")


def test_kill_9_during_aggregation_the_restarted_process_takes_over_at_once(
        start_process, tiny_model, tmp_path):
    data = tmp_path / "data"
    first = start_process(data, round={"target_reports": 3, "min_reports": 2,
                                       "round_seconds": 600.0})
    devices, tasks, bodies, keys = one_round(first)
    round_id = tasks[0]["round_id"]
    for i in range(2):
        assert first.upload(devices[i], round_id, bodies[i], keys[i]).status_code == 202
    # the first stored update becomes a FIFO: the aggregation blocks reading it, for real
    stored = next(p for p in pending_files(first, round_id) if devices[0].device_id in p.name)
    stored.unlink()
    os.mkfifo(stored)
    def upload_third() -> None:
        try:
            first.upload(devices[2], round_id, bodies[2], keys[2])
        except requests.ConnectionError:
            pass  # the process dies before it answers

    third = threading.Thread(target=upload_third, daemon=True)
    third.start()  # its upload reaches the target: this request aggregates, and blocks
    row = closing_row(data / "server.sqlite3", round_id)  # (the process is frozen: the
    assert row[0] == 3 and row[1].split("/")[1] == str(first.proc.pid)  # read holds the GIL)
    first.proc.send_signal(signal.SIGKILL)  # kill -9 inside the aggregation
    first.proc.wait()
    stored.unlink()
    stored.write_bytes(bodies[0])  # the update as it was acknowledged
    started = time.monotonic()
    second = start_process(data)  # lease_seconds is 120: no waiting it out
    st = second.wait_for(lambda s: s["rounds"][0]["state"] == "closed", timeout=60,
                         what="takeover")
    assert time.monotonic() - started < 60
    assert st["rounds"][0]["reports"] == 3 and st["model"]["version"] == 1
    takeover = second.events("lease_takeover")
    assert takeover and takeover[0]["dead_owner"].split("/")[1] == str(first.proc.pid)
    assert_model(second.model(1)[0], expected_model(tiny_model["weights"], bodies,
                                                    tiny_model["shapes"]))
    again = second.upload(devices[2], round_id, bodies[2], keys[2])  # its answer was lost
    assert again.status_code == 202 and again.json()["reports"] == 3


# ---------------------------------------------------------------- outages

def test_an_outage_longer_than_a_phase_does_not_eat_protocol_time(start_server, tmp_path):
    from test_secure_rounds import Member, accepted, expect_new_model, secure_round
    config = secure_round(3, 3)  # 15 s phases
    before = ManualClock()
    first = start_server(round=config, data_dir=tmp_path / "data", clock=before)
    members = [Member(first, i) for i in range(3)]
    for m in members:
        accepted(m.advertise())
    for m in members[:2]:  # the third device's shares are in flight when the server stops
        accepted(m.share())
    old = first.status()["round"]["deadline"]
    outage = 60.0  # four phases long; the first server gets no request (its ticker is off)
    after = ManualClock(before.now + outage)
    second = start_server(round=config, data_dir=tmp_path / "data", clock=after)
    st = second.status()  # the first tick sees the outage and moves the deadlines
    assert st["round"]["deadline"] == pytest.approx(old + outage + 30.0, abs=0.5)
    for m in members:
        m.server = second
    accepted(members[2].share())  # the resend after the restart is still in time
    for m in members:
        accepted(m.mask())
    for m in members:
        accepted(m.sign())
    for m in members:
        accepted(m.unmask())
    st = second.wait_for(lambda st: st["model"]["version"] == 1, what="round closed")
    assert st["rounds"][0]["reports"] == 3  # no acknowledged input was dropped
    expect_new_model(second, [m.update for m in members], members[0].config.encoding.step)


def test_a_device_keeps_its_secure_round_through_an_outage_past_its_deadline(
        start_server, lossy, tmp_path):
    from test_secure_rounds import Member, secure_round
    server = start_server(round=secure_round(3, 3))
    proxy = lossy(server)
    member = Member(server, 0)
    clock = ManualClock()  # the device's
    task = Task.from_json(member.task)

    def wait(seconds: float) -> bool:  # the device waits out an outage of 40 s past its deadline
        clock.advance(seconds)
        proxy.down = clock.now < task.deadline + 40.0
        return False
    client = device_client(proxy.url, member.creds, tmp_path / "device")
    upload = SecureUpload(client, task, wait=wait, clock=clock)
    proxy.down = True
    clock.now = task.deadline - 1.0  # the server goes down just before the deadline
    upload._send("advertise", member.device.advertise_keys().to_dict())
    assert clock.now >= task.deadline + 40.0 and upload.unreachable >= 40.0
    assert server.status()["round"]["state"] == "open"  # (the server's own time runs on)


# ---------------------------------------------------------------- retention

def test_retention_keeps_the_latest_versions_and_version_0(start_server, tiny_model):
    server = start_server(round={"target_reports": 2, "min_reports": 2}, keep_versions=2)
    for r in range(4):
        devices, tasks, bodies, keys = one_round(server, 2)
        compact = server.http.get(f"{server.url}/v1/models/{r}/compact", timeout=30)
        assert compact.status_code == 200  # the int8 form, made once
        for d, t, b, k in zip(devices, tasks, bodies, keys):
            assert server.upload(d, t["round_id"], b, k).status_code == 202
    st = server.status()
    assert [v["version"] for v in st["versions"]] == [0, 1, 2, 3, 4]  # the record stays
    files = sorted(p.name for p in (server.data_dir / "models").glob("*.safetensors"))
    assert files == ["000000.safetensors", "000003.safetensors", "000004.safetensors"]
    compacts = sorted(p.name.split("-")[0] for p in (server.data_dir / "models" / "compact"
                                                      ).glob("*.int8.safetensors"))
    assert compacts == ["0", "3"]  # 1 and 2 went with their versions (4's was never asked)
    gone = server.http.get(f"{server.url}/v1/models/2", timeout=30)
    assert gone.status_code == 410 and gone.json()["error"] == "version_removed"
    for version in (0, 3, 4):
        assert server.model(version)[2].status_code == 200


def test_a_plain_update_whose_answer_was_lost_is_confirmed_after_its_deadline(
        start_server, lossy, tmp_path, sender_messages):
    server = start_server(round=ONE_DEVICE_ROUNDS)
    proxy = lossy(server)
    proxy.drops[("PUT", "/update")], proxy.down_after_drop = 1, True  # answer lost, then down
    client = SyncClient(proxy.url, tmp_path / "device", retry=make_retry(backoff=0.0),
                        enrolment_code=server.enrolment_code())
    clock = ManualClock()
    device = make_device(proxy.url, tmp_path, sender_messages, client=client, deadlines=clock)
    assert device.run_once().outcome == "offline"
    first = server.status()["rounds"][0]
    assert first["reports"] == 1 and first["state"] == "closed"  # the server took it
    clock.advance(device._pending.deadline + 1 - clock())  # the outage outlasted it
    proxy.down = False
    step = device.run_once()
    assert step.outcome == "uploaded", step  # the stored answer: it counted
    assert device.status().rounds_joined == 1 and device.status().ledger_rounds == 1
