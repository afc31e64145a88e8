"""The error types the API turns into `{"error": code, "message": ...}`: refusals (4xx), and
resource faults (507 disk full, 503 storage or database unavailable) that say when to retry."""
from __future__ import annotations

import errno

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

FULL = (errno.ENOSPC, errno.EDQUOT)
UNAVAILABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
RETRY_FULL, RETRY_UNAVAILABLE = 60, 10  # seconds in Retry-After


class ApiError(Exception):
    """A refusal: HTTP status, a short machine-readable code and exactly what was wrong."""

    def __init__(self, status: int, code: str, message: str,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


def resource_fault(err: BaseException) -> ApiError | None:
    """The answer to a disk or database fault (nothing was acknowledged), or None for a bug."""
    if isinstance(err, OSError) and err.errno in FULL:
        return _full("disk")
    if isinstance(err, OSError) and err.errno in UNAVAILABLE:
        return ApiError(503, "storage_unavailable", "the server cannot write its data "
                        f"({err.strerror}); nothing was stored: retry in {RETRY_UNAVAILABLE} s",
                        RETRY_UNAVAILABLE)
    if not isinstance(err, SQLAlchemyError):
        return None
    text = str(getattr(err, "orig", None) or err).lower()
    if "full" in text and ("disk" in text or "database" in text):
        return _full("database")  # SQLite: "database or disk is full"
    if isinstance(err, (DBAPIError, PoolTimeout)) and (
            isinstance(err, PoolTimeout) or err.connection_invalidated
            or type(err).__name__ in ("OperationalError", "InterfaceError")):
        return ApiError(503, "database_unavailable", "the server cannot reach its database; "
                        f"nothing was stored: retry in {RETRY_UNAVAILABLE} s", RETRY_UNAVAILABLE)
    return None


def _full(what: str) -> ApiError:
    return ApiError(507, "insufficient_storage", f"the server's {what} is full; nothing was "
                    f"stored: retry in {RETRY_FULL} s", RETRY_FULL)
