"""The calls the simulation makes to a server: admin config and training, status, the model."""
from __future__ import annotations

import time
from typing import Any

import requests

from fleet import FleetError

FINISHED = ("closed", "abandoned")


class ServerAdmin:
    """The calls the simulator makes: admin config and training, status, the global model."""

    def __init__(self, url: str, admin_token: str | None) -> None:
        self.url, self.http = url.rstrip("/"), requests.Session()
        self.headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.http.request(method, self.url + path, timeout=120, **kwargs)
        except requests.RequestException as err:
            raise FleetError(f"{method} {self.url}{path}: {err}") from None
        if response.status_code >= 400:
            raise FleetError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response

    def configure(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Stop training (abandoning an open round), apply `settings`, start training."""
        self.training("stop")
        config = self._call("PUT", "/v1/admin/config", json=settings, headers=self.headers)
        self.training("start")
        return config.json()

    def training(self, action: str) -> None:
        self._call("POST", "/v1/admin/training", json={"action": action}, headers=self.headers)

    def enrolment_code(self, uses: int) -> str:
        """An enrolment code for `uses` devices (the fleet's devices enrol with it)."""
        return self._call("POST", "/v1/admin/enrolment-codes", headers=self.headers,
                          json={"uses": uses, "label": "fleet simulation"}).json()["code"]

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/v1/status").json()

    def model(self, version: int | None = None) -> bytes:
        """The latest global model, or model `version`."""
        path = "/v1/model" if version is None else f"/v1/models/{int(version)}"
        return self._call("GET", path).content

    def tokenizer_json(self) -> str:
        return self._call("GET", "/v1/tokenizer").text

    def open_round(self, after: int, timeout: float = 120.0) -> dict[str, Any]:
        """The open round with an id above `after`, once there is one."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            r = status.get("round") or {}
            if r.get("state") == "open" and r["id"] > after and time.time() < r["deadline"]:
                return r
            if status.get("blocked_reason"):
                raise FleetError(f"the server opens no round: {status['blocked_reason']}")
            if time.monotonic() > deadline:
                raise FleetError(f"no round opened within {timeout:.0f} s: {r}")
            time.sleep(0.2)

    def finished_round(self, round_id: int, timeout: float) -> tuple[dict, dict]:
        """(round, status) once the round is closed or abandoned."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            found = next((r for r in status["rounds"] if r["id"] == round_id), None)
            if found and found["state"] in FINISHED:
                return found, status
            if time.monotonic() > deadline:
                raise FleetError(f"round {round_id} did not finish within {timeout:.0f} s")
            time.sleep(0.2)
