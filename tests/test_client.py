"""The sync client against a real HTTP server on loopback that fails, then recovers."""
import hashlib
import json
import os
import socket
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from federated import identity
from federated.protocol import NoTask, Receipt
from keyboard_app.client import ServerRejected, ServerUnavailable, SyncClient, make_retry
from model.checkpoint import CheckpointMeta, model_to_bytes
from model.config import ModelConfig
from model.lstm import NextWordLSTM

CONFIG = ModelConfig(vocab_size=20, embed_dim=4, hidden_size=8)
MODEL = model_to_bytes(NextWordLSTM(CONFIG), CheckpointMeta(CONFIG, "0" * 64, version=4))
ETAG = f'"{hashlib.sha256(MODEL).hexdigest()}"'
CODE = "pk-operator-code"


class FlakyServer:
    """Answers per the contract, after failing the first `failures[(method, path)]` times."""

    def __init__(self) -> None:
        self.failures: dict[tuple[str, str], int] = {}
        self.requests: list[dict] = []
        self.model, self.etag = MODEL, ETAG
        self.tokens: set[str] = set()
        self.keys: dict[str, str] = {}  # identity key -> device id
        self.challenges: dict[str, str] = {}  # challenge -> identity key
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body=b"", headers=None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                server.requests.append({"method": self.command, "path": self.path,
                                        "headers": dict(self.headers), "body": body})
                key = (self.command, self.path)
                if server.failures.get(key, 0) > 0:
                    server.failures[key] -= 1
                    return self._reply(503, b'{"error": "unavailable", "message": "busy"}')
                self._reply(*server.answer(self.command, self.path, self.headers, body))

            do_GET = do_POST = do_PUT = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def answer(self, method, path, headers, body):
        js = lambda status, obj: (status, json.dumps(obj).encode())  # noqa: E731
        if method == "POST" and path.startswith("/v1/devices"):
            return self.enrolment(path, json.loads(body), js)
        if path.startswith("/v1/") and path != "/v1/model" and method != "GET" and \
                headers.get("Authorization", "").removeprefix("Bearer ") not in self.tokens:
            return js(401, {"error": "unauthorized", "message": "unknown device token"})
        if (method, path) == ("GET", "/v1/model"):
            if headers.get("If-None-Match") == self.etag:
                return 304, b"", {"ETag": self.etag}
            return 200, self.model, {"ETag": self.etag, "X-Model-Version": "4"}
        if (method, path) == ("POST", "/v1/checkin"):
            request = json.loads(body)
            if set(request) != {"model_version", "kinds"}:  # nothing about the history
                return js(400, {"error": "bad_field", "message": "only model_version, kinds"})
            return js(200, {"task": None, "retry_after": 12.5, "reason": "no round open"})
        if (method, path) == ("PUT", "/v1/rounds/3/update"):
            return js(202, {"accepted": True, "round_id": 3, "reports": 1})
        return js(404, {"error": "not_found", "message": path})

    def enrolment(self, path, request, js):
        """Enrolment with CODE, and token recovery by signing a challenge."""
        key = request.get("identity_key")
        if path == "/v1/devices":
            if request.get("enrolment_code") != CODE:
                return js(403, {"error": "bad_enrolment_code", "message": "unknown code"})
            self.keys[key] = f"dev{len(self.keys) + 1}"
            return js(201, {"device_id": self.keys[key], "token": self.new_token()})
        if key not in self.keys:
            return js(404, {"error": "unknown_identity", "message": "enrol with a code"})
        if path == "/v1/devices/challenge":
            challenge = f"challenge-{len(self.challenges)}"
            self.challenges[challenge] = key
            return js(201, {"challenge": challenge, "expires_at": 0})
        challenge = request.get("challenge")
        identity.verify(self.challenges.pop(challenge), identity.RECOVERY_CONTEXT,
                        challenge.encode(), request.get("signature"))
        return js(200, {"device_id": self.keys[key], "token": self.new_token()})

    def new_token(self):
        token = f"token-{len(self.tokens)}"
        self.tokens.add(token)
        return token

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FlakyServer()
    yield s
    s.close()


def client_for(server_url, tmp_path, **kwargs):
    return SyncClient(server_url, tmp_path / "device", retry=make_retry(backoff=0.01),
                      **{"enrolment_code": CODE, **kwargs})


def test_get_retries_through_two_503s(server, tmp_path):
    server.failures[("GET", "/v1/model")] = 2
    blob = client_for(server.url, tmp_path).model()
    assert blob.data == MODEL and blob.version == 4
    assert [r["path"] for r in server.requests] == ["/v1/model"] * 3


def test_etag_cache_avoids_downloading_again(server, tmp_path):
    client = client_for(server.url, tmp_path)
    client.model()
    again = client_for(server.url, tmp_path).model()  # a restarted app
    assert again.data == MODEL
    assert server.requests[-1]["headers"]["If-None-Match"] == ETAG
    assert (tmp_path / "device" / "cache" / "model.safetensors").read_bytes() == MODEL


def test_upload_retries_with_the_same_idempotency_key(server, tmp_path):
    server.failures[("PUT", "/v1/rounds/3/update")] = 2
    client = client_for(server.url, tmp_path)
    assert client.upload(3, b"update-bytes", "key-123") == Receipt(round_id=3, reports=1)
    puts = [r for r in server.requests if r["method"] == "PUT"]
    assert len(puts) == 3
    assert {r["headers"]["Idempotency-Key"] for r in puts} == {"key-123"}
    assert {r["body"] for r in puts} == {b"update-bytes"}


def test_non_idempotent_post_is_not_retried_on_503(server, tmp_path):
    client = client_for(server.url, tmp_path)
    server.failures[("POST", "/v1/devices")] = 1
    with pytest.raises(ServerUnavailable, match="503"):
        client.enrol()  # a second enrolment would make a second device
    assert sum(r["path"] == "/v1/devices" for r in server.requests) == 1
    assert client.enrol()  # it recovered


def test_checkin_carries_an_idempotency_key_and_is_retried_on_503(server, tmp_path):
    client = client_for(server.url, tmp_path)
    client.enrol()
    server.failures[("POST", "/v1/checkin")] = 2
    assert client.checkin() == NoTask("no round open", 12.5)
    posts = [r for r in server.requests if r["path"] == "/v1/checkin"]
    assert len(posts) == 3 and len({r["headers"]["Idempotency-Key"] for r in posts}) == 1


def test_persistent_failure_is_server_unavailable(server, tmp_path):
    server.failures[("GET", "/v1/model")] = 100
    with pytest.raises(ServerUnavailable, match="503 after retries"):
        client_for(server.url, tmp_path).model()
    assert len(server.requests) == 5  # the first try and 4 retries


def test_unreachable_server_keeps_the_cached_model(server, tmp_path):
    client_for(server.url, tmp_path).model()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    offline = client_for(dead, tmp_path)
    with pytest.raises(ServerUnavailable, match="unreachable"):
        offline.model()
    assert offline.cached_model().data == MODEL


def test_token_is_private_and_reused(server, tmp_path):
    client = client_for(server.url, tmp_path)
    device_id = client.enrol()
    path = tmp_path / "device" / "device.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "device").st_mode) == 0o700
    again = client_for(server.url, tmp_path)
    assert again.enrol() == device_id
    assert sum(r["path"] == "/v1/devices" for r in server.requests) == 1
    again.checkin(4)
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer token-0"


def test_lost_token_is_recovered_with_the_identity_key(server, tmp_path):
    client = client_for(server.url, tmp_path)
    device_id = client.enrol()
    server.tokens.clear()  # the server forgot the token (it still knows the identity key)
    assert isinstance(client.checkin(), NoTask)
    assert [r["path"] for r in server.requests] == [
        "/v1/devices", "/v1/checkin", "/v1/devices/challenge", "/v1/devices/recover",
        "/v1/checkin"]
    assert client.device_id == device_id and len(server.keys) == 1  # no new identity
    key = tmp_path / "device" / "identity_key.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_a_device_that_lost_its_token_file_recovers_instead_of_enrolling(server, tmp_path):
    device_id = client_for(server.url, tmp_path).enrol()
    (tmp_path / "device" / "device.json").unlink()
    again = client_for(server.url, tmp_path, enrolment_code=None)  # no code needed
    assert again.enrol() == device_id
    assert [r["path"] for r in server.requests][-2:] == ["/v1/devices/challenge",
                                                         "/v1/devices/recover"]


def test_enrolling_without_a_code_says_where_to_get_one(server, tmp_path):
    with pytest.raises(ServerRejected, match="enrolment code from its operator") as info:
        client_for(server.url, tmp_path, enrolment_code=None).enrol()
    assert info.value.code == "enrolment_code_required"
    assert [r["path"] for r in server.requests] == ["/v1/devices/challenge"]  # not enrolled
    with pytest.raises(ServerRejected, match="403 bad_enrolment_code"):
        client_for(server.url, tmp_path, enrolment_code="wrong").enrol()


def test_rejections_carry_the_server_message(server, tmp_path):
    client = client_for(server.url, tmp_path)
    with pytest.raises(ServerRejected) as info:
        client.upload(99, b"x")
    assert (info.value.status, info.value.code) == (404, "not_found")
    with pytest.raises(ServerRejected, match="404 not_found"):
        client.model(version=12)


def test_corrupted_download_is_refused(server, tmp_path):
    server.model = MODEL[:-4] + b"\x00\x00\x00\x01"  # not what the ETag promises
    with pytest.raises(ServerUnavailable, match="corrupted"):
        client_for(server.url, tmp_path).model()
    assert not (tmp_path / "device" / "cache" / "model.safetensors").exists()


def test_retry_policy_has_backoff_and_jitter():
    retry = make_retry()
    assert retry.backoff_factor > 0 and retry.backoff_jitter > 0
    assert "POST" not in retry.allowed_methods and "PUT" in retry.allowed_methods
