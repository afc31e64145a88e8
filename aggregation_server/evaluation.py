"""Federated evaluation rounds: devices score model versions where their text lives; the
round kind's policy, `EvaluationPolicy` (`strategy.RoundPolicy`).

An evaluation round is a round of kind "evaluate" in the same life cycle as training
(aggregation_server.rounds): the same check-in, capacity, deadline, minimum of reports,
participation cap and privacy charge, but its tasks carry no training and its reports no
update: seven clipped and noised sums per model version (federated.evaluation). It opens
instead of a training round when `evaluate_every` > 0 and the latest model version is a
multiple of it with no evaluation round yet (so version 0, the starting model, first). It
evaluates the latest version and, with `eval_previous`, the one before it on the same
words (a paired comparison).

Privacy, stated as for training: an evaluation round is always plain (no secure
aggregation), so each device adds the full noise z*C itself (`device_noise_stddev` of a
plain round) and is charged like a plain training round, at z against the server and
z*sqrt(h) against whoever sees only the published aggregate. Reports are kept only until
the round closes; only the round's aggregate (with at least min_reports reports) is
published, in /v1/status, the dashboard and /metrics.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregation_server import accounting
from aggregation_server.config import RoundConfig
from aggregation_server.db import ModelVersion, Round, Task
from aggregation_server.errors import ApiError
from aggregation_server.strategy import Accepted, FedAvgPolicy, Upload
from federated import evaluation as ev
from federated import protocol

if TYPE_CHECKING:
    from aggregation_server.rounds import RoundService


def parse_kinds(data: dict[str, Any]) -> tuple[str, ...]:
    """The task kinds a check-in accepts (default: training only, as devices before
    federated evaluation understood)."""
    kinds, known = data.get("kinds", ["train"]), protocol.TASK_KINDS
    if not isinstance(kinds, list) or not kinds or not all(k in known for k in kinds):
        raise ApiError(400, "bad_field", f"'kinds' must be a non-empty list of {list(known)}")
    return tuple(kinds)


class EvaluationPolicy(FedAvgPolicy):
    """Evaluation rounds: who gets a task, when the round closes and what the server does
    after an outage are a plain training round's (inherited); what runs it, its task, what
    it accepts and its result (published figures, no model version) are its own."""

    makes_version = False

    def __init__(self, service: RoundService) -> None:
        self.service = service

    def due(self, s: Session, config: RoundConfig, latest: ModelVersion) -> bool:
        """Whether the next round should evaluate the latest version."""
        if config.evaluate_every <= 0 or latest.version % config.evaluate_every:
            return False
        return s.scalar(select(Round.id).where(Round.kind == "evaluate",
                                               Round.model_version == latest.version)
                        .limit(1)) is None

    def round_config(self, config: RoundConfig) -> RoundConfig:
        """The live config, plain (each device adds the full noise itself; seven numbers are
        not worth a secure-aggregation protocol run) and uncompressed (there is no update to
        compress)."""
        return replace(config, secure_aggregation=False, compression="none")

    def supports(self, config: RoundConfig) -> bool:
        """Always: evaluation rounds are plain."""
        return True

    def plan(self, s: Session, config: RoundConfig, latest: ModelVersion) -> dict[str, Any]:
        """What the round evaluates: the versions (newest first, whose files the server
        still has) and the word cap."""
        versions = [latest]
        previous = s.get(ModelVersion, latest.version - 1) if latest.version > 0 else None
        if config.eval_previous and previous and self.service.blobs.exists(previous.path):
            versions.append(previous)
        return {"versions": [{"version": v.version, "sha256": v.sha256} for v in versions],
                "max_words": config.eval_max_words}

    def task_fields(self, s: Session, r: Round, config: RoundConfig,
                    device_id: str) -> dict[str, Any]:
        """The training task's privacy terms, no `train`, and what to score."""
        versions = tuple((v["version"], v["sha256"]) for v in r.evaluation["versions"])
        return {"train": None, "kind": "evaluate",
                "evaluate": protocol.EvaluateParams(versions, r.evaluation["max_words"])}

    def accept(self, upload: Upload, r: Round, config: RoundConfig) -> Accepted:
        """The report's sums if a faithful device could have sent them; 4xx otherwise."""
        if upload.via != "evaluation":
            raise ApiError(409, "evaluation_round",
                           f"round {r.id} evaluates models: send the evaluation report "
                           f"to /v1/rounds/{r.id}/evaluation, not an update")
        return Accepted(None, None, {"sums": _sums(upload.body, r, config).tolist()})

    def close(self, service: RoundService, round_id: int) -> None:
        """Sum the round's reports, publish the aggregate with its noise intervals, and
        forget the reports."""
        with service.db.read() as s:
            r = s.get(Round, round_id)
            reports = [t.metrics["sums"] for t in s.scalars(select(Task).where(
                Task.round_id == round_id, Task.state == "submitted"))]
        result = summarize(r.evaluation, RoundConfig.from_dict(r.config), reports)
        with service.db.write() as s:
            r = s.get(Round, round_id, with_for_update=True, populate_existing=True)
            if r.state != "closing":
                return
            service.finish(s, r)
            r.evaluation = {**r.evaluation, "result": result}


def _sums(body: bytes, r: Round, config: RoundConfig) -> np.ndarray:
    """The report's sums if a faithful device could have sent them; 4xx otherwise."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, "bad_json", "the body must be a JSON object") from None
    if not isinstance(data, dict) or set(data) != {"sums"}:
        raise ApiError(400, "bad_field", "an evaluation report is {\"sums\": [[...], ...]}: "
                                         f"per model version evaluated, {len(ev.FIELDS)} "
                                         f"numbers ({', '.join(ev.FIELDS)})")
    try:
        return ev.check_report(data["sums"], len(r.evaluation["versions"]),
                               r.evaluation["max_words"], config.clip_norm,
                               accounting.device_noise_stddev(config))
    except ev.ReportError as err:
        raise ApiError(422, "invalid_report", str(err)) from None


def summarize(plan_: dict[str, Any], config: RoundConfig, reports: list) -> dict[str, Any]:
    """The published aggregate: per version its figures with 95% noise intervals, and the
    paired difference of top-1 (current - previous) when two versions were evaluated."""
    versions = plan_["versions"]
    total = np.sum(np.array(reports, dtype=np.float64), axis=0)
    raw = ev.from_wire(total, plan_["max_words"], config.clip_norm)
    sigma = ev.field_stddev(plan_["max_words"], config.clip_norm, len(versions),
                            accounting.device_noise_stddev(config) * math.sqrt(len(reports)))
    per = [{"version": v["version"], **ev.summarize(raw[i], sigma)}
           for i, v in enumerate(versions)]
    paired = ev.paired_difference(per[0], per[1]) if len(per) > 1 else None
    return {"reports": len(reports), "versions": per, "top1_difference": paired}
