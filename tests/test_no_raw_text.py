"""Raw text never leaves the device.

Three devices, each a real `federated` chat user, take part in two rounds with the real
server, plain rounds in one test and secure-aggregation rounds (the default) in the other.
They only know the address of a TCP relay on loopback that records every byte
they send before passing it on, so nothing they send can go around the recording. The
test then parses that byte stream back into HTTP requests, decodes every body (JSON,
safetensors header and metadata), and shows that

- no run of 3 consecutive words of any message (hence no message of 3+ words), nor any
  longer message verbatim, nor the redacted phone number or e-mail, nor a word the
  devices' personal layers learned, appears anywhere in what was sent, in raw bytes or in
  any decoding of them;
- every uploaded tensor is exactly the clipped, noised update: the server's own copy of
  the round's global model, trained on the device's history with the round's settings,
  minus the global model, clipped to C, plus the noise of the device's seeded generator;
- every evaluation report is exactly {"sums": ...}: the seven sums of the device's own
  scoring of the round's model, clipped and noised with the device's generator;
- in secure rounds, every message of every phase (signed keys, encrypted shares, the
  masked update, the signature of the survivors, the unmasking shares) is exactly a
  protocol message: fixed fields of ids and fixed-length binary, nothing else.
"""
from __future__ import annotations

import hashlib
import json
import math
import socket
import threading
import time

import numpy as np
import pytest
import requests
import torch

from data import load_split
from device_model.checkpoint import weights_from_bytes
from device_model.lstm import NumpyLSTM
from device_model.train import TrainConfig, train
from device_model.tokenizer import DeviceTokenizer
from federated import evaluation as fed_eval
from federated import privacy
from federated.compression import round_seed
from federated.privacy import clip, privatize
from federated.secagg import flatten, message_from_json
from federated.wire import decode_compressed_update, decode_update, l2_norm, tensors_from_bytes
from keyboard_app.eligibility import Eligibility, EligibilitySettings
from keyboard_app.evaluation_task import score
from keyboard_app.history import HistoryStore
from keyboard_app.local_training import sample_messages
from keyboard_app.personal_store import PersonalStore
from keyboard_app.privacy_policy import DevicePolicy
from keyboard_app.runtime import DeviceRuntime
from model.tokenizer import WordTokenizer
from model.words import words

ROUNDS = {"target_reports": 3, "min_reports": 3, "overcommit": 1.0, "retry_after": 0.2,
          "noise_multiplier": 0.3, "clip_norm": 0.5, "epsilon_budget": None,
          "participation_cap": 5, "train_batch_size": 8, "train_epochs": 1.0, "train_lr": 0.5,
          "train_optimizer": "sgd", "train_max_examples": 40}
# tiny rounds (3 reports, z = 0.3): looser than a phone's default policy, so set in code
POLICY = DevicePolicy.relaxed(min_noise_multiplier=0.3, max_clip_norm=0.5, min_reports=3,
                              epsilon_budget=None)
SECURE_ROUNDS = {**ROUNDS, "secure_aggregation": True, "round_seconds": 120.0,
                 "secagg_phase_seconds": 15.0}
SECAGG_MESSAGES = {"advertise": "advertise_keys", "shares": "share_keys",
                   "consistency": "consistency_response", "unmask": "unmask_response"}
PERSONAL_WORD = "zorblatquux"  # a word only these devices know, learned by their personal layer
SECRETS = ["call me at 0612 345 678 tonight", "my address is jane.doe@example.org ok",
           f"dinner with {PERSONAL_WORD.title()} at eight"]


class RecordingRelay:
    """A TCP relay on loopback: client bytes are recorded, then forwarded to `upstream`.

    `cut()` drops every connection and refuses new ones until `mend()` (a network outage).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.streams: list[bytearray] = []  # one per client connection, everything it sent
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = self.down = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            upstream = socket.create_connection(self.upstream)
            self.sockets += [client, upstream]
            record = bytearray()
            self.streams.append(record)
            threading.Thread(target=self._pipe, args=(client, upstream, record),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None),
                             daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, record: bytearray | None) -> None:
        try:
            while data := source.recv(65536):
                if record is not None:
                    record.extend(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.down = True
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sockets.clear()

    def mend(self) -> None:
        self.down = False

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


def parse_requests(stream: bytes) -> list[dict]:
    """HTTP/1.1 requests (method, path, headers, body) from one connection's bytes."""
    found, pos = [], 0
    while pos < len(stream):
        end = stream.index(b"\r\n\r\n", pos)
        head = stream[pos:end].decode("latin-1").split("\r\n")
        method, path, _ = head[0].split(" ")
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in head[1:])}
        assert "chunked" not in headers.get("transfer-encoding", "")
        length = int(headers.get("content-length", 0))
        body = stream[end + 4:end + 4 + length]
        assert len(body) == length, "truncated request body"
        found.append({"method": method, "path": path, "headers": headers, "body": body,
                      "raw": stream[pos:end + 4 + length]})
        pos = end + 4 + length
    return found


def decodings(request: dict) -> list[str]:
    """Every textual view of a request: raw bytes, the JSON body, the safetensors header."""
    views = [request["raw"].decode("latin-1"), request["raw"].decode("utf-8", "replace")]
    body = request["body"]
    if request["headers"].get("content-type", "").startswith("application/json"):
        views.append(json.dumps(json.loads(body), ensure_ascii=False))
    if request["method"] == "PUT" and not request["headers"].get(
            "content-type", "").startswith("application/json"):  # JSON: evaluation reports
        size = int.from_bytes(body[:8], "little")
        header = json.loads(body[8:8 + size])
        views.append(json.dumps(header, ensure_ascii=False))
        views += [str(v) for v in header["__metadata__"].values()]
    return views


def leaks(messages: list[str], views: list[str]) -> list[str]:
    """Every 3-word run of any message (and any message verbatim) found in the views."""
    flat = [" " + " ".join(words(v)) + " " for v in views]
    raw = [v.lower() for v in views]
    found = []
    for message in messages:
        w = words(message)
        for i in range(len(w) - 2):
            run = " " + " ".join(w[i:i + 3]) + " "
            if any(run in f for f in flat):
                found.append(run.strip())
        if len(message) >= 12 and any(message.lower() in r for r in raw):
            found.append(message)
    return found


def test_the_leak_detector_finds_text():
    """Control: the detector does see a message hidden in a request."""
    request = {"method": "POST", "headers": {"content-type": "application/json"},
               "body": b'{"note": "I Will, see-you AT the party"}',
               "raw": b"POST /v1/checkin HTTP/1.1\r\n\r\n"}
    assert leaks(["see you at the party tonight"], decodings(request)) == \
        ["see you at", "you at the", "at the party"]
    assert leaks(["totally different words here"], decodings(request)) == []


@pytest.fixture(scope="module")
def histories():
    senders = [d for d in load_split("federated") if 25 <= len(d.messages) <= 60][:3]
    assert len(senders) == 3
    return [d.messages + SECRETS for d in senders]


def devices_behind(relay: RecordingRelay, server, tmp_path, histories) -> list[DeviceRuntime]:
    """One device runtime per history, knowing only the relay's address."""
    devices = []
    for i, messages in enumerate(histories):
        history = HistoryStore(":memory:", retention_days=None)
        history.add_many(messages)
        eligibility = Eligibility(EligibilitySettings(idle_seconds=0, min_new_messages=0),
                                  battery=lambda: None)
        personal = PersonalStore(tmp_path / f"device{i}" / "personal.sqlite")  # as the app
        for message in history.messages():
            personal.learn(message)
        devices.append(DeviceRuntime(tmp_path / f"device{i}", relay.url, history=history,
                                     enrolment_code=server.enrolment_code(),
                                     eligibility=eligibility, rng=np.random.default_rng(100 + i),
                                     train_seed=i, poll_seconds=0.05, policy=POLICY))
    return devices


def take_part(devices: list[DeviceRuntime], server, rounds: int = 2) -> None:
    """Each device in its own thread until it has uploaded in `rounds` rounds (a secure
    round's devices go through its phases together); between a device's passes the
    server's round worker ticks, instead of the device waiting."""
    uploads = {i: 0 for i in range(len(devices))}
    deadline = time.monotonic() + 240

    def run(i: int) -> None:
        while uploads[i] < rounds and time.monotonic() < deadline:
            if devices[i].run_once().outcome == "uploaded":
                uploads[i] += 1
            else:
                server.tick()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert min(uploads.values()) == rounds, f"devices stalled: {uploads}"


def assert_no_text(sent: list[dict], relay: RecordingRelay, histories, tmp_path) -> None:
    """No 3-word run of any message, no secret, no personal word, in any view of any
    request; the personal word was on every device all along."""
    everything = [m for h in histories for m in h]
    for request in sent:
        assert leaks(everything, decodings(request)) == [], request["raw"][:300]
    blob = b"".join(bytes(s) for s in relay.streams)
    # the number's digits as typed (a bare "0612" can be digits of a float in a JSON report)
    for secret in (b"0612 345", b"0612345678", b"345 678", b"jane.doe", b"example.org"):
        assert secret not in blob
    assert PERSONAL_WORD.encode() not in blob.lower()  # the personal layer's word stays home
    for request in sent:
        assert not any(PERSONAL_WORD in view.lower() for view in decodings(request))
    for i in range(len(histories)):
        assert PersonalStore(tmp_path / f"device{i}" / "personal.sqlite").model.unigrams[
            PERSONAL_WORD] == 1


def assert_plain_bodies(sent: list[dict]) -> None:
    """JSON bodies outside the protocol say nothing but which model and task kinds (and,
    once, who enrols); GETs carry no body."""
    for request in sent:
        if request["method"] == "POST" and "/secagg/" not in request["path"]:
            assert set(json.loads(request["body"])) <= {"model_version", "kinds",
                                                        "enrolment_code", "identity_key"}
        if request["method"] == "GET":
            assert request["body"] == b""


def two_rounds_recorded(start_server, rounds: dict, tmp_path, histories):
    """A server with these round settings, and the devices through the recording relay in
    two rounds: (server, relay, devices, every request they sent, the server's status)."""
    torch.set_num_threads(1)
    server = start_server(round=rounds)
    relay = RecordingRelay(int(server.url.rsplit(":", 1)[1]))
    devices = devices_behind(relay, server, tmp_path, histories)
    try:
        take_part(devices, server)
        st = server.wait_for(lambda st: st["rounds_closed"] >= 2, what="two rounds aggregated")
    finally:
        relay.close()
    sent = [r for stream in relay.streams for r in parse_requests(bytes(stream))]
    return server, relay, devices, sent, st


def textless_uploads(sent: list[dict], relay: RecordingRelay, devices: list[DeviceRuntime],
                     histories, tmp_path) -> list[tuple[int, dict]]:
    """The six plain uploads of two rounds, by device index, after checking that no text
    is in any request (`assert_no_text`, `assert_plain_bodies`)."""
    puts = [r for r in sent if r["method"] == "PUT"]
    assert len(puts) == 6
    assert_no_text(sent, relay, histories, tmp_path)
    assert_plain_bodies(sent)
    token_of = {d.client._identity["token"]: i for i, d in enumerate(devices)}
    return [(token_of[put["headers"]["authorization"].removeprefix("Bearer ")], put)
            for put in puts]


def retrained_delta(server, devices: list[DeviceRuntime], i: int,
                    version: int) -> tuple[dict[str, np.ndarray], str, int]:
    """Device i's training from model `version`, redone here from the server's own copy
    (the device's NumPy runtime, its seed and sample): (the delta, the model's sha256,
    the messages trained on)."""
    tokenizer = WordTokenizer.from_json(requests.get(server.url + "/v1/tokenizer").text)
    global_bytes = requests.get(f"{server.url}/v1/models/{version}").content
    global_tensors, _ = tensors_from_bytes(global_bytes)
    weights, meta = weights_from_bytes(global_bytes)
    model = NumpyLSTM(weights, meta.config)
    kept = sample_messages(devices[i].history.messages(), ROUNDS["train_max_examples"], i)
    train(model, tokenizer.encode_messages(kept),
          TrainConfig(epochs=ROUNDS["train_epochs"], batch_size=ROUNDS["train_batch_size"],
                      lr=ROUNDS["train_lr"], optimizer=ROUNDS["train_optimizer"], seed=i,
                      threads=1))
    trained = model.weights
    delta = {k: trained[k] - global_tensors[k] for k in sorted(global_tensors)}
    return delta, hashlib.sha256(global_bytes).hexdigest(), len(kept)


def test_no_raw_text_leaves_and_updates_are_exactly_privatized(start_server, tmp_path,
                                                              histories):
    server, relay, devices, sent, _ = two_rounds_recorded(start_server, ROUNDS, tmp_path,
                                                          histories)
    kinds = {(r["method"], r["path"].split("/")[2]) for r in sent}
    assert {("POST", "devices"), ("GET", "model"), ("GET", "tokenizer"), ("POST", "checkin"),
            ("PUT", "rounds")} <= kinds
    # 1. No text: no 3-word run of any message, no secret, in any view of any request.
    puts = textless_uploads(sent, relay, devices, histories, tmp_path)

    # 2. The tensors are exactly the clipped, noised difference, recomputed here from the
    #    server's own copy of each round's model and the round settings.
    rngs = {i: np.random.default_rng(100 + i) for i in range(3)}
    stddev = ROUNDS["noise_multiplier"] * ROUNDS["clip_norm"]  # plain: the full z*C on the device
    for i, put in puts:
        update = decode_update(put["body"], server.shapes)
        delta, _, examples = retrained_delta(server, devices, i, update.model_version)
        expected, prenorm = privatize(delta, ROUNDS["clip_norm"], stddev, rngs[i])
        for name in expected:
            np.testing.assert_array_equal(update.tensors[name], expected[name])
        clipped, _ = clip(delta, ROUNDS["clip_norm"])
        assert prenorm > ROUNDS["clip_norm"] >= l2_norm(clipped)  # clipping did bite
        noise = np.concatenate([(update.tensors[k] - clipped[k]).ravel() for k in clipped])
        assert noise.std() == pytest.approx(stddev, rel=0.05)
        assert examples > 1  # with DP, how much the person typed stays on the device
        assert update.num_examples == 1 and update.metrics == {}


def test_compressed_uploads_carry_no_text_and_are_exactly_the_codec_output(
        start_server, tmp_path, histories):
    """Plain rounds with compression on: no text in any byte, and each upload is exactly
    the clipped difference through the codec with the device's integer noise, requantized
    (the plain form: step and values, deflated)."""
    server, relay, devices, sent, _ = two_rounds_recorded(
        start_server, {**ROUNDS, "compression": "ddg16"}, tmp_path, histories)
    puts = textless_uploads(sent, relay, devices, histories, tmp_path)
    rngs = {i: np.random.default_rng(100 + i) for i in range(3)}
    dimension = sum(math.prod(shape) for shape in server.shapes.values())
    for i, put in puts:
        round_id = int(put["path"].split("/")[3])
        version = int(json.loads(put["body"][8:8 + int.from_bytes(put["body"][:8], "little")])[
            "__metadata__"]["model_version"])
        delta, sha, _ = retrained_delta(server, devices, i, version)
        spec = privacy.round_compression(round_seed(round_id, sha), dimension,
                                         ROUNDS["clip_norm"], ROUNDS["noise_multiplier"],
                                         ROUNDS["min_reports"], 3, secure=False)
        update, step = decode_compressed_update(put["body"], spec.kept, spec.seed,
                                                spec.levels, 2 ** 62)
        assert set(update.tensors) == {"values"} and update.metrics == {}
        assert len(put["body"]) <= spec.kept // 2 + 512  # < 4 bits a value and a short header
        clipped, _ = clip(delta, ROUNDS["clip_norm"])
        sigma = spec.noise_sigma(ROUNDS["noise_multiplier"], 1)  # plain: all of z*Delta here
        expected = spec.encode_plain(flatten(clipped, server.shapes), sigma, rngs[i])
        assert step == expected[0]
        np.testing.assert_array_equal(update.tensors["values"], expected[1])


@pytest.mark.parametrize("compression", ["none", "ddg16"])
def test_no_raw_text_leaves_in_any_phase_of_a_secure_round(start_server, tmp_path, histories,
                                                           compression):
    """The same devices and relay, in two secure rounds: every message of every phase is
    recorded and searched the same way, and each is exactly a protocol message (16-bit
    words with compression on)."""
    server, relay, devices, sent, st = two_rounds_recorded(
        start_server, {**SECURE_ROUNDS, "compression": compression}, tmp_path, histories)
    assert all(r["secure_aggregation"] for r in st["rounds"] if r["state"] == "closed")
    secagg = [r for r in sent if "/secagg/" in r["path"]]
    steps = [(r["method"], r["path"].rsplit("/", 1)[1]) for r in secagg]
    for step in ("advertise", "shares", "consistency", "unmask"):  # 3 devices, 2 rounds each
        assert steps.count(("POST", step)) == 6, steps
    assert steps.count(("PUT", "masked")) == 6
    assert {("GET", s) for s in ("keys", "shares", "consistency", "unmask")} <= set(steps)
    assert not [r for r in sent if r["path"].endswith("/update")]  # never a plain update

    # 1. No text, in any view of any request of any phase.
    assert_no_text(sent, relay, histories, tmp_path)
    assert_plain_bodies(sent)

    # 2. Each phase's message is exactly a protocol message: the strict parser takes it
    #    (fixed fields: ids and fixed-length binary), and the masked update's safetensors
    #    metadata names only its format, round and client.
    for request in secagg:
        step = request["path"].rsplit("/", 1)[1]
        if request["method"] == "POST":
            message = message_from_json(request["body"])
            assert message.TYPE == SECAGG_MESSAGES[step], request["raw"][:300]
            assert json.loads(request["body"]) == message.to_dict()  # nothing else in it
        elif request["method"] == "PUT":
            size = int.from_bytes(request["body"][:8], "little")
            header = json.loads(request["body"][8:8 + size])
            assert set(header) == {"masked", "__metadata__"}
            assert (header["masked"]["dtype"] == "U16") == (compression == "ddg16")
            assert set(header["__metadata__"]) == {"format", "round_id", "client_id"}


def test_evaluation_reports_carry_no_text_and_are_exactly_the_noised_sums(
        start_server, tmp_path, histories):
    """An evaluation round (version 0 first, evaluate_every = 1) through the relay: no
    text in any byte, and each report is exactly the seven clipped, noised sums of the
    device's own scoring of the round's model on its messages, nothing else."""
    torch.set_num_threads(1)
    max_words = 60
    server = start_server(round={**ROUNDS, "evaluate_every": 1, "eval_max_words": max_words})
    relay = RecordingRelay(int(server.url.rsplit(":", 1)[1]))
    devices = devices_behind(relay, server, tmp_path, histories)
    try:
        for device in devices:  # one at a time: the round closes at its third report
            assert device.run_once().outcome == "evaluated"
        server.wait_for(lambda st: st["evaluation"]["quality"], what="the evaluation closed")
    finally:
        relay.close()
    sent = [r for stream in relay.streams for r in parse_requests(bytes(stream))]
    reports = [r for r in sent if r["method"] == "PUT"]
    assert [r["path"].rsplit("/", 1)[1] for r in reports] == ["evaluation"] * 3
    assert_no_text(sent, relay, histories, tmp_path)
    assert_plain_bodies(sent)
    tokenizer = DeviceTokenizer.from_json(requests.get(server.url + "/v1/tokenizer").text)
    model = requests.get(f"{server.url}/v1/models/0").content
    stddev = ROUNDS["noise_multiplier"] * ROUNDS["clip_norm"]  # plain: the full z*C here
    token_of = {d.client._identity["token"]: i for i, d in enumerate(devices)}
    for put in reports:
        i = token_of[put["headers"]["authorization"].removeprefix("Bearer ")]
        body = json.loads(put["body"])
        assert set(body) == {"sums"}
        chosen = fed_eval.select_messages(devices[i].history.messages(), max_words)
        sums = score(model, tokenizer, chosen)
        expected = fed_eval.to_wire([sums], max_words, ROUNDS["clip_norm"], stddev,
                                    np.random.default_rng(100 + i))
        assert body["sums"] == expected
