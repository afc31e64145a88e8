"""The `/v1` HTTP API: devices, models, rounds, status and admin (one blueprint each)."""
from __future__ import annotations

import hmac
import re
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, send_file

from aggregation_server import compressed, evaluation
from aggregation_server.config import ConfigError
from aggregation_server.db import ModelVersion
from aggregation_server.enrolment import MAX_CODE_USES
from aggregation_server.errors import ApiError
from aggregation_server.openapi import openapi_document
from aggregation_server.rounds import RoundService
from aggregation_server.status import build_status
from federated.protocol import (ADMIN, API_PREFIX, CHALLENGE, CHECKIN, COMPACT, ENROL,
                                EVALUATION, MODEL, MODEL_VERSION, OPENAPI, RECOVER, STATUS,
                                TOKENIZER, UPDATE, checkin_to_json, flask_rule)

devices = Blueprint("devices", __name__, url_prefix=API_PREFIX)
models = Blueprint("models", __name__, url_prefix=API_PREFIX)
rounds = Blueprint("rounds", __name__, url_prefix=API_PREFIX)
admin = Blueprint("admin", __name__, url_prefix=API_PREFIX + ADMIN)
BLUEPRINTS = (devices, models, rounds, admin)
KEY_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,200}")
MAX_REPORT_BYTES = 4096  # two versions' seven numbers in JSON take about 400


def service() -> RoundService:
    return current_app.extensions["pk.service"]


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def device_id() -> str:
    """The calling device, from its bearer token, or 401."""
    token = _bearer()
    if token is None:
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <device token>'")
    found = service().device_for_token(token)
    if found is None:
        raise ApiError(401, "unauthorized", "unknown device token")
    return found


def require_admin() -> None:
    token = _bearer()
    if token is None:
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <admin token>'")
    if not hmac.compare_digest(token.encode(), current_app.extensions["pk.admin"].encode()):
        raise ApiError(403, "forbidden", "this is not the admin token")


def json_object() -> dict[str, Any]:
    """The request body as a JSON object, or a 4xx saying why not."""
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return data


def _int_field(data: dict, key: str, required: bool) -> int | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise ApiError(400, "bad_field", f"'{key}' must be an integer in [0, 2^31)"
                       + ("" if required else " or null"))
    return value


def _send_version(version: ModelVersion, compact: bool = False) -> Response:
    """The version's float32 file, or (`compact`) its int8 form, with its sha256 as ETag."""
    if not service().blobs.exists(version.path):
        raise ApiError(410, "version_removed", f"model version {version.version} was removed "
                       f"(the server keeps the latest {service().settings.keep_versions}); "
                       "download /v1/model")
    path, sha, name = service().blobs.abs(version.path), version.sha256, "safetensors"
    if compact:
        (path, sha), name = compressed.compact_model(service().blobs, version), "int8.safetensors"
    response = send_file(path, mimetype="application/octet-stream",
                         etag=sha, conditional=True, max_age=0,
                         download_name=f"model-{version.version}.{name}")
    response.headers["X-Model-Version"] = str(version.version)
    return response


def _fields(data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(400, "bad_field", f"unknown field(s) {unknown}")


@devices.post(ENROL)
def enrol():
    """Enrol with an operator's code, binding the device's identity key (rate-limited)."""
    service().enrolment.check_rate(request.remote_addr or "", "enrolment")
    data = json_object()
    _fields(data, {"enrolment_code", "identity_key"})
    return jsonify(service().enrolment.enrol(data.get("enrolment_code"),
                                             data.get("identity_key"))), 201


@devices.post(CHALLENGE)
def recovery_challenge():
    """A challenge the device bound to `identity_key` signs to get a new token."""
    service().enrolment.check_rate(request.remote_addr or "", "enrolment")
    data = json_object()
    _fields(data, {"identity_key"})
    return jsonify(service().enrolment.challenge(data.get("identity_key"))), 201


@devices.post(RECOVER)
def recover_token():
    """A new token for the device whose identity key signed the challenge."""
    service().enrolment.check_rate(request.remote_addr or "", "enrolment")
    data = json_object()
    _fields(data, {"identity_key", "challenge", "signature"})
    return jsonify(service().enrolment.recover(data.get("identity_key"), data.get("challenge"),
                                               data.get("signature")))


@devices.post(CHECKIN)
def checkin():
    device = device_id()
    data = json_object()
    if "num_examples" in data:
        raise ApiError(400, "bad_field", "check-in takes no 'num_examples': the device keeps "
                                         "its history size to itself and compares it with the "
                                         "task's 'min_examples'")
    _fields(data, {"model_version", "kinds"})
    _int_field(data, "model_version", required=False)
    kinds = evaluation.parse_kinds(data)
    key = request.headers.get("Idempotency-Key")  # optional: a retry gets the task again
    if key is not None and not KEY_PATTERN.fullmatch(key):
        raise ApiError(400, "bad_idempotency_key", "an 'Idempotency-Key' header must be 1-200 "
                                                   "letters, digits or ._:- (a UUID)")
    return jsonify(checkin_to_json(service().checkin(device, kinds)))


def idempotency_key() -> str:
    """The request's Idempotency-Key header, or 400."""
    key = request.headers.get("Idempotency-Key", "")
    if not KEY_PATTERN.fullmatch(key):
        raise ApiError(400, "bad_idempotency_key", "send an 'Idempotency-Key' header of 1-200 "
                                                   "letters, digits or ._:- (a UUID)")
    return key


@rounds.put(flask_rule(UPDATE))
def upload(round_id: int):
    device = device_id()
    key = idempotency_key()
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"update of {request.content_length} bytes is over "
                                         f"the {limit}-byte limit")
    metrics = service().metrics.updates
    try:
        answer = service().submit(device, round_id, key, request.get_data(cache=False))
    except ApiError as err:
        metrics.labels(err.code).inc()
        raise
    metrics.labels("accepted").inc()
    return jsonify(answer.to_json()), 202


@rounds.put(flask_rule(EVALUATION))
def evaluation_report(round_id: int):
    """An evaluation round's report: clipped, noised sums per model version (JSON)."""
    device, key = device_id(), idempotency_key()
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the report as application/json")
    declared = request.content_length or 0  # chunked bodies are read, then measured
    body = request.get_data(cache=False) if declared <= MAX_REPORT_BYTES else b""
    if max(declared, len(body)) > MAX_REPORT_BYTES:
        raise ApiError(413, "too_large", f"an evaluation report is at most {MAX_REPORT_BYTES} "
                                         "bytes")
    answer = service().submit(device, round_id, key, body, via="evaluation")
    return jsonify(answer.to_json()), 202


@rounds.get(STATUS)
def status():
    return jsonify(build_status(service()))


@rounds.get(OPENAPI)
def openapi():
    return jsonify(openapi_document())


@models.get(TOKENIZER)
def tokenizer():
    return send_file(service().blobs.tokenizer_path(), mimetype="application/json",
                     etag=service().tokenizer_sha256, conditional=True, max_age=0)


@models.get(MODEL)
def latest_model():
    return _send_version(service().model_version())


@models.get(flask_rule(MODEL_VERSION))
def model_version(version: int):
    return _send_version(_version(version))


@models.get(MODEL + COMPACT)
def latest_compact_model():
    """The latest model as per-row int8 (27% of the float32 bytes), ETag its sha256."""
    return _send_version(service().model_version(), compact=True)


@models.get(flask_rule(MODEL_VERSION + COMPACT))
def compact_model_version(version: int):
    return _send_version(_version(version), compact=True)


def _version(version: int) -> ModelVersion:
    found = service().model_version(version)
    if found is None:
        raise ApiError(404, "no_such_version", f"there is no model version {version}")
    return found


@admin.before_request
def _admin_only():
    require_admin()


@admin.get("/config")
def get_config():
    with service().db.read() as s:
        return jsonify(service().live_config(s).to_dict())


@admin.put("/config")
def put_config():
    try:
        config = service().set_config(json_object())
    except ConfigError as err:
        raise ApiError(400, "bad_config", str(err)) from None
    return jsonify(config.to_dict())


@admin.post("/enrolment-codes")
def issue_enrolment_code():
    data = json_object()
    _fields(data, {"uses", "label"})
    uses, label = data.get("uses"), data.get("label", "")
    if not isinstance(uses, int) or isinstance(uses, bool) or not 1 <= uses <= MAX_CODE_USES:
        raise ApiError(400, "bad_field", f"'uses' must be an integer in [1, {MAX_CODE_USES}]")
    if not isinstance(label, str) or len(label) > 200:
        raise ApiError(400, "bad_field", "'label' must be text of at most 200 characters")
    return jsonify(service().enrolment.issue_code(uses, label)), 201


@admin.get("/enrolment-codes")
def list_enrolment_codes():
    return jsonify({"codes": service().enrolment.list_codes()})


@admin.delete("/enrolment-codes/<code_id>")
def revoke_enrolment_code(code_id: str):
    return jsonify(service().enrolment.revoke_code(code_id))


@admin.post("/training")
def training():
    data = json_object()
    action = data.get("action")
    if set(data) != {"action"} or action not in ("start", "stop"):
        raise ApiError(400, "bad_field", "'action' must be \"start\" or \"stop\"")
    service().set_training(action == "start")
    return jsonify({"training": "running" if action == "start" else "stopped"})
