"""The device-server protocol as types (federated.protocol), the one safetensors parser for
files (device_model.tensorfile) and the one atomic write (device_model.files)."""
import json
import os
import stat
from dataclasses import replace

import numpy as np
import pytest

from aggregation_server.config import RoundConfig
from aggregation_server.openapi import openapi_document
from conftest import task_json
from device_model.files import write_atomic
from device_model import tensorfile
from device_model.tensorfile import TensorFileError
from federated import privacy, protocol
from federated.compression import round_seed
from federated.protocol import (EvaluateParams, NoTask, PrivacyStatus, Receipt,
                                SecAggReceipt, SecAggTask, Task,
                                checkin_from_json, checkin_to_json)
from federated.secagg import SecAggConfig
from federated.wire import UpdateMetadata, WireError


def secure_task() -> Task:
    """A secure task as the server builds it (RoundConfig.task)."""
    part = SecAggTask(3, SecAggConfig.create(9, 12, 100, clip_norm=1.0, noise_stddev=0.3),
                      1.7e9 + 0.25)
    return RoundConfig().task(9, 2, "ab" * 32, 1.7e9 + 120.5, secagg=part)


def wire(data: dict) -> dict:
    """What the other side receives: the JSON text, parsed."""
    return json.loads(json.dumps(data))


def test_the_task_the_server_builds_is_the_task_the_device_parses():
    for task in (secure_task(), RoundConfig(secure_aggregation=False).task(1, 0, "0" * 64, 5.0)):
        assert Task.from_json(wire(task.to_json())) == task
        answer = checkin_to_json(task)
        assert list(answer) == ["task"] and checkin_from_json(wire(answer)) == task
    assert "kind" not in secure_task().to_json()  # absent: a training task, as before kinds
    assert Task.from_json(secure_task().to_json()).kind == "train"


def test_an_evaluation_task_scores_versions_and_trains_nothing():
    plain = RoundConfig(secure_aggregation=False).task(5, 3, "cd" * 32, 9e9)
    task = replace(plain, train=None, kind="evaluate",
                   evaluate=EvaluateParams(((3, "cd" * 32), (2, "ef" * 32)), 400))
    data = wire(task.to_json())
    assert "train" not in data and data["kind"] == "evaluate"
    assert data["evaluate"] == {"versions": [{"version": 3, "sha256": "cd" * 32},
                                             {"version": 2, "sha256": "ef" * 32}],
                                "max_words": 400}
    assert Task.from_json(data) == task
    schema = openapi_document()["components"]["schemas"]["Task"]
    assert set(data) <= set(schema["properties"])
    for bad, message in (({"versions": []}, "'versions' must list 1..2 model versions"),
                         ({"max_words": 0}, "'max_words' must be an integer in 1.."),
                         ({"versions": [{"version": 3}]}, "version lacks 'sha256'")):
        with pytest.raises(WireError, match=message):
            Task.from_json({**data, "evaluate": {**data["evaluate"], **bad}})
    with pytest.raises(WireError, match="an evaluation task is plain"):
        replace(task, secure_aggregation=True)
    with pytest.raises(WireError, match="'train' exactly when it trains"):
        replace(plain, kind="evaluate")


def test_the_task_json_keeps_its_shape():
    """The bytes devices already read: the same keys, in the same order, as before types."""
    data = secure_task().to_json()
    assert list(data) == ["round_id", "model_version", "model_sha256", "deadline", "train",
                          "min_examples", "clip_norm", "noise_multiplier", "min_reports",
                          "dishonest_share", "secure_aggregation", "secagg"]
    assert list(data["train"]) == ["epochs", "batch_size", "lr", "optimizer", "max_examples"]
    assert list(data["secagg"]) == ["client_id", "config", "advertise_by"]
    schema = openapi_document()["components"]["schemas"]["Task"]
    assert set(schema["required"]) <= set(data) and set(data) <= set(schema["properties"])


@pytest.mark.parametrize("field", [
    "round_id", "model_version", "model_sha256", "deadline", "train", "min_examples",
    "clip_norm", "noise_multiplier", "min_reports", "dishonest_share", "secure_aggregation"])
def test_every_missing_field_is_named(field):
    data = task_json()
    del data[field]
    with pytest.raises(WireError, match=f"task lacks '{field}'"):
        Task.from_json(data)


@pytest.mark.parametrize("changes, message", [
    ({"round_id": -1}, "'round_id' must be an integer in 0..2147483647, got -1"),
    ({"round_id": True}, "'round_id' must be an integer"),
    ({"model_sha256": "abc"}, "'model_sha256' must be a sha256 in hex"),
    ({"deadline": float("inf")}, "'deadline' must be a finite number"),
    ({"train": {"batch_size": 0}}, "task 'train' 'batch_size' must be an integer in 1.."),
    ({"train": {"epochs": "1"}}, "task 'train' 'epochs' must be a finite number in \\(0"),
    ({"min_examples": 0}, "'min_examples' must be an integer in 1.."),
    ({"noise_multiplier": -0.5}, "'noise_multiplier' must be a finite number in \\[0"),
    ({"kind": "mine_bitcoin"}, "'kind' must be one of \\['train', 'evaluate'\\]"),
    ({"secure_aggregation": True}, "task lacks 'secagg'"),
    ({"train": []}, "task 'train' must be a JSON object, got list"),
])
def test_a_bad_field_is_refused_with_a_sentence_naming_it(changes, message):
    train = changes.pop("train", None)
    data = task_json(**changes)
    if train is not None:
        data["train"] = {**data["train"], **train} if isinstance(train, dict) else train
    with pytest.raises(WireError, match=message):
        Task.from_json(data)


def test_a_secure_part_must_fit_its_round():
    data = secure_task().to_json()
    with pytest.raises(WireError, match="'client_id' must be an integer in 1..12, got 13"):
        Task.from_json({**data, "secagg": {**data["secagg"], "client_id": 13}})
    with pytest.raises(WireError, match="config is for round 9, the task for round 10"):
        Task.from_json({**data, "round_id": 10})
    with pytest.raises(WireError, match="secure-aggregation config: .*threshold"):
        Task.from_json({**data, "secagg": {**data["secagg"], "config": {
            **data["secagg"]["config"], "threshold": 0}}})
    with pytest.raises(WireError, match="exactly when secure_aggregation"):
        replace(secure_task(), secure_aggregation=False)  # the server cannot build one either


def test_no_task_and_what_is_not_a_checkin_answer():
    answer = NoTask("round 3 is full: all 13 tasks handed out", 12.345)
    assert checkin_to_json(answer) == {"task": None, "retry_after": 12.3,
                                       "reason": "round 3 is full: all 13 tasks handed out"}
    assert checkin_from_json(wire(checkin_to_json(answer))) == NoTask(answer.reason, 12.3)
    for bad, message in (([], "check-in answer must be a JSON object"),
                         ({}, "check-in answer lacks 'task'"),
                         ({"task": None, "reason": "x"}, "lacks 'retry_after'"),
                         ({"task": None, "retry_after": -1, "reason": "x"}, "'retry_after'"),
                         ({"task": "soon"}, "task must be a JSON object, got str")):
        with pytest.raises(WireError, match=message):
            checkin_from_json(bad)


def test_the_privacy_figures_devices_read_from_the_status():
    status = {"privacy": {**PrivacyStatus(5.2, 12.0, 1e-6).to_json(), "accountant": "RDP"}}
    assert PrivacyStatus.from_json(wire(status)) == PrivacyStatus(5.2, 12.0, 1e-6)
    unlimited = {"privacy": {"epsilon_spent_max": None, "epsilon_budget": None, "delta": 1e-5}}
    assert PrivacyStatus.from_json(unlimited) == PrivacyStatus(None, None, 1e-5)
    with pytest.raises(WireError, match="status lacks 'privacy'"):
        PrivacyStatus.from_json({})
    with pytest.raises(WireError, match="'delta' must be a finite number in \\(0, 1\\)"):
        PrivacyStatus.from_json({"privacy": {**unlimited["privacy"], "delta": 0}})


def test_the_answers_to_reports_and_secure_aggregation_messages():
    assert Receipt.from_json(wire(Receipt(4, 2).to_json())) == Receipt(4, 2)
    sent = SecAggReceipt(4, "masked", 3)
    assert SecAggReceipt.from_json(wire(sent.to_json())) == sent
    for bad, message in (({"round_id": 4, "reports": 2}, "report answer lacks 'accepted'"),
                         ({"accepted": False, "round_id": 4, "reports": 2},
                          "'accepted' must be true, got False"),
                         ({"accepted": True, "round_id": 4, "reports": 0}, "'reports'")):
        with pytest.raises(WireError, match=message):
            Receipt.from_json(bad)
    with pytest.raises(WireError, match="secure-aggregation answer 'client_id'"):
        SecAggReceipt.from_json({**sent.to_json(), "client_id": 0})


def test_the_server_and_the_document_serve_the_protocols_paths():
    from aggregation_server.api import BLUEPRINTS
    from aggregation_server.secure_api import secagg
    from flask import Flask
    app = Flask(__name__)
    for blueprint in (*BLUEPRINTS, secagg):
        app.register_blueprint(blueprint)
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    documented = set(openapi_document()["paths"])
    device_paths = (protocol.ENROL, protocol.CHALLENGE, protocol.RECOVER, protocol.CHECKIN,
                    protocol.UPDATE, protocol.EVALUATION, protocol.MODEL, protocol.MODEL_VERSION, protocol.TOKENIZER,
                    protocol.STATUS, protocol.OPENAPI, protocol.SECAGG + "/masked")
    for template in device_paths:
        assert protocol.API_PREFIX + protocol.flask_rule(template) in rules, template
        assert protocol.API_PREFIX + template in documented, template
    assert protocol.path(protocol.UPDATE, round_id=7) == "/rounds/7/update"
    adapter = app.url_map.bind("localhost")
    assert adapter.match("/v1" + protocol.path(protocol.MODEL_VERSION, version=3),
                         method="GET") == ("models.model_version", {"version": 3})


def test_update_metadata_round_trip_and_checks():
    meta = UpdateMetadata(4, 2, 30, {"loss": 3.5})
    assert UpdateMetadata.from_strings(meta.to_strings()) == meta
    for changes, message in (({"num_examples": "0"}, "'num_examples' is 0, below 1"),
                             ({"round_id": "four"}, "'round_id' missing or not an integer"),
                             ({"metrics": '{"secret": 1}'}, "names outside")):
        with pytest.raises(WireError, match=message):
            UpdateMetadata.from_strings({**meta.to_strings(), **changes})


def test_files_are_parsed_by_the_bounded_parser_from_their_header(tmp_path):
    data = tensorfile.save({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"k": "v"})
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    assert tensorfile.read_file_header(path) == tensorfile.read_header(data)
    tensors, meta = tensorfile.load_file(path)
    tensors["w"] += 1  # writable, unlike load(bytes)
    assert meta == {"k": "v"} and tensors["w"][1, 2] == 6.0
    path.write_bytes(data[:-4])
    with pytest.raises(TensorFileError, match="truncated or overlong"):
        tensorfile.read_file_header(path)
    path.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(TensorFileError, match="over the 1048576-byte limit"):
        tensorfile.read_file_header(path)


def test_one_atomic_write(tmp_path):
    target = tmp_path / "new" / "folder" / "token.json"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second" and os.listdir(target.parent) == ["token.json"]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    write_atomic(tmp_path / "model.safetensors", b"x", mode=0o644)
    assert stat.S_IMODE(os.stat(tmp_path / "model.safetensors").st_mode) == 0o644
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "no" / "such" / "file.txt", b"x", make_parents=False)
    with pytest.raises(IsADirectoryError):
        write_atomic(target.parent, b"x")
    assert os.listdir(target.parent) == ["token.json"]  # no temporary file left behind


def _number_paths(data: object, path: tuple = ()) -> list[tuple]:
    """The path of every number in a JSON value (booleans are not numbers here)."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _number_paths(v, path + (k,))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _number_paths(v, path + (i,))]
    return [path] if isinstance(data, (int, float)) and not isinstance(data, bool) else []


def _with(data: object, path: tuple, value: object) -> object:
    if not path:
        return value
    copy = list(data) if isinstance(data, list) else dict(data)
    copy[path[0]] = _with(data[path[0]], path[1:], value)
    return copy


def compressed_task() -> Task:
    """A plain compressed task as the server builds it."""
    seed, sha = round_seed(4, "ab" * 32), "ab" * 32
    spec = privacy.round_compression(seed, 50_000, 0.5, 1.0, 5, 8, secure=False)
    return RoundConfig(secure_aggregation=False, compression="ddg16", noise_multiplier=1.0,
                       clip_norm=0.5, min_reports=5).task(
        4, 2, sha, 9e9, compression=spec, model_compact_sha256="cd" * 32)


@pytest.mark.parametrize("task", [secure_task, compressed_task])
@pytest.mark.parametrize("huge", [10 ** 400, -10 ** 400, float("inf"), float("nan")],
                         ids=["1e400", "-1e400", "inf", "nan"])
def test_a_number_no_float_can_hold_is_refused_with_a_sentence(task, huge):
    """A hostile server's 400-digit (or infinite) number in any field of a task is a WireError
    naming the field, never an OverflowError out of the device's parser."""
    built = task()
    data = wire(built.to_json())
    assert Task.from_json(data) == built
    paths = _number_paths(data)
    assert len(paths) >= 12
    for path in paths:
        with pytest.raises(WireError):
            Task.from_json(_with(data, path, huge))
