"""The secure-aggregation endpoints under `/v1/rounds/<round_id>/secagg/` (device auth).

Devices send each phase's message and poll for what the server relays once the phase has
closed (202 with `retry_after` until then); a device that leaves the round because what it
was relayed is inconsistent says why at `abort` (one of `federated.secagg.ABORT_REASONS`). Every refusal is a JSON error: 400 malformed
(the sender is excluded from the round, as the protocol says), 403 not a participant, 404 no
such round, 409 replayed / late / wrong phase / round closed, 413 too large, 415 wrong
content type, 422 a well-formed message that breaks the protocol (sender excluded).
"""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from aggregation_server.api import device_id, service
from aggregation_server.errors import ApiError
from aggregation_server.secure import MAX_JSON_BYTES, SecureAggregation
from federated.protocol import API_PREFIX, SECAGG, flask_rule

secagg = Blueprint("secagg", __name__, url_prefix=API_PREFIX + flask_rule(SECAGG))


def protocol() -> SecureAggregation:
    """The service's policy, which runs the protocol (409 on a server without it)."""
    policy = service().policy
    if not isinstance(policy, SecureAggregation):
        raise ApiError(409, "not_secure", "this server does not run secure aggregation: "
                                          "upload with PUT .../update")
    return policy


def _body(mimetype: str, limit: int | None = None) -> bytes:
    if request.mimetype != mimetype:
        raise ApiError(415, "unsupported_media_type", f"send the body as {mimetype}")
    if limit is not None and (request.content_length or 0) > limit:
        raise ApiError(413, "too_large", f"message of {request.content_length} bytes is over "
                                         f"the {limit}-byte limit")
    return request.get_data(cache=False)


def _post(round_id: int, phase: str):
    device = device_id()
    return jsonify(protocol().receive(device, round_id, phase,
                                      _body("application/json", MAX_JSON_BYTES)).to_json()), 202


def _get(round_id: int, kind: str):
    status, answer = protocol().relay(device_id(), round_id, kind)
    response = jsonify(answer)
    if status == 202:
        response.headers["Retry-After"] = str(max(1, round(answer["retry_after"])))
    return response, status


@secagg.post("/advertise")
def advertise(round_id: int):
    return _post(round_id, "advertise")


@secagg.get("/keys")
def keys(round_id: int):
    return _get(round_id, "keys")


@secagg.post("/shares")
def share_keys(round_id: int):
    return _post(round_id, "share")


@secagg.get("/shares")
def shares(round_id: int):
    return _get(round_id, "shares")


@secagg.put("/masked")
def masked(round_id: int):
    device = device_id()
    return jsonify(protocol().receive(device, round_id, "masked",
                                      _body("application/octet-stream")).to_json()), 202


@secagg.get("/consistency")
def survivors(round_id: int):
    return _get(round_id, "consistency")


@secagg.post("/consistency")
def consistency(round_id: int):
    return _post(round_id, "consistency")


@secagg.get("/unmask")
def unmask_request(round_id: int):
    return _get(round_id, "unmask")


@secagg.post("/unmask")
def unmask(round_id: int):
    return _post(round_id, "unmask")


@secagg.post("/abort")
def abort(round_id: int):
    return _post(round_id, "abort")
