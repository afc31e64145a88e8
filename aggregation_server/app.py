"""The Flask app factory.

Production: run several processes under gunicorn with `aggregation_server.deploy.gunicorn_conf`,
configured by environment (or a config file named by `PK_CONFIG`), all sharing one database
(PostgreSQL for more than one host, with `PK_BLOB_STORE=database` so that models and updates
are in it too):

    PK_DATA_DIR=/srv/pk PK_DB_URL=postgresql+psycopg://pk@db/pk PK_ADMIN_TOKEN=... \\
        gunicorn -c python:aggregation_server.deploy.gunicorn_conf \\
        'aggregation_server.app:create_app()'

Start once with `python -m aggregation_server --init-model ... --tokenizer ...` (or set
`PK_INIT_MODEL` and `PK_TOKENIZER`) to store model version 0. Don't use gunicorn's
`--preload`: each worker process starts its own round worker thread after the fork.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from aggregation_server.api import BLUEPRINTS
from aggregation_server.clock import OffsetClock
from federated.clock import Clock, SystemClock
from aggregation_server.config import Settings, load_settings
from aggregation_server.dashboard import dashboard
from aggregation_server.db import Database
from aggregation_server.errors import ApiError, resource_fault
from aggregation_server.logs import configure_logging
from aggregation_server.metrics import ServerMetrics
from aggregation_server.rounds import RoundService
from aggregation_server.secure import SecureAggregation
from aggregation_server.secure_api import secagg
from aggregation_server.status import gauges
from aggregation_server.storage import blob_store
from aggregation_server.strategy import FedAvgPolicy
from aggregation_server.worker import RoundWorker

log = logging.getLogger("aggregation_server.app")
prometheus = Blueprint("prometheus", __name__)


@prometheus.get("/metrics")
def metrics() -> Response:
    registry = current_app.extensions["pk.service"].metrics.scrape
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def admin_token(settings: Settings) -> str:
    """The configured admin token, or one generated once into <data_dir>/admin_token."""
    if settings.admin_token:
        return settings.admin_token
    path = Path(settings.data_dir) / "admin_token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            token = path.read_text().strip()
            if token:
                return token
            time.sleep(0.1)
        raise RuntimeError(f"{path} is empty") from None
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("admin_token_created", extra={"path": str(path)})
    return token


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> Flask:
    """A ready app: database schema, model version 0, blueprints, error handlers, and the
    round worker (`aggregation_server.worker`), the only place rounds advance.
    `clock` is the server's time (the wall clock unless a test passes a `ManualClock`)."""
    settings = settings or load_settings()
    if clock is None and settings.clock_offset_file:
        clock = OffsetClock(settings.clock_offset_file)
    configure_logging(settings.log_level)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    clock = clock or SystemClock()
    service = RoundService(db, blob_store(settings.blob_store, settings.data_dir, db.engine,
                                          clock),
                           settings, ServerMetrics(), clock,
                           lambda svc: SecureAggregation(FedAvgPolicy(), svc))
    service.initialize()
    service.metrics.watch(lambda: gauges(service))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_update_bytes
    app.json.sort_keys = False
    app.extensions["pk.service"] = service
    app.extensions["pk.admin"] = admin_token(settings)
    for blueprint in (*BLUEPRINTS, secagg, dashboard, prometheus):
        app.register_blueprint(blueprint)
    _register_handlers(app)
    service.liveness.start()  # heartbeats: another host may take over our leases if we die
    service.open_round()  # the first round is open before the first request
    worker = RoundWorker(service, settings.tick_seconds)
    worker.start()
    worker.wake()  # deadlines, leases and outages as this process finds them
    app.extensions["pk.worker"] = worker
    log.info("app_ready", extra={"db": service.db.engine.url.render_as_string(hide_password=True),
                                 "data_dir": str(service.blobs.root),
                                 "model_params": service.num_params})
    return app


def shutdown(app: Flask) -> None:
    """Stop the round worker and the heartbeat, close database connections (tests, clean
    exits)."""
    worker = app.extensions.get("pk.worker")
    if worker:
        worker.stop()
        worker.join(timeout=10)
    app.extensions["pk.service"].liveness.stop()
    app.extensions["pk.service"].db.dispose()


def _register_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        response = jsonify(err.to_json())
        if err.retry_after is not None:
            response.headers["Retry-After"] = str(err.retry_after)
        return response, err.status

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        response = err.get_response()  # keeps headers such as Allow on a 405
        response.set_data(json.dumps({"error": (err.name or "error").lower().replace(" ", "_"),
                                      "message": err.description or err.name}))
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def _crash(err: Exception):
        fault = resource_fault(err)
        if fault is not None:  # a full disk or an unreachable database: retry later
            log.error("resource_fault", extra={"path": request.path, "status": fault.status,
                                               "error": f"{type(err).__name__}: {err}"})
            return _api_error(fault)
        log.exception("internal_error", extra={"path": request.path})
        return jsonify({"error": "internal", "message": "internal server error"}), 500

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _log_request(response: Response) -> Response:
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics = app.extensions["pk.service"].metrics
        metrics.requests.labels(request.method, endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(seconds)
        log.info("request", extra={"method": request.method, "path": request.path,
                                   "status": response.status_code,
                                   "ms": round(seconds * 1000, 1)})
        return response
