"""The JSON messages between device and server, as types, and the API paths.

The server builds these objects and serialises them with `to_json()`; the device parses
the same types with `from_json()`, which checks every field once and raises `WireError`
with a sentence saying which field is wrong and why. Nothing else on either side reads
these messages field by field. (An update's bytes and their metadata are `federated.wire`;
the secure-aggregation phase messages are `federated.secagg.messages`.)

    POST /v1/checkin -> {"task": Task}                    a task to carry out, or
                        {"task": null, "retry_after": s, "reason": why}    `NoTask`
    PUT  /v1/rounds/<id>/update, /evaluation -> 202 `Receipt`     the report was taken
    POST /v1/rounds/<id>/secagg/<step>       -> 202 `SecAggReceipt`  a protocol message was
                                                                     (the masked input: PUT)
    GET  /v1/status  -> {..., "privacy": {...}}           `PrivacyStatus` is what devices read

`json_schema(Type)` derives each message's JSON schema from its fields (their types, and
the descriptions and enums in their metadata), which is what the server's OpenAPI document
serves: one definition for the parser, the builder and the document.

The paths below are templates: the device fills in their `{fields}` (`path`), the server's
blueprints declare them as Flask rules (`flask_rule`), and the OpenAPI document uses them
as they are (the same `{name}` syntax).
"""
from __future__ import annotations

import math
import re
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

from device_model.train import OPTIMIZERS
from federated.compression import Compression, CompressionError, round_seed
from federated.evaluation import MAX_VERSIONS, MAX_WORDS
from federated.numbers import is_finite_number
from federated.secagg import ModularIntegers, SecAggConfig, SecAggError
from federated.wire import WireError

API_PREFIX = "/v1"
ENROL = "/devices"
CHALLENGE = "/devices/challenge"
RECOVER = "/devices/recover"
CHECKIN = "/checkin"
UPDATE = "/rounds/{round_id}/update"
EVALUATION = "/rounds/{round_id}/evaluation"  # an evaluation task's report
SECAGG = "/rounds/{round_id}/secagg"  # + "/<step>": the secure-aggregation phases
MODEL = "/model"
MODEL_VERSION = "/models/{version}"
COMPACT = "/compact"  # after MODEL or MODEL_VERSION: the model's int8 form
TOKENIZER = "/tokenizer"
STATUS = "/status"
OPENAPI = "/openapi.json"
ADMIN = "/admin"

MAX_ID = 2**31 - 1  # round ids, model versions, client ids: path parameters are int32
TASK_KINDS = ("train", "evaluate")  # what a task asks a device to do
_FIELD = re.compile(r"\{(\w+)\}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def path(template: str, **fields: int) -> str:
    """A path template with its `{fields}` filled in: path(UPDATE, round_id=3)."""
    return template.format(**{name: int(value) for name, value in fields.items()})


def flask_rule(template: str) -> str:
    """A path template as a Flask rule: each `{field}` an int32 path parameter."""
    return _FIELD.sub(rf"<int(max={MAX_ID}):\1>", template)


# ------------------------------------------------------------------------ field checks

def _object(data: Any, what: str) -> dict:
    if not isinstance(data, dict):
        raise WireError(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


def _get(data: dict, key: str, what: str) -> Any:
    if key not in data:
        raise WireError(f"{what} lacks '{key}'")
    return data[key]


def _int(data: dict, key: str, what: str, low: int = 0, high: int = MAX_ID) -> int:
    value = _get(data, key, what)
    if type(value) is not int or not low <= value <= high:
        raise WireError(f"{what} '{key}' must be an integer in {low}..{high}, got {value!r}")
    return value


def _number(data: dict, key: str, what: str, low: float = -math.inf, high: float = math.inf,
            above: bool = False, below: bool = False) -> float:
    """A finite number in [low, high]; `above`/`below` exclude the bound."""
    value = _get(data, key, what)
    ok = is_finite_number(value)
    if ok:
        ok = (value > low if above else value >= low) and (value < high if below else
                                                           value <= high)
    if not ok:
        span = f"{'(' if above else '['}{low:g}, {high:g}{')' if below else ']'}"
        raise WireError(f"{what} '{key}' must be a finite number in {span}, got {value!r}")
    return float(value)


def _choice(data: dict, key: str, what: str, choices: tuple[str, ...]) -> str:
    value = _get(data, key, what)
    if value not in choices:
        raise WireError(f"{what} '{key}' must be one of {list(choices)}, got {value!r}")
    return value


def _bool(data: dict, key: str, what: str) -> bool:
    value = _get(data, key, what)
    if type(value) is not bool:
        raise WireError(f"{what} '{key}' must be true or false, got {value!r}")
    return value


def _text(data: dict, key: str, what: str, pattern: re.Pattern | None = None) -> str:
    value = _get(data, key, what)
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise WireError(f"{what} '{key}' must be "
                        f"{'text' if pattern is None else 'a sha256 in hex'}, got {value!r}")
    return value


# ------------------------------------------------------------------------ schemas

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _doc(text: str, default: Any = MISSING, **schema: Any) -> Any:
    """A field (with `default`) and its JSON-schema description and keywords (e.g. `enum`,
    or `schema`: the whole schema of a field whose wire form is not its type's)."""
    return field(default=default, metadata={"doc": text, **schema})


def json_schema(cls: type, none_as_null: bool = False) -> dict[str, Any]:
    """The JSON schema (OpenAPI 3.0) of a message type, from its dataclass fields: a field
    is required unless it has a default or may be None; a None field is left out of the
    JSON, or sent as null with `none_as_null`; nested messages get their own schema."""
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required = []
    for f in fields(cls):
        args = typing.get_args(hints[f.name])
        optional = type(None) in args
        kind = next(a for a in args if a is not type(None)) if optional else hints[f.name]
        meta = dict(f.metadata)
        prop = meta.pop("schema", None) or (json_schema(kind, none_as_null)
                                             if is_dataclass(kind) else
                                             {"type": _JSON_TYPES[kind]})
        if "doc" in meta:
            prop = {**prop, "description": meta.pop("doc")}
        prop.update(meta)
        if optional and none_as_null:
            prop["nullable"] = True
        props[f.name] = prop
        if f.default is MISSING and (none_as_null or not optional):
            required.append(f.name)
    return {"type": "object", "required": required, "properties": props}


# ------------------------------------------------------------------------ check-in

@dataclass(frozen=True)
class TrainParams:
    """How a device trains for a task (the task's "train" object)."""

    epochs: float
    batch_size: int
    lr: float
    optimizer: str = _doc("the local optimizer", enum=list(OPTIMIZERS))
    max_examples: int = _doc("train on at most this many messages (a uniform sample); an "
                             "update's num_examples above it is refused (422)")

    def to_json(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "optimizer": self.optimizer, "max_examples": self.max_examples}

    @classmethod
    def from_json(cls, data: Any) -> TrainParams:
        what = "task 'train'"
        data = _object(data, what)
        return cls(_number(data, "epochs", what, 0, above=True),
                   _int(data, "batch_size", what, 1), _number(data, "lr", what, 0, above=True),
                   _choice(data, "optimizer", what, OPTIMIZERS),
                   _int(data, "max_examples", what, 1))


@dataclass(frozen=True)
class EvaluateParams:
    """What an evaluation task scores (the task's "evaluate" object): model versions,
    newest first, and the most words a device scores (`federated.evaluation`)."""

    versions: tuple[tuple[int, str], ...] = _doc("(version, sha256), newest first", schema={
        "type": "array", "items": {"type": "object", "required": ["version", "sha256"],
                                   "properties": {"version": {"type": "integer"},
                                                  "sha256": {"type": "string"}}}})
    max_words: int = _doc("score at most this many words (the most recent messages, whole)")

    def to_json(self) -> dict[str, Any]:
        return {"versions": [{"version": v, "sha256": sha} for v, sha in self.versions],
                "max_words": self.max_words}

    @classmethod
    def from_json(cls, data: Any) -> EvaluateParams:
        what = "task 'evaluate'"
        data = _object(data, what)
        versions = _get(data, "versions", what)
        if not isinstance(versions, list) or not 1 <= len(versions) <= MAX_VERSIONS:
            raise WireError(f"{what} 'versions' must list 1..{MAX_VERSIONS} model versions")
        pairs = tuple((_int(v, "version", f"{what} version"),
                       _text(v, "sha256", f"{what} version", _SHA256))
                      for v in (_object(v, f"{what} version") for v in versions))
        return cls(pairs, _int(data, "max_words", what, 1, MAX_WORDS))


@dataclass(frozen=True)
class SecAggTask:
    """A secure round's part of a task: the protocol's public config, this device's client
    id in it, and when its keys must be advertised (training must end before)."""

    client_id: int = _doc("this device's client id in the protocol, 1..n", minimum=1)
    config: SecAggConfig = _doc("federated.secagg SecAggConfig.to_dict()",
                                schema={"type": "object"})
    advertise_by: float = _doc("unix time: train, then advertise keys before this")

    def to_json(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "config": self.config.to_dict(),
                "advertise_by": self.advertise_by}

    @classmethod
    def from_json(cls, data: Any) -> SecAggTask:
        what = "task 'secagg'"
        data = _object(data, what)
        try:
            config = SecAggConfig.from_dict(_get(data, "config", what))
        except SecAggError as err:
            raise WireError(f"secure-aggregation config: {err}") from None
        return cls(_int(data, "client_id", what, 1, config.num_clients), config,
                   _number(data, "advertise_by", what, 0))


@dataclass(frozen=True)
class Task:
    """What the server asks of one device in one round: the model to start from, how to
    train, the privacy terms the device checks against its own policy (it sizes its noise
    itself from them), in a secure round its part in the protocol, and in a compressed
    round the codec's parameters (`federated.compression`).

    `kind` says what to do: "train" (with `train`), or "evaluate" (with `evaluate`, no
    `train`, always plain): score model versions and report noised sums."""

    round_id: int
    model_version: int
    model_sha256: str
    deadline: float = _doc("unix time: the upload (or report) must arrive before")
    train: TrainParams | None = _doc("how to train: exactly in a training task")
    min_examples: int = _doc("a device with fewer messages does not take part (it decides; "
                             "check-in does not say how many it has)")
    clip_norm: float
    noise_multiplier: float = _doc("z: the device sizes its own noise from z, clip_norm, "
                                   "min_reports, dishonest_share and secure_aggregation "
                                   "(federated.privacy.device_noise_stddev)")
    min_reports: int
    dishonest_share: float
    secure_aggregation: bool
    secagg: SecAggTask | None = _doc("exactly when secure_aggregation", default=None)
    compression: Compression | None = _doc(
        "compressed rounds: federated.compression Compression.to_dict(), scheme 'ddg16' or "
        "'ddg16-full' in secure rounds, 'dg-q5' (every coordinate, requantized after the "
        "noise, deflated) in plain ones; the device checks it (the seed is the round's, "
        "federated.compression.round_seed; a plain round's kept, block, bits and scale are "
        "the ones it derives, Compression.plain) and adds its discrete Gaussian noise",
        schema={"type": "object"},
        default=None)
    model_compact_sha256: str | None = _doc("compressed rounds: the sha256 of "
                                            "/v1/models/{version}/compact, the int8 download",
                                            default=None)
    kind: str = _doc("absent: a training task (with 'train'); 'evaluate': score "
                     "'evaluate.versions' and send the report to "
                     "/v1/rounds/{round_id}/evaluation", enum=list(TASK_KINDS), default="train")
    evaluate: EvaluateParams | None = _doc("what to score: exactly in an evaluation task",
                                           default=None)

    def __post_init__(self) -> None:
        """The parts agree: WireError if the server sent (or would build) a task whose
        parts do not fit its kind, or whose secure or compressed part is not this round's."""
        training = self.kind == "train"
        if (self.train is not None) != training or (self.evaluate is not None) == training:
            raise WireError(f"a {self.kind!r} task has 'train' exactly when it trains and "
                            "'evaluate' exactly when it evaluates")
        if not training and (self.secure_aggregation or self.compression is not None):
            raise WireError("an evaluation task is plain: no secure aggregation, no "
                            "compression")
        if self.secure_aggregation != (self.secagg is not None):
            raise WireError("a task has its 'secagg' part exactly when secure_aggregation "
                            "is true")
        if self.secagg is not None and self.secagg.config.round_id != self.round_id:
            raise WireError(f"task 'secagg' config is for round {self.secagg.config.round_id},"
                            f" the task for round {self.round_id}")
        if self.compression is not None:
            self._check_compression(self.compression)

    def _check_compression(self, spec: Compression) -> None:
        """The seed derives from this round and its model, the clip norm is the task's, a
        secure round sums exactly the codec's 16-bit words and a plain round sends the
        plain form (`compression.PLAIN_SCHEME`) with the parameters the device derives
        itself (`Compression.plain`: a larger scale could overflow its noised integers)."""
        try:
            seed = round_seed(self.round_id, self.model_sha256)
        except CompressionError as err:
            raise WireError(f"task 'compression': {err}") from None
        if spec.seed != seed or spec.clip_norm != self.clip_norm:
            raise WireError("task 'compression': the seed or clip norm is not the round's")
        if spec.modular != self.secure_aggregation:
            raise WireError(f"task 'compression': scheme {spec.scheme!r} is for "
                            f"{'plain' if self.secure_aggregation else 'secure'} rounds")
        own = None if spec.modular else Compression.plain(seed, spec.dimension, spec.clip_norm)
        if own and ((spec.kept, spec.block, spec.bits) != (own.kept, own.block, own.bits)
                    or not math.isclose(spec.scale, own.scale, rel_tol=1e-12)):
            raise WireError("task 'compression': a plain round's kept, block, bits and scale "
                            f"must be the ones the device derives ({own.kept}, {own.block}, "
                            f"{own.bits}, {own.scale!r})")
        config = self.secagg.config if self.secagg else None
        if config and (not isinstance(config.encoding, ModularIntegers)
                       or config.dimension != spec.kept):
            raise WireError("task 'compression': the secure round does not sum the "
                            "compressed words")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"round_id": self.round_id, "model_version": self.model_version,
                                "model_sha256": self.model_sha256, "deadline": self.deadline}
        if self.train is not None:
            data["train"] = self.train.to_json()
        data.update(min_examples=self.min_examples, clip_norm=self.clip_norm,
                    noise_multiplier=self.noise_multiplier, min_reports=self.min_reports,
                    dishonest_share=self.dishonest_share,
                    secure_aggregation=self.secure_aggregation)
        if self.secagg is not None:
            data["secagg"] = self.secagg.to_json()
        if self.compression is not None:
            data["compression"] = self.compression.to_dict()
        if self.model_compact_sha256 is not None:
            data["model_compact_sha256"] = self.model_compact_sha256
        if self.evaluate is not None:  # absent "kind": a training task
            data.update(kind=self.kind, evaluate=self.evaluate.to_json())
        return data

    @classmethod
    def from_json(cls, data: Any) -> Task:
        """The task in a check-in answer; WireError naming the first field that is wrong."""
        what = "task"
        data = _object(data, what)
        secure = _bool(data, "secure_aggregation", what)
        kind = _choice(data, "kind", what, TASK_KINDS) if "kind" in data else "train"
        evaluating = kind == "evaluate"
        return cls(
            round_id=_int(data, "round_id", what), model_version=_int(data, "model_version", what),
            model_sha256=_text(data, "model_sha256", what, _SHA256),
            deadline=_number(data, "deadline", what, 0),
            train=TrainParams.from_json(_get(data, "train", what))
            if not evaluating or "train" in data else None,
            min_examples=_int(data, "min_examples", what, 1),
            clip_norm=_number(data, "clip_norm", what, 0, above=True),
            noise_multiplier=_number(data, "noise_multiplier", what, 0),
            min_reports=_int(data, "min_reports", what, 1),
            dishonest_share=_number(data, "dishonest_share", what, 0, 1, below=True),
            secure_aggregation=secure,
            secagg=SecAggTask.from_json(_get(data, "secagg", what)) if secure else None,
            compression=_compression(data["compression"]) if "compression" in data else None,
            model_compact_sha256=_text(data, "model_compact_sha256", what, _SHA256)
            if "model_compact_sha256" in data else None,
            kind=kind,
            evaluate=EvaluateParams.from_json(_get(data, "evaluate", what))
            if evaluating or "evaluate" in data else None)


def _compression(data: Any) -> Compression:
    try:
        return Compression.from_dict(data)
    except CompressionError as err:
        raise WireError(f"task 'compression': {err}") from None


@dataclass(frozen=True)
class NoTask:
    """No task now: come back after `retry_after` seconds; `reason` says why, in words."""

    reason: str
    retry_after: float

    def to_json(self) -> dict[str, Any]:
        return {"task": None, "retry_after": round(float(self.retry_after), 1),
                "reason": self.reason}

    @classmethod
    def from_json(cls, data: Any) -> NoTask:
        what = "check-in answer"
        data = _object(data, what)
        return cls(_text(data, "reason", what), _number(data, "retry_after", what, 0))


Checkin = Task | NoTask  # the answer to a check-in


def checkin_to_json(answer: Checkin) -> dict[str, Any]:
    """The body of a check-in answer."""
    return {"task": answer.to_json()} if isinstance(answer, Task) else answer.to_json()


def checkin_from_json(data: Any) -> Checkin:
    """A check-in answer's body as a Task or a NoTask; WireError if it is neither."""
    task = _get(_object(data, "check-in answer"), "task", "check-in answer")
    return NoTask.from_json(data) if task is None else Task.from_json(task)


# ------------------------------------------------------------------------ answers to reports

def _accepted(data: Any, what: str) -> dict:
    data = _object(data, what)
    if _get(data, "accepted", what) is not True:
        raise WireError(f"{what} 'accepted' must be true, got {data['accepted']!r}")
    return data


@dataclass(frozen=True)
class Receipt:
    """The server took a report (an update, or an evaluation report) into a round, which
    now holds `reports` of them; the same answer again for a resend under the same key."""

    round_id: int
    reports: int

    def to_json(self) -> dict[str, Any]:
        return {"accepted": True, "round_id": self.round_id, "reports": self.reports}

    @classmethod
    def from_json(cls, data: Any) -> Receipt:
        what = "report answer"
        data = _accepted(data, what)
        return cls(_int(data, "round_id", what), _int(data, "reports", what, 1))


@dataclass(frozen=True)
class SecAggReceipt:
    """The server took a secure-aggregation message of `phase` from protocol client
    `client_id` in the round (or had taken this very message before)."""

    round_id: int
    phase: str
    client_id: int

    def to_json(self) -> dict[str, Any]:
        return {"accepted": True, "round_id": self.round_id, "phase": self.phase,
                "client_id": self.client_id}

    @classmethod
    def from_json(cls, data: Any) -> SecAggReceipt:
        what = "secure-aggregation answer"
        data = _accepted(data, what)
        return cls(_int(data, "round_id", what), _text(data, "phase", what),
                   _int(data, "client_id", what, 1))


# ------------------------------------------------------------------------ status

@dataclass(frozen=True)
class PrivacyStatus:
    """What a device reads of `GET /v1/status` ("privacy"): the most epsilon any device
    has spent as the server accounts it, the server's budget, and their delta."""

    epsilon_spent_max: float | None  # None: no noise, so no guarantee
    epsilon_budget: float | None  # None: no budget
    delta: float

    def to_json(self) -> dict[str, Any]:
        return {"epsilon_spent_max": self.epsilon_spent_max,
                "epsilon_budget": self.epsilon_budget, "delta": self.delta}

    @classmethod
    def from_json(cls, status: Any) -> PrivacyStatus:
        """From the whole status body."""
        what = "status 'privacy'"
        data = _object(_get(_object(status, "status"), "privacy", "status"), what)
        spent, budget = (None if data.get(key) is None else _number(data, key, what, 0)
                         for key in ("epsilon_spent_max", "epsilon_budget"))
        return cls(spent, budget, _number(data, "delta", what, 0, 1, above=True, below=True))
