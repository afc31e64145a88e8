"""Prometheus metrics: request counters plus round gauges read from the database at scrape.

Counters and histograms count what this process saw; under gunicorn with
`PROMETHEUS_MULTIPROC_DIR` set (aggregation_server/deploy/gunicorn_conf.py sets it) every
worker writes them to that folder and a scrape of any worker sums all workers. Several
hosts: sum over hosts in Prometheus. The round, model and privacy gauges come from the
shared database, so every process reports the same values.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class ServerMetrics:
    """The metrics of one app, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pk_http_requests", "HTTP requests handled by this process",
                                ["method", "endpoint", "status"], registry=self.registry)
        self.latency = Histogram("pk_http_request_seconds", "HTTP request latency",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.updates = Counter("pk_updates", "Update uploads by outcome (accepted or error code)",
                               ["outcome"], registry=self.registry)
        self.aggregation = Histogram("pk_aggregation_seconds", "Time to aggregate a round",
                                     registry=self.registry,
                                     buckets=(.1, .25, .5, 1, 2, 5, 10, 30, 60, 120))

        self.scrape = self.registry  # what /metrics reports
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # every worker's counters, summed
            self.scrape = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.scrape)

    def watch(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Report the gauges of `snapshot()` (a flat dict of numbers) at each scrape."""
        self.scrape.register(_SnapshotCollector(snapshot))


class _SnapshotCollector:
    HELP = {
        "pk_round_id": "Id of the current or last round",
        "pk_round_reports": "Updates accepted in the current round",
        "pk_round_tasks_issued": "Tasks handed out in the current round",
        "pk_round_target": "Target reports of the current round",
        "pk_model_version": "Latest global model version",
        "pk_devices_enrolled": "Devices enrolled",
        "pk_rounds_closed": "Rounds aggregated into a new model",
        "pk_rounds_abandoned": "Rounds abandoned",
        "pk_training_running": "1 if training is started",
        "pk_epsilon_spent_max": "Largest epsilon spent by any device, against the server "
                                "(infinite: not reported)",
        "pk_epsilon_spent_max_model_users": "Largest epsilon spent by any device, against "
                                            "model users",
        "pk_epsilon_budget": "Epsilon budget (-1: none)",
        "pk_aggregation_failed_attempts": "Failed aggregation attempts of the current round "
                                          "(0: none; it is retried with backoff)",
        "pk_eval_top1": "Top-1 accuracy of the latest federated evaluation (devices' own "
                        "messages, noised aggregate)",
        "pk_eval_top1_ci_low": "Lower end of the 95% noise interval of pk_eval_top1",
        "pk_eval_top1_ci_high": "Upper end of the 95% noise interval of pk_eval_top1",
        "pk_eval_model_version": "Model version the latest federated evaluation scored",
    }
    COUNTERS = {  # name: (help, label) of counts by label from the database
        "pk_secagg_rounds_abandoned": ("Secure rounds abandoned, by cause (device_aborts: "
                                       "devices saw an inconsistent view)", "cause"),
        "pk_secagg_device_aborts": ("Devices that left a secure round, by reason", "reason"),
    }

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list:
        return []  # values come from the database at scrape time

    def collect(self):
        values = self.snapshot()
        for name, help_text in self.HELP.items():
            if values.get(name) is not None:
                yield GaugeMetricFamily(name, help_text, value=float(values[name]))
        for name, (help_text, label) in self.COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=[label])
            for key, count in sorted((values.get(name) or {}).items()):
                family.add_metric([key], float(count))
            yield family
