"""Shared fixtures: a tiny checkpoint, running aggregation servers (in-thread or as real
processes), fresh PostgreSQL databases.

PostgreSQL tests (marker `postgres`) use the server named by `PG_TEST_URL`; they fail
when `CI=true` and it is missing, and are skipped otherwise.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent

# Small, fast rounds for tests; each test overrides what it needs (secure aggregation is
# on by default in the server, off here).
TEST_ROUND = {"target_reports": 3, "min_reports": 2, "overcommit": 1.5, "round_seconds": 120.0,
              "retry_after": 30.0, "participation_cap": 3, "clip_norm": 1.0,
              "noise_multiplier": 1.0, "epsilon_budget": 20.0,
              "secure_aggregation": False}  # the plain path; tests/test_secure_rounds.py: secure


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> dict[str, Any]:
    """A tokenizer from a few hundred public messages and a tiny LSTM checkpoint."""
    import torch

    from data import load_split
    from model.checkpoint import CheckpointMeta, save_checkpoint
    from model.config import ModelConfig
    from model.lstm import NextWordLSTM
    from model.tokenizer import WordTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    messages = [m for device in load_split("public")[:20] for m in device.messages][:400]
    tokenizer = WordTokenizer.build(messages, vocab_size=300)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=16, hidden_size=32)
    model = NextWordLSTM(config)
    folder = tmp_path_factory.mktemp("tiny_model")
    tokenizer.save(folder / "tokenizer.json")
    save_checkpoint(folder / "model.safetensors", model,
                    CheckpointMeta(config, tokenizer.sha256, version=7,
                                   training={"source": "random init for tests"}))
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return {"checkpoint": folder / "model.safetensors", "tokenizer": folder / "tokenizer.json",
            "tokenizer_sha256": tokenizer.sha256, "weights": weights,
            "shapes": {k: v.shape for k, v in weights.items()}}


@dataclass
class DeviceCreds:
    device_id: str
    token: str
    key: Any = None  # the device's Ed25519 identity key (federated.identity)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Server:
    """A running server and the calls tests make to it."""

    url: str
    data_dir: Path
    admin_token: str
    shapes: dict[str, tuple[int, ...]]
    app: Any = None
    clock: Any = None  # an in-thread server's ManualClock: tests move it, then `tick`
    proc: subprocess.Popen | None = None
    log: Path | None = None
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def enrolment_code(self, uses: int = 1) -> str:
        """A fresh enrolment code from the admin API, good for `uses` enrolments."""
        return issue_code(self.url, self.admin_token, uses, self.http)

    def enrol(self, code: str | None = None) -> DeviceCreds:
        """A new device with its own identity key, enrolled with `code` (or a fresh one)."""
        from federated import identity
        key = identity.new_key()
        r = self.http.post(f"{self.url}/v1/devices", timeout=30, json={
            "enrolment_code": code or self.enrolment_code(),
            "identity_key": identity.public_key_text(key)})
        assert r.status_code == 201, r.text
        return DeviceCreds(**r.json(), key=key)

    def checkin(self, device: DeviceCreds) -> dict:
        self.tick()
        r = self.http.post(f"{self.url}/v1/checkin", json={"model_version": None},
                           headers=device.headers, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def task(self, device: DeviceCreds) -> dict:
        answer = self.checkin(device)
        assert answer["task"] is not None, answer
        return answer["task"]

    def update_bytes(self, task: dict, seed: int = 0, scale: float = 0.1,
                     num_examples: int = 20, metrics: dict | None = None,
                     tensors: dict | None = None) -> bytes:
        """A valid update for `task`: a random delta, clipped and noised as the task says."""
        from federated.privacy import privatize
        from federated.wire import Update, encode_update
        if tensors is None:
            rng = np.random.default_rng(seed)
            raw = {k: rng.normal(0, scale, s).astype(np.float32) for k, s in self.shapes.items()}
            tensors, _ = privatize(raw, task["clip_norm"], task_noise(task),
                                   np.random.default_rng(seed + 10_000))
        return encode_update(Update(tensors, task["round_id"], task["model_version"],
                                    num_examples, metrics or {"loss": 3.0, "accuracy": 0.2}))

    def upload(self, device: DeviceCreds, round_id: int, body: bytes,
               key: str | None = None) -> requests.Response:
        headers = {**device.headers, "Idempotency-Key": key or str(uuid.uuid4()),
                   "Content-Type": "application/octet-stream"}
        r = self.http.put(f"{self.url}/v1/rounds/{round_id}/update", data=body,
                          headers=headers, timeout=120)
        self.tick()  # the aggregation it may have started, as a device asking later sees
        return r

    def status(self) -> dict:
        """GET /v1/status (after `tick`: reads change nothing, the worker does)."""
        self.tick()
        r = self.http.get(f"{self.url}/v1/status", timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def set_config(self, **changes) -> requests.Response:
        return self.http.put(f"{self.url}/v1/admin/config", json=changes, headers=self.admin,
                             timeout=30)

    def training(self, action: str) -> requests.Response:
        return self.http.post(f"{self.url}/v1/admin/training", json={"action": action},
                              headers=self.admin, timeout=60)

    def model(self, version: int | None = None) -> tuple[dict, dict, requests.Response]:
        from federated.wire import tensors_from_bytes
        path = "/v1/model" if version is None else f"/v1/models/{version}"
        self.tick()
        r = self.http.get(self.url + path, timeout=60)
        assert r.status_code == 200, r.text
        tensors, meta = tensors_from_bytes(r.content)
        return tensors, meta, r

    def tick(self) -> None:
        """An in-thread server's round worker ticks now (deadlines, leases, retries, the
        aggregation a request asked for); returns when that tick is over. Server processes
        tick by themselves (`start_process(tick=...)`)."""
        if self.app is not None:
            self.app.extensions["pk.worker"].settle()

    def advance(self, seconds: float) -> None:
        """Move an in-thread server's clock by `seconds`, then `tick`."""
        self.clock.advance(seconds)
        self.tick()

    def events(self, name: str) -> list[dict]:
        """The JSON log lines of a server process with this event name."""
        lines = self.log.read_text().splitlines() if self.log else []
        return [e for e in map(_json_or_none, lines) if e and e.get("event") == name]

    def wait_for(self, predicate, timeout: float = 120.0, what: str = "condition") -> dict:
        """Poll /v1/status until predicate(status) holds (for server processes and device
        threads; an in-thread server's own deadlines are moved with `advance`)."""
        seen: list[dict] = []

        def holds() -> dict | None:
            seen[:] = [self.status()]
            return seen[0] if predicate(seen[0]) else None
        try:
            return poll(holds, timeout, what, every=0.1)
        except AssertionError as err:
            raise AssertionError(f"{err}: {json.dumps(seen[0])[:2000]}") from None


T = TypeVar("T")


def poll(check: Callable[[], T], timeout: float = 60.0, what: str = "a condition",
         every: float = 0.05) -> T:
    """`check()`'s first truthy answer, asked every `every` seconds for at most `timeout`
    (AssertionError after). Only for what another process or thread does on its own time (a
    server or fleet process getting ready, a device thread's round) and signals nothing this
    test could wait on; time itself is never waited for: tests move a clock."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)  # the one sleep in the tests: polling another process's progress


def task_json(**changes: Any) -> dict:
    """A plain round's task as the server sends it (a model version 1 of sha256 0...0),
    with `changes` (a "train" change replaces single train parameters)."""
    train = {"epochs": 1.0, "batch_size": 16, "lr": 0.5, "optimizer": "sgd",
             "max_examples": 1000, **changes.pop("train", {})}
    return {"round_id": 4, "model_version": 1, "model_sha256": "0" * 64, "deadline": 1e10,
            "train": train, "min_examples": 1, "clip_norm": 1.0, "noise_multiplier": 1.0,
            "min_reports": 10, "dishonest_share": 0.0, "secure_aggregation": False, **changes}


def device_task(**changes: Any):
    """`task_json(**changes)` as the device parses it (a `federated.protocol.Task`)."""
    from federated.protocol import Task
    return Task.from_json(task_json(**changes))


def task_noise(task: Any) -> float:
    """The noise an honest device adds for this task (what the device policy sizes): a
    `federated.protocol.Task`, or its JSON as the server sent it."""
    from federated.privacy import device_noise_stddev
    from federated.protocol import Task
    task = task if isinstance(task, Task) else Task.from_json(task)
    return device_noise_stddev(task.clip_norm, task.noise_multiplier, task.min_reports,
                               secure=task.secure_aggregation,
                               dishonest_share=task.dishonest_share)


def issue_code(url: str, admin_token: str, uses: int = 1,
               http: requests.Session | None = None) -> str:
    """An enrolment code from the admin API of the server at `url`."""
    r = (http or requests).post(f"{url}/v1/admin/enrolment-codes", json={"uses": uses},
                                headers={"Authorization": f"Bearer {admin_token}"}, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["code"]


def enrol_device(url: str, admin_token: str) -> dict:
    """{"device_id", "token"} of a device enrolled with a fresh code and identity key."""
    from federated import identity
    r = requests.post(f"{url}/v1/devices", timeout=30, json={
        "enrolment_code": issue_code(url, admin_token),
        "identity_key": identity.public_key_text(identity.new_key())})
    assert r.status_code == 201, r.text
    return r.json()


def _json_or_none(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _settings(data_dir: Path, tiny: dict, db_url: str | None, round_config: dict | None,
              settings_round: dict | None = None, **overrides):
    """Test settings: `round_config` merged onto TEST_ROUND, or exactly `settings_round`."""
    from aggregation_server.config import Settings
    explicit = dict(TEST_ROUND, **(round_config or {})) if settings_round is None \
        else settings_round
    values = dict(data_dir=data_dir, db_url=db_url, init_model=tiny["checkpoint"],
                  tokenizer=tiny["tokenizer"], admin_token="admin-secret", tick_seconds=0.0,
                  log_level="WARNING", round=explicit, enrol_rate_limit=100_000)
    return Settings(**{**values, **overrides})


def serve_in_thread(settings, clock=None) -> tuple[str, Any, Any]:
    """Run create_app(settings, clock) on a free loopback port: (url, app, stop function)."""
    from werkzeug.serving import make_server

    from aggregation_server.app import create_app, shutdown
    app = create_app(settings, clock)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def stop() -> None:
        srv.shutdown()
        thread.join(timeout=10)
        srv.server_close()
        shutdown(app)
    return f"http://127.0.0.1:{srv.server_port}", app, stop


@pytest.fixture(scope="session")
def server_settings(tiny_model):
    """server_settings(data_dir, db_url=None, round=None, **overrides) -> Settings for tests."""
    return lambda data_dir, db_url=None, round=None, **kw: _settings(
        data_dir, tiny_model, db_url, round, **kw)


@pytest.fixture(scope="module")
def module_server(server_settings, tmp_path_factory):
    """One in-thread server shared by a module: {"url", "admin", "device"} (tokens)."""
    url, app, stop = serve_in_thread(server_settings(tmp_path_factory.mktemp("server")))
    device = enrol_device(url, app.extensions["pk.admin"])["token"]
    yield {"url": url, "admin": app.extensions["pk.admin"], "device": device}
    stop()


@pytest.fixture
def start_server(tiny_model, server_settings, tmp_path):
    """start_server(db_url=None, round=None, data_dir=None, clock=None, **settings) -> Server
    (in-thread, on a ManualClock: its time moves only when the test moves it)."""
    from federated.clock import ManualClock
    stops = []

    def start(db_url: str | None = None, round: dict | None = None,
              data_dir: Path | None = None, clock: ManualClock | None = None,
              **overrides) -> Server:
        """`round` is merged onto TEST_ROUND; `settings_round=` replaces it (tests of start-up)."""
        data_dir = data_dir or tmp_path / f"server{len(stops)}"
        clock = clock or ManualClock()
        url, app, stop = serve_in_thread(server_settings(data_dir, db_url, round, **overrides),
                                         clock)
        stops.append(stop)
        return Server(url, data_dir, app.extensions["pk.admin"], tiny_model["shapes"], app=app,
                      clock=clock)

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def server(start_server) -> Server:
    """A fresh in-thread server on SQLite with the test round config."""
    return start_server()


@pytest.fixture
def start_process(tiny_model, tmp_path):
    """start_process(data_dir, db_url=None, round=None, tick=0.2, clock=None) -> Server (a
    real process, started by the fleet's one launcher, `fleet.server_process.ServerProcess`;
    on `clock`, an OffsetClock that the test moves, if given)."""
    from fleet.server_process import ServerProcess
    procs: list[ServerProcess] = []

    def start(data_dir: Path, db_url: str | None = None, round: dict | None = None,
              tick: float = 0.2, clock=None) -> Server:
        settings = {"round": dict(TEST_ROUND, **(round or {})), "tick_seconds": tick,
                    "enrol_rate_limit": 100_000, "init_model": str(tiny_model["checkpoint"]),
                    "tokenizer": str(tiny_model["tokenizer"])}
        if db_url:
            settings["db_url"] = db_url
        if clock:
            settings["clock_offset_file"] = str(clock.path)
        process = ServerProcess(data_dir, settings, admin_token="admin-secret",
                                log_path=tmp_path / f"server{len(procs)}.log",
                                config_path=tmp_path / f"config{len(procs)}.json",
                                start_timeout=60)
        procs.append(process)
        process.start()
        return Server(process.url, data_dir, process.admin_token, tiny_model["shapes"],
                      proc=process.proc, log=process.log_path, clock=clock)

    yield start
    for process in procs:
        process.stop(timeout=10)


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for this test (dropped afterwards)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    base = os.environ.get("PG_TEST_URL")
    if not base:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("PG_TEST_URL is not set, and CI=true requires the PostgreSQL tests")
        pytest.skip("PG_TEST_URL not set (run .ci/postgres.sh)")
    name = f"pk_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
