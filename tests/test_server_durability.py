"""Fault injection (issue 20): nothing acknowledged is lost to a transient fault.

Each test drives a real server over HTTP on real SQLite; time that matters to the server
(leases, retry backoff) comes from a clock the test moves (`RoundService.clock`), and
faults are injected at the storage layer (a BlobStore whose writes fail with ENOSPC).
"""
from __future__ import annotations

import errno
import os
import time
import uuid

from test_server_faults import assert_model, expected_model


class Clock:
    """A clock the test moves: real time at the start, then only `advance`."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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


def rigged(server) -> tuple[object, Clock, FullDisk]:
    """The server's RoundService with a test clock and a disk that can fill up."""
    service = server.app.extensions["pk.service"]
    clock = Clock()
    service.clock = clock
    return service, clock, FullDisk(service.blobs, ("models/", "optimizer/"))


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
