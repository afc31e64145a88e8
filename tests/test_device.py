"""The device runtime and the headless device command against the real aggregation server."""
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from data import load_split
from keyboard_app.client import SyncClient, make_retry
from keyboard_app.eligibility import Battery, Eligibility, EligibilitySettings
from keyboard_app.history import HistoryStore
from keyboard_app.privacy_policy import DevicePolicy
from keyboard_app.runtime import DeviceRuntime

ROOT = Path(__file__).resolve().parent.parent
ONE_DEVICE_ROUNDS = {"target_reports": 1, "min_reports": 1, "overcommit": 1.0,
                     "retry_after": 0.2, "noise_multiplier": 0.5, "epsilon_budget": None,
                     "participation_cap": 20, "train_batch_size": 4, "train_epochs": 1.0}
# one-device rounds at z = 0.5: looser than a phone's default policy, so set in code
POLICY = DevicePolicy.relaxed(min_noise_multiplier=0.5, min_reports=1, epsilon_budget=None)


@pytest.fixture(scope="module")
def sender_messages():
    """A real `federated` sender with a few dozen messages."""
    device = next(d for d in load_split("federated") if 30 <= len(d.messages) <= 60)
    return device.messages


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Phone:
    """The one stand-in allowed: a phone's battery (here it can also 'type' on a given read)."""

    def __init__(self, on_read=None) -> None:
        self.plugged, self.reads, self.on_read = True, 0, on_read or {}

    def __call__(self) -> Battery:
        self.reads += 1
        if self.reads in self.on_read:
            self.on_read[self.reads]()
        return Battery(90.0, self.plugged)


def make_device(url, tmp_path, messages, *, phone=None, clock=None, client=None, code=None,
                deadlines=None, **settings):
    """A device runtime on `messages`; `clock`: its eligibility's (monotonic) clock,
    `deadlines`: the clock it compares round deadlines with (default: the wall clock)."""
    history = HistoryStore(":memory:", retention_days=None)
    history.add_many(messages)
    eligibility = Eligibility(EligibilitySettings(**{"idle_seconds": 60, "min_new_messages": 5,
                                                     **settings}),
                              clock=clock or Clock(), battery=phone or Phone())
    return DeviceRuntime(tmp_path / "device", url, history=history, eligibility=eligibility,
                         client=client, poll_seconds=0.1, policy=POLICY,
                         enrolment_code=code, **({"clock": deadlines} if deadlines else {}))


def run_until(device, server, outcome, tries=40):
    """Device passes until `outcome`; between them the server's worker ticks (instead of
    the device waiting the time its last step asked for)."""
    steps = []
    for _ in range(tries):
        steps.append(device.run_once())
        if steps[-1].outcome == outcome:
            return steps
        server.tick()
    raise AssertionError(f"never reached {outcome}: {[(s.outcome, s.detail) for s in steps]}")


def test_runtime_round_trip_and_status(start_server, tmp_path, sender_messages):
    server = start_server(round=ONE_DEVICE_ROUNDS)
    device = make_device(server.url, tmp_path, sender_messages, code=server.enrolment_code())
    seen = []
    device.add_model_listener(lambda model, tok, version: seen.append(version))
    steps = run_until(device, server, "uploaded")
    assert [s.outcome for s in steps] == ["uploaded"]
    status = device.status()
    assert status.model_version == 0 and seen == [0]
    assert status.server_reachable and status.rounds_joined == 1 and status.last_round_id == 1
    assert status.clip_norm == 1.0 and status.noise_stddev == pytest.approx(0.5)
    assert status.epsilon is not None and status.epsilon > 0 and status.delta == 1e-6
    assert status.last_update_bytes > 4 * device.model.num_parameters()
    assert status.last_participation is not None
    server.wait_for(lambda st: st["model"]["version"] == 1, what="round 1 aggregated")
    # the next pass picks up the new global model and tells the listener
    assert device.run_once().outcome == "not-eligible"  # no new messages since round 1
    assert seen == [0, 1] and device.status().model_version == 1
    assert "0 new messages" in device.status().detail
    for i in range(5):
        device.history.add(f"a new message number {i}")
    assert run_until(device, server, "uploaded")[-1].detail == "round 2"


def test_not_eligible_while_typing_or_on_battery(start_server, tmp_path, sender_messages):
    server = start_server(round=ONE_DEVICE_ROUNDS)
    clock, phone = Clock(), Phone()
    device = make_device(server.url, tmp_path, sender_messages, phone=phone, clock=clock, code=server.enrolment_code())
    device.note_typing()
    step = device.run_once()
    assert step.outcome == "not-eligible" and "in use" in step.detail and step.wait >= 60
    clock.now += 61
    phone.plugged = False
    assert "on battery" in device.run_once().detail
    phone.plugged = True
    device.pause()
    assert device.run_once().outcome == "paused" and device.status().paused
    device.resume()
    assert device.run_once().outcome == "uploaded"
    assert server.status()["round"]["reports"] in (0, 1)  # round 1 closed with 1 report


def test_typing_interrupts_training_and_nothing_is_sent(start_server, tmp_path,
                                                        sender_messages):
    server = start_server(round=ONE_DEVICE_ROUNDS)
    clock = Clock()
    device = None
    # read 1 is the eligibility check; reads 2.. are polls between training batches
    phone = Phone(on_read={4: lambda: device.note_typing()})
    device = make_device(server.url, tmp_path, sender_messages, phone=phone, clock=clock, code=server.enrolment_code())
    step = device.run_once()
    assert step.outcome == "interrupted" and "in use" in step.detail
    # the keystroke came during read 4 (3rd poll); the 4th poll (read 5) stopped training,
    # read 6 told why: not one batch more was trained after the user typed
    assert phone.reads == 6
    status = server.status()
    assert status["round"]["reports"] == 0 and status["round"]["tasks_issued"] == 1
    assert device.status().rounds_joined == 0
    clock.now += 61  # idle again: the same task is handed back and completed
    assert device.run_once().outcome == "uploaded"
    server.wait_for(lambda st: st["rounds_closed"] == 1, what="round closed")


def test_update_is_kept_through_an_outage_and_sent_once(start_server, tmp_path,
                                                        sender_messages):
    from test_no_raw_text import RecordingRelay, parse_requests
    server = start_server(round=ONE_DEVICE_ROUNDS)
    relay = RecordingRelay(int(server.url.rsplit(":", 1)[1]))
    phone = Phone(on_read={3: relay.cut})  # the network goes down during training
    quick = SyncClient(relay.url, tmp_path / "device", retry=make_retry(backoff=0.01),
                       enrolment_code=server.enrolment_code())
    device = make_device(relay.url, tmp_path, sender_messages, phone=phone, client=quick)
    try:
        step = device.run_once()
        assert step.outcome == "offline" and device.status().server_reachable is False
        assert device.status().rounds_joined == 0
        assert server.status()["round"]["reports"] == 0
        reads = phone.reads
        relay.mend()
        assert device.run_once().outcome == "uploaded"
        assert phone.reads == reads + 1  # one condition check, no training again
    finally:
        relay.close()
    sent = [r for stream in relay.streams for r in parse_requests(bytes(stream))]
    assert [r["method"] for r in sent].count("PUT") == 1
    server.wait_for(lambda st: st["rounds_closed"] == 1, what="round closed with the update")


def test_offline_device_keeps_its_cached_model(start_server, tmp_path, sender_messages):
    server = start_server(round=ONE_DEVICE_ROUNDS)
    make_device(server.url, tmp_path, sender_messages, code=server.enrolment_code()).run_once()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    quick = SyncClient(dead, tmp_path / "device", retry=make_retry(backoff=0.01))
    device = make_device(dead, tmp_path, sender_messages, client=quick)
    assert device.model is not None and device.status().model_version is not None
    first, second = device.run_once(), device.run_once()
    assert first.outcome == second.outcome == "offline"
    assert device.status().server_reachable is False
    assert 2.5 <= first.wait <= 7.5 and 5 <= second.wait <= 15  # back-off with jitter


def test_background_loop_start_pause_stop(start_server, tmp_path, sender_messages):
    server = start_server(round=ONE_DEVICE_ROUNDS)
    device = make_device(server.url, tmp_path, sender_messages, min_new_messages=0, code=server.enrolment_code())
    device.start()
    try:
        server.wait_for(lambda st: st["rounds_closed"] >= 2, timeout=60, what="two rounds")
        device.pause()
        assert device.status().paused
    finally:
        device.stop()
    assert device.status().state == "stopped" and device.status().rounds_joined >= 2


def test_headless_device_command(start_process, tmp_path, sender_messages):
    """The command with a phone's default privacy policy, in rounds of five (four of them
    reports the test uploads itself)."""
    server = start_process(tmp_path / "server", round={
        **ONE_DEVICE_ROUNDS, "target_reports": 5, "min_reports": 5, "noise_multiplier": 1.0})
    history = tmp_path / "history.txt"
    history.write_text("\n".join(sender_messages + ["ring me on 0612 345 678 or x@y.org ok"]))
    data_dir = tmp_path / "device"
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyboard_app.device", "--server", server.url, "--history",
         str(history), "--data-dir", str(data_dir), "--rounds", "2", "--max-wait", "0.5",
         "--timeout", "150", "--enrolment-code", server.enrolment_code()], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "device.log").open("w"))
    try:
        for closed in (0, 1):
            server.wait_for(lambda st: st["rounds_closed"] >= closed, what="round closed")
            for _ in range(4):
                others = server.enrol()
                task = server.task(others)
                assert task["round_id"] == closed + 1
                reply = server.upload(others, task["round_id"], server.update_bytes(task))
                assert reply.status_code == 202, reply.text
        proc.wait(timeout=180)
    finally:
        proc.kill()
    log = (tmp_path / "device.log").read_text()
    assert proc.returncode == 0, log
    assert f"history: {len(sender_messages) + 1} of {len(sender_messages) + 1} messages stored " \
           f"(1 redacted" in log
    assert "round 1: uploaded" in log and "round 2: uploaded" in log
    assert "took part in 2 round(s)" in log
    status = server.wait_for(lambda st: st["rounds_closed"] >= 2, what="two rounds closed")
    assert status["devices"]["enrolled"] == 9 and status["model"]["version"] >= 2
    assert stat.S_IMODE(os.stat(data_dir / "device.json").st_mode) == 0o600
    stored = HistoryStore(data_dir / "history.sqlite", retention_days=None).messages()
    assert stored[-1] == "ring me on or ok"
    assert b"345 678" not in (data_dir / "history.sqlite").read_bytes()


def test_headless_device_refuses_a_bad_history_file(tmp_path):
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"hello\x00world")
    for path, message in ((tmp_path / "missing.txt", "file not found"), (binary, "NUL byte")):
        proc = subprocess.run(
            [sys.executable, "-m", "keyboard_app.device", "--server", "http://127.0.0.1:9",
             "--history", str(path), "--data-dir", str(tmp_path / "d"), "--once"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr


def test_simulated_devices_share_a_cache_and_skip_prediction(start_server, tmp_path,
                                                             sender_messages):
    """How a fleet simulator runs many devices in one process."""
    server = start_server(round={**ONE_DEVICE_ROUNDS, "target_reports": 2, "min_reports": 2})
    cache = tmp_path / "shared-cache"
    devices = []
    for i in range(2):
        history = HistoryStore(":memory:", retention_days=None)
        history.add_many(sender_messages[i::2])
        devices.append(DeviceRuntime(
            tmp_path / f"sim{i}", server.url, history=history, cache_dir=cache,
            enrolment_code=server.enrolment_code(),
            load_model=False, poll_seconds=0.1, train_seed=i, policy=POLICY,
            eligibility=Eligibility(EligibilitySettings(idle_seconds=0, min_new_messages=0),
                                    battery=lambda: None)))
    assert [d.run_once().outcome for d in devices] == ["uploaded", "uploaded"]
    assert all(d.model is None and d.status().model_version == 0 for d in devices)
    assert sorted(p.name for p in cache.iterdir()) == ["model.safetensors",
                                                      "tokenizer.cache.json"]
    assert len({d.client.device_id for d in devices}) == 2
    server.wait_for(lambda st: st["model"]["version"] == 1, what="round of two aggregated")
