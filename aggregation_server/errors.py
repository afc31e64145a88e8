"""The one error type the API turns into `{"error": code, "message": ...}` with a 4xx status."""
from __future__ import annotations


class ApiError(Exception):
    """A refusal: HTTP status, a short machine-readable code and exactly what was wrong."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}
