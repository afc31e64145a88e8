"""The device's HTTP client for the aggregation server (the contract in the server's OpenAPI).

A `requests` session with timeouts; urllib3 `Retry` with exponential back-off and jitter
for idempotent calls (GET, the PUT upload, which an Idempotency-Key makes idempotent, and
the check-in, which carries one too: a retried check-in gets the device's task again);
connection failures are retried for every call since nothing reached the server. 507
(the server's disk is full) counts as unavailable: keep the update, try later. The
global model and tokenizer are cached in the data directory and revalidated with ETags;
the device token lives there too, readable by the owner only (0600), and so does the
device's Ed25519 identity key (`identity_key.pem`), generated on first use. Enrolling needs
an enrolment code from the server's operator; the identity key it binds lets the device
get a new token after a 401 (sign the server's challenge) and keep its device id, its
participation count and its privacy spend: it never enrols a fresh identity by itself.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from device_model.checkpoint import CheckpointError, read_metadata
from device_model.files import write_atomic
from federated import identity
from federated.protocol import (API_PREFIX, CHALLENGE, CHECKIN, COMPACT, ENROL, EVALUATION,
                                MODEL, MODEL_VERSION, RECOVER, SECAGG, STATUS, TASK_KINDS,
                                TOKENIZER, UPDATE, Checkin, Receipt, SecAggReceipt,
                                checkin_from_json, path)

USER_AGENT = "private-keyboard-device/1"
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024
RETRY_STATUS = (429, 500, 502, 503, 504)
LATER_STATUS = (*RETRY_STATUS, 507)  # not now: the request was fine, the server was not
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT"})


class SyncError(Exception):
    """Talking to the server failed."""


class ServerUnavailable(SyncError):
    """The server cannot be reached or keeps failing: keep using the cached model, try later."""


class ServerRejected(SyncError):
    """The server answered 4xx: the request was wrong or not allowed (not worth retrying)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message
        super().__init__(f"{status} {code}: {message}")


@dataclass(frozen=True)
class ModelBlob:
    """A global model checkpoint as downloaded: its bytes, version and sha256."""

    data: bytes
    version: int
    sha256: str


def make_retry(retries: int = 4, backoff: float = 0.5, backoff_max: float = 30.0) -> Retry:
    """Exponential back-off with jitter; status retries only for idempotent methods."""
    return Retry(total=retries, connect=retries, read=retries, status=retries,
                 backoff_factor=backoff, backoff_jitter=backoff, backoff_max=backoff_max,
                 status_forcelist=RETRY_STATUS, allowed_methods=IDEMPOTENT,
                 raise_on_status=False, respect_retry_after_header=True)


def _number_or(value: object, default: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and value == value else default


def _etag_hex(etag: str | None) -> str | None:
    value = (etag or "").removeprefix("W/").strip('"').lower()
    return value if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else None


class SyncClient:
    """Enrolment, model and tokenizer downloads, check-ins and uploads for one device.

    `data_dir` holds the device token and identity key; `cache_dir` (default
    `data_dir/cache`) the model and tokenizer, and may be shared by many simulated devices.
    `enrolment_code`: the operator's code, needed only to enrol the first time.
    """

    def __init__(self, server_url: str, data_dir: str | Path, *,
                 cache_dir: str | Path | None = None, timeout: tuple[float, float] = (3.05, 30),
                 retry: Retry | None = None, session: requests.Session | None = None,
                 enrolment_code: str | None = None) -> None:
        self.base = server_url.rstrip("/")
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else self.data_dir / "cache"
        if not self.data_dir.exists():  # private when we create it; never chmod a user's dir
            self.data_dir.mkdir(mode=0o700, parents=True)
        self.timeout = timeout
        self.session = session or requests.Session()
        retry = retry or make_retry()
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.mount(self.base + API_PREFIX + CHECKIN, HTTPAdapter(
            max_retries=retry.new(allowed_methods=IDEMPOTENT | {"POST"})))
        self.session.headers["User-Agent"] = USER_AGENT
        self.token_path = self.data_dir / "device.json"
        self.key_path = self.data_dir / "identity_key.pem"
        self.enrolment_code = enrolment_code
        self._identity = self._load_identity()
        self._key: identity.Ed25519PrivateKey | None = None
        self._key_is_new = False  # generated by this process: no server can know it yet

    # --- identity -------------------------------------------------------------
    def _load_identity(self) -> dict | None:
        try:
            identity = json.loads(self.token_path.read_text())
        except (OSError, ValueError):
            return None
        return identity if identity.get("server") == self.base else None

    @property
    def device_id(self) -> str | None:
        return self._identity["device_id"] if self._identity else None

    @property
    def identity_key(self) -> identity.Ed25519PrivateKey:
        """This device's Ed25519 identity key (made and stored, 0600, on first use)."""
        if self._key is None:
            try:
                self._key = identity.load_private_key(self.key_path.read_bytes())
            except FileNotFoundError:
                key = identity.new_key()
                write_atomic(self.key_path, identity.private_key_bytes(key))
                self._key, self._key_is_new = key, True
        return self._key

    def enrol(self) -> str:
        """This device's id with this server: the saved token, else the token recovered
        with the identity key, else a new enrolment with the operator's code."""
        if self._identity:
            return self._identity["device_id"]
        key = identity.public_key_text(self.identity_key)
        if not self._key_is_new or not self.enrolment_code:  # lost its token? (and without
            try:  # a code, this also tells an unreachable server from a refusal)
                return self.recover()
            except ServerRejected as err:
                if err.code != "unknown_identity":
                    raise
        if not self.enrolment_code:
            raise ServerRejected(401, "enrolment_code_required",
                                 "this server needs an enrolment code from its operator to "
                                 "join: enter it in Settings (or pass --enrolment-code)")
        return self._save_token(self._json(self._request("POST", ENROL, json={
            "enrolment_code": self.enrolment_code, "identity_key": key}), 201))

    def recover(self) -> str:
        """A new token for this device's identity: sign the server's challenge with the
        identity key. Keeps the device id (and what the server counts against it)."""
        key = identity.public_key_text(self.identity_key)
        challenge = self._json(self._request("POST", CHALLENGE,
                                             json={"identity_key": key}), 201).get("challenge")
        if not isinstance(challenge, str):
            raise ServerRejected(201, "bad_response", "challenge answer lacks 'challenge'")
        signature = identity.sign(self.identity_key, identity.RECOVERY_CONTEXT,
                                  challenge.encode())
        return self._save_token(self._json(self._request("POST", RECOVER, json={
            "identity_key": key, "challenge": challenge, "signature": signature}), 200))

    def _save_token(self, body: dict) -> str:
        if not isinstance(body.get("device_id"), str) or not isinstance(body.get("token"), str):
            raise ServerRejected(201, "bad_response", "enrolment answer lacks device_id/token")
        self._identity = {"server": self.base, "device_id": body["device_id"],
                          "token": body["token"]}
        write_atomic(self.token_path, json.dumps(self._identity).encode())
        self._key_is_new = False  # bound to a device now
        return body["device_id"]

    # --- downloads with ETag caching ----------------------------------------------
    def tokenizer_json(self) -> str:
        """The server's tokenizer.json text, revalidated against the cached copy."""
        path = self.cache_dir / "tokenizer.cache.json"
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = None
        headers = {"If-None-Match": cached["etag"]} if cached and cached.get("etag") else {}
        response = self._request("GET", TOKENIZER, headers=headers)
        if response.status_code == 304 and cached:
            return cached["text"]
        self._check(response, 200)
        text = response.content.decode("utf-8")
        write_atomic(path, json.dumps({"etag": response.headers.get("ETag"),
                                        "text": text}).encode("utf-8"))
        return text

    def cached_tokenizer_json(self) -> str | None:
        """The cached tokenizer text, for working offline."""
        try:
            return json.loads((self.cache_dir / "tokenizer.cache.json").read_text())["text"]
        except (OSError, ValueError, KeyError):
            return None

    def cached_model(self) -> ModelBlob | None:
        """The last downloaded global model, for working offline (None if none or corrupt)."""
        try:
            data = (self.cache_dir / "model.safetensors").read_bytes()
            version = int(read_metadata(data)["version"])
        except (OSError, CheckpointError, KeyError, ValueError):
            return None
        return ModelBlob(data, version, hashlib.sha256(data).hexdigest())

    def model(self, version: int | None = None, keep: bool = True,
              compact: bool = False) -> ModelBlob:
        """The latest global model (or a given version), from cache when the ETag matches;
        `keep=False`: do not make it the cached model (an older version to evaluate);
        `compact`: its int8 form (27% of the bytes), checked against its sha256 the same way."""
        cached = self.cached_model()
        if cached and version is not None and cached.version != version:
            cached = None
        headers = {"If-None-Match": f'"{cached.sha256}"'} if cached else {}
        where = (MODEL if version is None else path(MODEL_VERSION, version=version)) + \
            (COMPACT if compact else "")
        response = self._request("GET", where, headers=headers)
        if response.status_code == 304 and cached:
            return cached
        self._check(response, 200)
        data = response.content
        sha = hashlib.sha256(data).hexdigest()
        expected = _etag_hex(response.headers.get("ETag"))
        if expected and expected != sha:
            raise ServerUnavailable(f"model download corrupted: sha256 {sha[:12]} but ETag "
                                    f"{expected[:12]}")
        try:
            got_version = int(read_metadata(data)["version"])
        except (CheckpointError, KeyError, ValueError) as err:
            raise ServerRejected(200, "bad_model", f"not a model checkpoint: {err}") from None
        if keep:
            write_atomic(self.cache_dir / "model.safetensors", data)
        return ModelBlob(data, got_version, sha)

    # --- device calls --------------------------------------------------------------
    def checkin(self, model_version: int | None = None,
                kinds: tuple[str, ...] = TASK_KINDS) -> Checkin:
        """Ask for a task: a Task, or a NoTask saying when to come back and why (WireError
        if the answer is neither). Says nothing about the device's history: the device
        checks the task's minimum. `kinds`: the task kinds this device takes (training,
        evaluation)."""
        return checkin_from_json(self._json(self._device("POST", CHECKIN, json={
            "model_version": model_version, "kinds": list(kinds)},
            headers={"Idempotency-Key": str(uuid.uuid4())}), 200))

    def report_evaluation(self, round_id: int, body: dict,
                          idempotency_key: str | None = None) -> Receipt:
        """PUT an evaluation report (JSON); retried safely thanks to the Idempotency-Key."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return Receipt.from_json(self._json(self._device(
            "PUT", path(EVALUATION, round_id=round_id), json=body, headers=headers), 202))

    def upload(self, round_id: int, body: bytes, idempotency_key: str | None = None
               ) -> Receipt:
        """PUT an encoded update; retried safely thanks to the Idempotency-Key."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4()),
                   "Content-Type": "application/octet-stream"}
        return Receipt.from_json(self._json(self._device(
            "PUT", path(UPDATE, round_id=round_id), data=body, headers=headers), 202))

    def secagg_send(self, round_id: int, step: str, *, message: dict | None = None,
                    masked: bytes | None = None) -> SecAggReceipt:
        """POST a secure-aggregation message (JSON) to /rounds/<id>/secagg/<step>, or PUT
        the masked input (bytes) to .../masked; the 202 answer (WireError if it is not
        one)."""
        where = f"{path(SECAGG, round_id=round_id)}/{step}"
        if masked is not None:
            response = self._device("PUT", where, data=masked,
                                    headers={"Content-Type": "application/octet-stream"})
        else:
            response = self._device("POST", where, json=message)
        return SecAggReceipt.from_json(self._json(response, 202))

    def secagg_fetch(self, round_id: int, step: str) -> tuple[dict | None, float]:
        """GET what the server relays for a phase: (relay, 0) once the phase closed, or
        (None, seconds to wait) while it is open."""
        response = self._device("GET", f"{path(SECAGG, round_id=round_id)}/{step}")
        if response.status_code == 202:
            wait = _number_or(self._json(response, 202).get("retry_after"), 1.0)
            return None, min(max(wait, 0.1), 60.0)
        return self._json(response, 200), 0.0

    def status(self) -> dict:
        """The server's public status (round, participants, epsilon...)."""
        return self._json(self._request("GET", STATUS), 200)

    def close(self) -> None:
        self.session.close()

    # --- plumbing ------------------------------------------------------------------
    def _device(self, method: str, path: str, **kwargs) -> requests.Response:
        """A call with the device token; after a 401 the token is recovered with the
        identity key (same device id) and the call made once more."""
        self.enrol()
        for attempt in (0, 1):
            headers = {**kwargs.pop("headers", {}),
                       "Authorization": f"Bearer {self._identity['token']}"}
            kwargs["headers"] = headers
            response = self._request(method, path, **kwargs)
            if response.status_code != 401 or attempt:
                return response
            self._identity = None
            self.token_path.unlink(missing_ok=True)
            self.enrol()  # recovers with the key; a code only if the server never knew it
        return response

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        url = self.base + API_PREFIX + path
        try:
            response = self.session.request(method, url, timeout=self.timeout, stream=True,
                                            **kwargs)
            length = int(response.headers.get("Content-Length") or 0)
            if length > MAX_DOWNLOAD_BYTES:
                response.close()
                raise ServerRejected(response.status_code, "too_large",
                                     f"{method} {path} answer of {length} bytes is too large")
            response.content  # read the body within the timeout
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                requests.exceptions.ChunkedEncodingError) as err:
            raise ServerUnavailable(f"{method} {url}: server unreachable ({type(err).__name__})"
                                    ) from None
        if response.status_code in LATER_STATUS:
            raise ServerUnavailable(f"{method} {url}: {response.status_code} after retries")
        return response

    @staticmethod
    def _check(response: requests.Response, expected: int) -> None:
        if response.status_code == expected:
            return
        try:
            body = response.json()
            code, message = str(body.get("error")), str(body.get("message"))
        except ValueError:
            code, message = "http_error", response.text[:200]
        raise ServerRejected(response.status_code, code, message)

    def _json(self, response: requests.Response, expected: int) -> dict:
        self._check(response, expected)
        try:
            body = response.json()
        except ValueError:
            raise ServerRejected(response.status_code, "bad_response",
                                 "answer is not JSON") from None
        if not isinstance(body, dict):
            raise ServerRejected(response.status_code, "bad_response", "answer is not an object")
        return body
