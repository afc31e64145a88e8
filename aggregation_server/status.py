"""What `GET /v1/status`, the dashboard and the Prometheus gauges show, read from the database."""
from __future__ import annotations

import math
from typing import Any

from sqlalchemy import func, select

from aggregation_server import accounting
from aggregation_server.config import RoundConfig
from aggregation_server.db import Device, ModelVersion, Round, ServerState, Task
from aggregation_server.rounds import CHARGED, RoundService
from aggregation_server.secure import SecureAggregation
from federated.privacy import honest_reports
from federated.protocol import PrivacyStatus

HISTORY = 200  # rounds and versions listed


def finite(value: float | None) -> float | None:
    """JSON has no infinity: non-finite numbers become null."""
    return value if value is None or math.isfinite(value) else None


def round_json(r: Round) -> dict[str, Any]:
    config = RoundConfig.from_dict(r.config)
    return {"id": r.id, "state": r.state, "model_version": r.model_version,
            "new_version": r.new_version, "opened_at": r.opened_at, "deadline": r.deadline,
            "closed_at": r.closed_at, "target": r.target, "minimum": r.minimum,
            "capacity": r.capacity, "tasks_issued": r.tasks_issued, "reports": r.reports,
            "reason": r.reason, "metrics": r.metrics or {}, "epsilon_max": finite(r.epsilon_max),
            "epsilon_max_model_users": finite(r.epsilon_max_model_users),
            "noise_multiplier": config.noise_multiplier, "clip_norm": config.clip_norm,
            "secure_aggregation": config.secure_aggregation,
            "aggregation": aggregation_json(r), "kind": r.kind, "evaluation": r.evaluation}


def aggregation_json(r: Round) -> dict[str, Any] | None:
    """Why a closing round has no new version yet: its failing aggregation (None if none)."""
    if r.state != "closing" or r.last_error is None:
        return None
    return {"attempts": r.attempts, "failing_since": r.failing_since,
            "last_error": r.last_error, "next_attempt_at": r.lease_until}


def version_json(v: ModelVersion) -> dict[str, Any]:
    return {"version": v.version, "sha256": v.sha256, "size": v.size,
            "created_at": v.created_at, "round_id": v.round_id, "reports": v.reports,
            "metrics": v.metrics or {}, "provenance": v.provenance or {}}


def build_status(service: RoundService) -> dict[str, Any]:
    """The whole picture: training state, current round, devices, versions, privacy."""
    with service.db.read() as s:
        state = s.get(ServerState, 1)
        config = RoundConfig.from_dict(state.config)
        rounds = s.scalars(select(Round).order_by(Round.id.desc()).limit(HISTORY)).all()
        versions = s.scalars(select(ModelVersion).order_by(ModelVersion.version.desc())
                             .limit(HISTORY)).all()
        enrolled = s.scalar(select(func.count()).select_from(Device))
        per_device = s.execute(select(Task.device_id, func.count()).where(
            CHARGED).group_by(Task.device_id)).all()
        done = s.scalar(select(func.count()).select_from(Round).where(Round.state == "closed"))
        abandoned = s.scalar(select(func.count()).select_from(Round)
                             .where(Round.state == "abandoned"))
        spent = service.epsilon_max(s, config)
        secure = SecureAggregation.outcomes(s)
    histogram: dict[str, int] = {}
    for _, n in per_device:
        histogram[str(n)] = histogram.get(str(n), 0) + 1
    latest = versions[0]
    return {
        "time": service.clock(),
        "training": "running" if state.training else "stopped",
        "blocked_reason": state.blocked_reason,
        "round": round_json(rounds[0]) if rounds else None,
        "rounds_closed": done, "rounds_abandoned": abandoned,
        "secure_aggregation": secure,
        "devices": {"enrolled": enrolled, "participants": len(per_device),
                    "participations": histogram},
        "model": {"version": latest.version, "sha256": latest.sha256,
                  "num_params": service.num_params},
        "versions": [version_json(v) for v in reversed(versions)],
        "rounds": [round_json(r) for r in reversed(rounds)],
        "privacy": privacy_json(config, spent, done),
        "evaluation": evaluation_json(rounds),
        "config": config.to_dict(),
    }


def evaluation_json(rounds: list[Round]) -> dict[str, Any]:
    """Federated evaluation: quality against model version (aggregates only, each figure
    with the 95% interval of its noise), and the reports of each evaluation round."""
    evals = [r for r in reversed(rounds) if r.kind == "evaluate"]
    curve = [{"round_id": r.id, "model_version": v["version"],
              "reports": r.evaluation["result"]["reports"], **v["figures"]}
             for r in evals if r.state == "closed" and (r.evaluation or {}).get("result")
             for v in r.evaluation["result"]["versions"][:1]]
    return {"quality": curve, "latest": curve[-1] if curve else None,
            "rounds": [{"round_id": r.id, "state": r.state, "model_version": r.model_version,
                        "reports": r.reports, "minimum": r.minimum, "reason": r.reason,
                        "result": (r.evaluation or {}).get("result")} for r in evals]}


def privacy_json(config: RoundConfig, spent: dict[str, float], done: int) -> dict[str, Any]:
    """Epsilon spent and at the cap against each adversary, in numbers and words."""
    at_cap = {a: accounting.guarantee(config, done, a) for a in accounting.AGAINST}
    figures = [{"against": a, "label": label,
                "spent_max": finite(spent[a]), "at_cap": finite(at_cap[a]),
                "spent_text": accounting.describe(spent[a], config.delta),
                "at_cap_text": accounting.describe(at_cap[a], config.delta)}
               for a, label in accounting.AGAINST.items()]
    devices_read = PrivacyStatus(finite(spent["server"]), config.epsilon_budget, config.delta)
    return {
        "budget_text": budget_text(config, spent["server"], at_cap["server"]),
        **devices_read.to_json(),
        "epsilon_spent_max_model_users": finite(spent["model_users"]),
        "epsilon_at_cap": finite(at_cap["server"]),
        "epsilon_at_cap_model_users": finite(at_cap["model_users"]),
        "figures": figures,
        "noise_multiplier": config.noise_multiplier,
        "clip_norm": config.clip_norm, "device_noise_stddev": accounting.device_noise_stddev(config),
        "dishonest_share": config.dishonest_share,
        "honest_reports": honest_reports(config.min_reports, config.dishonest_share),
        "secure_aggregation": config.secure_aggregation,
        "server_assumed": "honest-but-curious",
        "participation_cap": config.participation_cap,
        "sampling_rate": config.sampling_rate,
        "accountant": "RDP, dp-accounting (per device, its rounds composed with their own "
                      "noise multipliers; charged when the server accepts a report)",
        "assumptions": accounting.assumptions(config),
    }


def budget_text(config: RoundConfig, spent: float, at_cap: float) -> str:
    """The privacy budget in one plain sentence (never 'None' or 'inf')."""
    delta = f"delta {config.delta:g}"
    if config.noise_multiplier <= 0:
        return ("Rounds add no noise, so there is no privacy guarantee at all; set "
                "noise_multiplier above 0 to have one.")
    most = ("no device has spent any privacy yet" if spent == 0
            else f"the most any device has spent is epsilon {spent:.2f}")
    cap = (f"a device that joins all {config.participation_cap} rounds it may would reach "
           f"epsilon {at_cap:.2f}")
    if config.epsilon_budget is None:
        return (f"No budget is set, so no round is refused for privacy; {most} against the "
                f"server, and {cap} ({delta}).")
    share = f" ({spent / config.epsilon_budget:.0%} of it)" if spent > 0 else ""
    return (f"Each device may spend at most epsilon {config.epsilon_budget:g} against the "
            f"server ({delta}); {most}{share}, and {cap}.")


def gauges(service: RoundService) -> dict[str, Any]:
    """Flat numbers for Prometheus."""
    st = build_status(service)
    r = st["round"] or {}
    budget = st["privacy"]["epsilon_budget"]
    return {"pk_round_id": r.get("id"), "pk_round_reports": r.get("reports"),
            "pk_round_tasks_issued": r.get("tasks_issued"), "pk_round_target": r.get("target"),
            "pk_model_version": st["model"]["version"],
            "pk_devices_enrolled": st["devices"]["enrolled"],
            "pk_rounds_closed": st["rounds_closed"], "pk_rounds_abandoned": st["rounds_abandoned"],
            "pk_training_running": 1 if st["training"] == "running" else 0,
            "pk_epsilon_spent_max": st["privacy"]["epsilon_spent_max"],
            "pk_epsilon_spent_max_model_users": st["privacy"]["epsilon_spent_max_model_users"],
            "pk_epsilon_budget": -1 if budget is None else budget,
            "pk_aggregation_failed_attempts": (r.get("aggregation") or {}).get("attempts", 0),
            **evaluation_gauges(st["evaluation"]["latest"]),
            "pk_secagg_rounds_abandoned": st["secure_aggregation"]["abandoned_by_cause"],
            "pk_secagg_device_aborts": st["secure_aggregation"]["device_aborts"]}


def evaluation_gauges(latest: dict[str, Any] | None) -> dict[str, float | None]:
    """The latest federated evaluation's top-1 (with its interval) and its model version."""
    top1 = (latest or {}).get("top1") or {}
    return {"pk_eval_top1": top1.get("value"), "pk_eval_top1_ci_low": top1.get("ci_low"),
            "pk_eval_top1_ci_high": top1.get("ci_high"),
            "pk_eval_model_version": (latest or {}).get("model_version")}
