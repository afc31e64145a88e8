"""The OpenAPI 3 document of the server: the device protocol's messages (task, no-task,
the answers to reports) derived from their types in `federated.protocol` and the round-config
schema from `RoundConfig`, so that neither can drift; the rest written here."""
from __future__ import annotations

import typing
from dataclasses import fields
from functools import lru_cache
from typing import Any

from aggregation_server.config import BOUNDS, ENUMS, Bounds, RoundConfig
from federated import protocol, wire
from federated.secagg import (AbortNotice, AdvertiseKeys, ConsistencyResponse, ShareKeys,
                              UnmaskResponse)

INT32 = 2**31 - 1
ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying",
                               "schema": {"type": "integer", "minimum": 1}}}
ERRORS = {"4XX": {"description": "Refused: what was wrong, no state changed",
                  "content": ERROR_BODY},
          "503": {"description": "The data dir is read-only or the database unreachable: "
                                 "nothing was stored, retry after Retry-After seconds",
                  "headers": RETRY_AFTER, "content": ERROR_BODY},
          "507": {"description": "The server's disk is full: nothing was stored, retry after "
                                 "Retry-After seconds", "headers": RETRY_AFTER,
                  "content": ERROR_BODY}}
UPDATE_BODY = (
    "safetensors bytes (federated.wire). Float32 rounds: one F32 tensor per model tensor, "
    f"metadata format {wire.UPDATE_FORMAT!r}, round_id, model_version, num_examples, "
    "metrics. Compressed plain rounds (the task's compression scheme 'dg-q5'): one 1-D U8 "
    "tensor 'deflated', a zlib stream (devices write Huffman codes only) that inflates to "
    "exactly `kept` bytes u + 15 with u in [-15, 15]; metadata format "
    f"{wire.COMPRESSED_FORMAT!r}, the same fields, 'seed' (the task's, hex) and 'step' (a "
    "whole number in decimal digits, 1 up to what an honest upload's values need); the "
    "server decodes step * u. Anything else is refused with 400 (invalid_update) or, over "
    "the round's norm bound, 422 (norm_too_large).")
ETAG = {"ETag": {"description": "Quoted sha256 hex of the body", "schema": {"type": "string"}}}


def _json(ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _obj(required: list[str], props: dict, extra: bool = True) -> dict:
    schema = {"type": "object", "required": required, "properties": props}
    if not extra:
        schema["additionalProperties"] = False
    return schema


NUM, INT, STR, BOOL = ({"type": "number"}, {"type": "integer"}, {"type": "string"},
                       {"type": "boolean"})
NULLNUM, NULLINT, NULLSTR = ({"type": "number", "nullable": True},
                             {"type": "integer", "nullable": True},
                             {"type": "string", "nullable": True})


def _config_schema(patch: bool) -> dict:
    """RoundConfig as a schema: all fields (responses) or any subset (PUT body)."""
    kinds = {int: "integer", float: "number", str: "string", bool: "boolean"}
    props = {}
    for f in fields(RoundConfig):
        hint = typing.get_type_hints(RoundConfig)[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        prop: dict[str, Any] = {"type": kinds[args[0] if args else hint]}
        if args:
            prop["nullable"] = True
        if f.name in ENUMS:
            prop["enum"] = list(ENUMS[f.name])
        prop.update(_bounds(BOUNDS.get(f.name)))
        props[f.name] = prop
    schema = _obj([] if patch else list(props), props, extra=False)
    schema["description"] = CROSS_FIELD_RULES
    return schema


def _bounds(bounds: Bounds | None) -> dict:
    """A config range as OpenAPI 3.0 minimum/maximum (exclusive flags are booleans)."""
    if bounds is None:
        return {}
    low, high, low_in, high_in = bounds
    out: dict[str, Any] = {} if low is None else {"minimum": low}
    if low is not None and not low_in:
        out["exclusiveMinimum"] = True
    if high is not None:
        out["maximum"] = high
        if not high_in:
            out["exclusiveMaximum"] = True
    return out


CROSS_FIELD_RULES = (
    "Besides each field's range: target_reports >= min_reports; with secure_aggregation, "
    "ceil(target_reports * overcommit) >= 2, round_seconds > 3 * secagg_phase_seconds, "
    "weighting 'uniform' (or noise_multiplier > 0), and a SecAgg threshold that the target "
    "can reach. A patch is applied to the live config, then all rules are checked (400 "
    "bad_config names the first broken one).")


ROUND = _obj(["id", "state", "model_version", "target", "minimum", "tasks_issued", "reports"], {
    "id": INT, "state": {"type": "string", "enum": ["open", "closing", "closed", "abandoned"]},
    "model_version": INT, "new_version": NULLINT, "opened_at": NUM, "deadline": NUM,
    "closed_at": NULLNUM, "target": INT, "minimum": INT, "capacity": INT,
    "tasks_issued": INT, "reports": INT, "reason": NULLSTR,
    "metrics": {"type": "object", "additionalProperties": NUM},
    "epsilon_max": {"type": "number", "nullable": True,
                    "description": "most spent by one device after this round, against the "
                                   "server (null: no noise, no guarantee)"},
    "epsilon_max_model_users": {"type": "number", "nullable": True,
                                "description": "the same against model users"},
    "noise_multiplier": NUM, "clip_norm": NUM,
    "secure_aggregation": BOOL,
    "kind": {"type": "string", "enum": ["train", "evaluate"]},
    "evaluation": {"type": "object", "nullable": True,
                   "description": "an evaluation round: the versions it scores, the word cap, "
                                  "and once closed its aggregate ('result')"},
    "aggregation": {**_obj(["attempts", "failing_since", "last_error", "next_attempt_at"], {
        "attempts": INT, "failing_since": NUM, "last_error": STR, "next_attempt_at": NUM}),
        "nullable": True, "description": "a closing round whose aggregation failed: it is "
                                         "retried with backoff, its inputs kept"}})

VERSION = _obj(["version", "sha256", "created_at"], {
    "version": INT, "sha256": STR, "size": INT, "created_at": NUM, "round_id": NULLINT,
    "reports": INT, "metrics": {"type": "object", "additionalProperties": NUM},
    "provenance": {"type": "object"}})

STATUS = _obj(["training", "round", "devices", "model", "versions", "rounds", "privacy",
               "config"], {
    "time": NUM, "training": {"type": "string", "enum": ["running", "stopped"]},
    "blocked_reason": NULLSTR,
    "round": {"allOf": [{"$ref": "#/components/schemas/Round"}], "nullable": True},
    "rounds_closed": INT, "rounds_abandoned": INT,
    "secure_aggregation": _obj(["rounds", "abandoned", "abandoned_by_cause", "device_aborts"], {
        "rounds": INT, "abandoned": INT,
        "abandoned_by_cause": {"type": "object", "additionalProperties": INT,
                               "description": "device_aborts (devices saw an inconsistent "
                                              "view), dropouts, sum_out_of_range, other"},
        "device_aborts": {"type": "object", "additionalProperties": INT,
                          "description": "devices that left a secure round, by reason"},
        "abort_reasons": {"type": "object", "additionalProperties": STR,
                          "description": "each reason in plain words"}}),
    "devices": _obj(["enrolled", "participants"], {
        "enrolled": INT, "participants": INT,
        "participations": {"type": "object", "additionalProperties": INT,
                           "description": "number of devices by rounds taken part in"}}),
    "model": _obj(["version", "sha256"], {"version": INT, "sha256": STR, "num_params": INT}),
    "versions": {"type": "array", "items": {"$ref": "#/components/schemas/ModelVersion"}},
    "rounds": {"type": "array", "items": {"$ref": "#/components/schemas/Round"}},
    "privacy": _obj(["epsilon_spent_max", "epsilon_budget", "delta", "figures", "assumptions"], {
        "budget_text": {"type": "string", "description": "the budget in one plain sentence"},
        "epsilon_spent_max": NULLNUM, "epsilon_spent_max_model_users": NULLNUM,
        "epsilon_budget": NULLNUM, "epsilon_at_cap": NULLNUM,
        "epsilon_at_cap_model_users": NULLNUM,
        "figures": {"type": "array", "items": _obj(
            ["against", "label", "spent_max", "at_cap", "spent_text", "at_cap_text"], {
                "against": {"type": "string", "enum": ["server", "model_users"]},
                "label": STR, "spent_max": NULLNUM, "at_cap": NULLNUM, "spent_text": STR,
                "at_cap_text": STR})},
        "delta": NUM, "noise_multiplier": NUM, "clip_norm": NUM, "device_noise_stddev": NUM,
        "dishonest_share": NUM, "honest_reports": INT, "secure_aggregation": BOOL,
        "server_assumed": STR, "participation_cap": INT, "sampling_rate": NULLNUM,
        "accountant": STR, "assumptions": {"type": "array", "items": STR}}),
    "evaluation": _obj(["quality", "latest", "rounds"], {
        "quality": {"type": "array", "items": {"type": "object"},
                    "description": "per evaluation round: the model version, its reports, and "
                                   "top1, top3, ksr, perplexity as {value, ci_low, ci_high} "
                                   "(95% noise interval) or null when the noise hides it"},
        "latest": {"type": "object", "nullable": True},
        "rounds": {"type": "array", "items": {"type": "object"}}}),
    "config": {"$ref": "#/components/schemas/RoundConfig"}})

VERSION_PATH = [{"name": "version", "in": "path", "required": True,
                 "schema": {"type": "integer", "minimum": 0, "maximum": INT32}}]

TASK = protocol.json_schema(protocol.Task)  # the protocol's types are the one definition


def _receipt(message: type) -> dict:
    """A 202 answer: the message type's schema, with its `"accepted": true`."""
    schema = protocol.json_schema(message)
    return _obj(["accepted", *schema["required"]],
                {"accepted": {"type": "boolean", "enum": [True]}, **schema["properties"]})


def _no_task() -> dict:
    """A check-in answer without a task: `NoTask`, with its `"task": null`."""
    schema = protocol.json_schema(protocol.NoTask)
    return _obj(["task", *schema["required"]], {
        "task": {"type": "object", "nullable": True, "enum": [None]}, **schema["properties"]})


IDENTITY_KEY = {"type": "string", "description": "the device's Ed25519 public key, "
                                                 "base64url of its 32 raw bytes"}
CODE = _obj(["id", "uses", "used", "remaining", "revoked"], {
    "id": STR, "label": STR, "uses": INT, "used": INT, "remaining": INT, "created_at": NUM,
    "revoked": BOOL})
RATE_LIMITED = {"429": {"description": "Too many enrolment calls from this address",
                        "headers": {"Retry-After": {"schema": INT}}, "content": ERROR_BODY}}
API = protocol.API_PREFIX  # the device-facing paths are protocol templates
ROUND_ID = {"name": "round_id", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 0, "maximum": INT32}}
def _secagg_message(kind: str) -> dict:
    """A protocol message body: its type is fixed per endpoint (federated.secagg)."""
    return {"required": True, "content": {"application/json": {"schema": _obj(
        ["type", "round_id", "client_id"], {"type": {"type": "string", "enum": [kind]},
                                            "round_id": INT, "client_id": INT})}}}


def _secagg_post(summary: str, body: dict) -> dict:
    return {"summary": summary, "security": [{"device": []}], "parameters": [ROUND_ID],
            "requestBody": body,
            "responses": {"202": {"description": "Taken and stored",
                                  "content": _json("SecAggAccepted")}, **ERRORS}}


def _secagg_get(summary: str) -> dict:
    return {"summary": summary, "security": [{"device": []}], "parameters": [ROUND_ID],
            "responses": {
                "200": {"description": "What the server relays to this device",
                        "content": {"application/json": {"schema": _obj(["type", "round_id"], {
                            "type": STR, "round_id": INT})}}},
                "202": {"description": "The phase is still open: ask again after retry_after "
                                       "seconds (when the phase should be complete at the "
                                       "pace its messages came in so far)",
                        "headers": {"Retry-After": {"schema": INT}},
                        "content": _json("SecAggPending")},
                **ERRORS}}


def _binary_get(summary: str, extra_params: list | None = None) -> dict:
    headers = dict(ETAG, **{"X-Model-Version": {"schema": {"type": "integer"}}})
    return {"summary": summary, "parameters": [*(extra_params or []), {
        "name": "If-None-Match", "in": "header", "required": False, "schema": STR}],
        "responses": {
            "200": {"description": "Checkpoint: safetensors bytes with checkpoint metadata",
                    "headers": headers,
                    "content": {"application/octet-stream": {
                        "schema": {"type": "string", "format": "binary"}}}},
            "304": {"description": "Not modified: If-None-Match matched the ETag"}, **ERRORS}}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    device, admin = [{"device": []}], [{"admin": []}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "Private keyboard aggregation server", "version": "1",
                 "description": "Federated rounds with client-level differential privacy. "
                                "Errors are JSON {error, message} with a 4xx status, or "
                                "503/507 with Retry-After when storage or the database "
                                "fails."},
        "paths": {
            API + protocol.ENROL: {"post": {
                "summary": "Enrol a device with an operator's enrolment code, binding its "
                           "Ed25519 identity key; the token is shown once and stored hashed. "
                           "Rate-limited per client address (429 with Retry-After)",
                "requestBody": {"required": True, "content": _json("EnrolmentRequest")},
                "responses": {"201": {"description": "Enrolled", "content": _json("Enrolment")},
                              **RATE_LIMITED, **ERRORS}}},
            API + protocol.CHALLENGE: {"post": {
                "summary": "Token recovery, step 1: a one-time challenge for the device bound "
                           "to this identity key (rate-limited like enrolment)",
                "requestBody": {"required": True, "content": _json("ChallengeRequest")},
                "responses": {"201": {"description": "Sign it within expires_at",
                                      "content": _json("Challenge")},
                              **RATE_LIMITED, **ERRORS}}},
            API + protocol.RECOVER: {"post": {
                "summary": "Token recovery, step 2: a new token for the device that signed "
                           "the challenge (same device id, participation and privacy spend)",
                "requestBody": {"required": True, "content": _json("RecoverRequest")},
                "responses": {"200": {"description": "New token",
                                      "content": _json("Enrolment")},
                              **RATE_LIMITED, **ERRORS}}},
            API + protocol.CHECKIN: {"post": {
                "summary": "Ask for a training task; a retry (same Idempotency-Key) gets the "
                           "device's task again", "security": device,
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string",
                                           "pattern": "^[A-Za-z0-9._:-]{1,200}$"}}],
                "requestBody": {"required": True, "content": _json("CheckinRequest")},
                "responses": {"200": {"description": "A task, or when to come back",
                                      "content": _json("CheckinResponse")}, **ERRORS}}},
            API + protocol.UPDATE: {"put": {
                "summary": "Upload an update (clipped, noised weight delta)", "security": device,
                "parameters": [
                    {"name": "round_id", "in": "path", "required": True,
                     "schema": {"type": "integer", "minimum": 0, "maximum": INT32}},
                    {"name": "Idempotency-Key", "in": "header", "required": True,
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,200}$"}}],
                "requestBody": {"required": True, "description": UPDATE_BODY,
                                "content": {"application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}}}},
                "responses": {"202": {"description": "Stored durably; retries with the same "
                                                     "Idempotency-Key get the same answer",
                                      "content": _json("UploadAccepted")}, **ERRORS}}},
            API + protocol.EVALUATION: {"put": {
                "summary": "An evaluation round's report: per model version evaluated, seven "
                           "clipped and noised sums (federated.evaluation); impossible values "
                           "are refused with 422", "security": device,
                "parameters": [ROUND_ID,
                               {"name": "Idempotency-Key", "in": "header", "required": True,
                                "schema": {"type": "string",
                                           "pattern": "^[A-Za-z0-9._:-]{1,200}$"}}],
                "requestBody": {"required": True, "content": _json("EvaluationReport")},
                "responses": {"202": {"description": "Stored; retries with the same "
                                                     "Idempotency-Key get the same answer",
                                      "content": _json("UploadAccepted")}, **ERRORS}}},
            API + protocol.SECAGG + "/advertise": {"post": _secagg_post(
                "Secure aggregation, phase 0: advertise two public keys (advertise_keys); "
                "a malformed message excludes the device",
                _secagg_message(AdvertiseKeys.TYPE))},
            API + protocol.SECAGG + "/keys": {"get": _secagg_get(
                "The neighbours' public keys (keys_relay), once key advertisement closed")},
            API + protocol.SECAGG + "/shares": {
                "post": _secagg_post("Phase 1: encrypted shares for each neighbour (share_keys)",
                                     _secagg_message(ShareKeys.TYPE)),
                "get": _secagg_get("The shares addressed to this device (shares_relay)")},
            API + protocol.SECAGG + "/masked": {"put": _secagg_post(
                "Phase 2: the masked update (safetensors, private-keyboard/secagg-masked-1)",
                {"required": True, "content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}}})},
            API + protocol.SECAGG + "/consistency": {
                "get": _secagg_get("Phase 3: the round's survivors, to sign "
                                   "(consistency_request)"),
                "post": _secagg_post("The device's signature of the survivors "
                                     "(consistency_response)",
                                     _secagg_message(ConsistencyResponse.TYPE))},
            API + protocol.SECAGG + "/unmask": {
                "get": _secagg_get("Phase 4: which neighbours survived and which dropped, "
                                   "with their signatures of the survivors (unmask_request)"),
                "post": _secagg_post("The shares that remove the masks (unmask_response)",
                                     _secagg_message(UnmaskResponse.TYPE))},
            API + protocol.SECAGG + "/abort": {"post": _secagg_post(
                "The device left the round (abort, with one of the documented reasons): "
                "what it was relayed is inconsistent; accepted in any phase",
                _secagg_message(AbortNotice.TYPE))},
            API + protocol.MODEL: {"get": _binary_get("The latest global model")},
            API + protocol.MODEL_VERSION: {"get": _binary_get("One global model version",
                                                        VERSION_PATH)},
            API + protocol.MODEL + protocol.COMPACT: {"get": _binary_get(
                "The latest global model as per-row int8 (ETag: its sha256)")},
            API + protocol.MODEL_VERSION + protocol.COMPACT: {"get": _binary_get(
                "One global model version as per-row int8 (compressed rounds' tasks carry "
                "its sha256 as model_compact_sha256)", VERSION_PATH)},
            API + protocol.TOKENIZER: {"get": {
                "summary": "The tokenizer.json of the model",
                "parameters": [{"name": "If-None-Match", "in": "header", "required": False,
                                "schema": STR}],
                "responses": {"200": {"description": "tokenizer.json", "headers": ETAG,
                                      "content": {"application/json": {
                                          "schema": {"type": "object"}}}},
                              "304": {"description": "Not modified"}, **ERRORS}}},
            API + protocol.STATUS: {"get": {
                "summary": "Training state, rounds, versions, privacy spend",
                "responses": {"200": {"description": "Status", "content": _json("Status")},
                              **ERRORS}}},
            API + protocol.OPENAPI: {"get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3 document",
                                      "content": {"application/json": {
                                          "schema": {"type": "object"}}}}}}},
            "/v1/admin/config": {
                "get": {"summary": "The live round config (used by the next round)",
                        "security": admin,
                        "responses": {"200": {"description": "Config",
                                              "content": _json("RoundConfig")}, **ERRORS}},
                "put": {"summary": "Change some round settings", "security": admin,
                        "requestBody": {"required": True, "content": _json("RoundConfigPatch")},
                        "responses": {"200": {"description": "The new config",
                                              "content": _json("RoundConfig")}, **ERRORS}}},
            "/v1/admin/enrolment-codes": {
                "get": {"summary": "The enrolment codes issued (without the codes themselves)",
                        "security": admin,
                        "responses": {"200": {"description": "Codes",
                                              "content": _json("EnrolmentCodes")}, **ERRORS}},
                "post": {"summary": "Issue an enrolment code good for `uses` enrolments (the "
                                    "code is shown only in this answer)", "security": admin,
                         "requestBody": {"required": True, "content": _json("CodeRequest")},
                         "responses": {"201": {"description": "The new code",
                                               "content": _json("IssuedCode")}, **ERRORS}}},
            "/v1/admin/enrolment-codes/{code_id}": {"delete": {
                "summary": "Revoke an enrolment code: it enrols nobody from now on",
                "security": admin,
                "parameters": [{"name": "code_id", "in": "path", "required": True,
                                "schema": STR}],
                "responses": {"200": {"description": "The revoked code",
                                      "content": _json("EnrolmentCode")}, **ERRORS}}},
            "/v1/admin/training": {"post": {
                "summary": "Start or stop training (stop abandons the open round)",
                "security": admin,
                "requestBody": {"required": True, "content": _json("TrainingAction")},
                "responses": {"200": {"description": "New state",
                                      "content": _json("TrainingState")}, **ERRORS}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text format",
                                      "content": {"text/plain": {"schema": STR}}}}}},
            "/": {"get": {
                "summary": "Dashboard for people (HTML with SVG charts, no JavaScript)",
                "responses": {"200": {"description": "HTML page",
                                      "content": {"text/html": {"schema": STR}}}}}},
        },
        "components": {
            "securitySchemes": {"device": {"type": "http", "scheme": "bearer"},
                                "admin": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _obj(["error", "message"], {"error": STR, "message": STR}),
                "Enrolment": _obj(["device_id", "token"], {"device_id": STR, "token": STR}),
                "EnrolmentRequest": _obj(["enrolment_code", "identity_key"], {
                    "enrolment_code": STR, "identity_key": IDENTITY_KEY}, extra=False),
                "ChallengeRequest": _obj(["identity_key"], {"identity_key": IDENTITY_KEY},
                                         extra=False),
                "Challenge": _obj(["challenge", "expires_at"], {"challenge": STR,
                                                                "expires_at": NUM}),
                "RecoverRequest": _obj(["identity_key", "challenge", "signature"], {
                    "identity_key": IDENTITY_KEY, "challenge": STR,
                    "signature": {"type": "string", "description": "base64url Ed25519 "
                                  "signature of 'private-keyboard/token-recovery-1\\n' + "
                                  "challenge"}}, extra=False),
                "CodeRequest": _obj(["uses"], {
                    "uses": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                    "label": {"type": "string", "maxLength": 200}}, extra=False),
                "EnrolmentCode": CODE,
                "IssuedCode": {"allOf": [CODE, _obj(["code"], {"code": STR})]},
                "EnrolmentCodes": _obj(["codes"], {"codes": {"type": "array", "items": CODE}}),
                "CheckinRequest": _obj([], {
                    "model_version": {"type": "integer", "minimum": 0, "maximum": INT32,
                                      "nullable": True},
                    "kinds": {"type": "array", "minItems": 1, "items": {
                        "type": "string", "enum": ["train", "evaluate"]},
                        "description": "the round kinds this device takes tasks in "
                                       "(default: train only)"}}, extra=False),
                "EvaluationReport": _obj(["sums"], {"sums": {
                    "type": "array", "minItems": 1, "maxItems": 2, "items": {
                        "type": "array", "minItems": 7, "maxItems": 7,
                        "items": {"type": "number"}}}}, extra=False),
                "Task": TASK,
                "CheckinResponse": {"oneOf": [
                    _obj(["task"], {"task": {"$ref": "#/components/schemas/Task"}}),
                    _no_task()]},
                "UploadAccepted": _receipt(protocol.Receipt),
                "SecAggAccepted": _receipt(protocol.SecAggReceipt),
                "SecAggPending": _obj(["retry_after", "phase"], {"retry_after": NUM,
                                                                 "phase": STR}),
                "Round": ROUND, "ModelVersion": VERSION, "Status": STATUS,
                "RoundConfig": _config_schema(patch=False),
                "RoundConfigPatch": _config_schema(patch=True),
                "TrainingAction": _obj(["action"], {
                    "action": {"type": "string", "enum": ["start", "stop"]}}, extra=False),
                "TrainingState": _obj(["training"], {
                    "training": {"type": "string", "enum": ["running", "stopped"]}}),
            },
        },
    }
