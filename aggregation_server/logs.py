"""Structured logs: one JSON object per line on stderr, with any `extra=` fields."""
from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message",
                                                                            "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "event": record.getMessage(), "pid": record.process}
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send the server's logs to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("aggregation_server")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_pk_json", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._pk_json = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logging.Formatter.converter = time.gmtime
