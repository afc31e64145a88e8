"""Who may become a device: enrolment codes the operator issues, a rate limit per client
address, and the identity key each device binds when it enrols.

- Enrolling needs a code from `POST /v1/admin/enrolment-codes` (limited uses; listed and
  revocable). Each enrolment uses one; a code used up or revoked enrols nobody.
- Each enrolment binds an Ed25519 public key the device generated (`federated.identity`).
  One key, one device: a device that lost its token gets a new one by signing a server
  challenge with that key and keeps its device id, participation count and privacy spend;
  a new key is a new device and needs a new code.
- Enrolment and recovery calls are counted per client address in fixed windows
  (`enrol_rate_limit` calls per `enrol_rate_seconds`), in the database so that every
  server process shares the count; over the limit: 429 with Retry-After.
"""
from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregation_server.db import Database, Device, EnrolmentCode, RateWindow, RecoveryChallenge
from aggregation_server.errors import ApiError
from aggregation_server.storage import sha256_hex
from federated import identity

log = logging.getLogger("aggregation_server.enrolment")
CHALLENGE_SECONDS = 300.0
MAX_CODE_USES = 1_000_000


class RateLimited(ApiError):
    """429 with the seconds to wait (the API sends them as Retry-After)."""

    def __init__(self, retry_after: float, what: str) -> None:
        wait = max(1, math.ceil(retry_after))
        super().__init__(429, "rate_limited", f"too many {what} requests from this address: "
                                              f"try again in {wait} s", retry_after=wait)


def code_id(code: str) -> str:
    """The public name of a code (listed, revoked by): a prefix of its hash."""
    return sha256_hex(code.encode())[:12]


class Enrolment:
    """Enrolment codes, rate limits, enrolment and token recovery, on the shared database."""

    def __init__(self, db: Database, limit: int, window: float,
                 clock: Callable[[], float]) -> None:
        self.db, self.limit, self.window = db, limit, window
        self.clock = clock  # replaced in tests: no sleeping to let a window pass

    # ----- the operator's codes ---------------------------------------------------------
    def issue_code(self, uses: int, label: str = "") -> dict[str, Any]:
        """A new code good for `uses` enrolments; the code itself is shown only here."""
        code = "pk-" + secrets.token_urlsafe(18)
        row = EnrolmentCode(id=code_id(code), code_sha256=sha256_hex(code.encode()), uses=uses,
                            used=0, label=label, created_at=self.clock())
        with self.db.write() as s:
            s.add(row)
            s.flush()
            out = dict(self.code_json(row), code=code)
        log.info("enrolment_code_issued", extra={"code_id": row.id, "uses": uses})
        return out

    def list_codes(self) -> list[dict[str, Any]]:
        with self.db.read() as s:
            rows = s.scalars(select(EnrolmentCode).order_by(EnrolmentCode.created_at)).all()
            return [self.code_json(r) for r in rows]

    def revoke_code(self, ident: str) -> dict[str, Any]:
        with self.db.write() as s:
            row = s.get(EnrolmentCode, ident, with_for_update=True)
            if row is None:
                raise ApiError(404, "no_such_code", f"there is no enrolment code {ident!r}")
            row.revoked_at = row.revoked_at or self.clock()
            out = self.code_json(row)
        log.info("enrolment_code_revoked", extra={"code_id": ident})
        return out

    @staticmethod
    def code_json(row: EnrolmentCode) -> dict[str, Any]:
        return {"id": row.id, "label": row.label, "uses": row.uses, "used": row.used,
                "remaining": 0 if row.revoked_at else row.uses - row.used,
                "created_at": row.created_at, "revoked": row.revoked_at is not None}

    # ----- rate limit -------------------------------------------------------------------
    def check_rate(self, address: str, what: str) -> None:
        """Count one call from `address`; RateLimited (429) when over the window's limit."""
        try:
            self._count_call(f"{what}:{address}"[:200], what)
        except IntegrityError:  # two first calls raced to create the row: count on it
            self._count_call(f"{what}:{address}"[:200], what)

    def _count_call(self, key: str, what: str) -> None:
        now = self.clock()
        with self.db.write() as s:
            row = s.get(RateWindow, key, with_for_update=True)
            if row is None:
                s.add(RateWindow(key=key, window_start=now, count=1))
                return
            if now >= row.window_start + self.window or now < row.window_start:
                row.window_start, row.count = now, 1
                return
            if row.count >= self.limit:
                raise RateLimited(row.window_start + self.window - now, what)
            row.count += 1

    # ----- devices ----------------------------------------------------------------------
    def enrol(self, code: object, key_text: object) -> dict[str, str]:
        """A new device bound to this identity key, using one use of `code`."""
        if not isinstance(code, str) or not code:
            raise ApiError(401, "enrolment_code_required",
                           "enrolling needs an enrolment code from the server's operator: "
                           "send it as 'enrolment_code'")
        key_text = self._key(key_text)
        device_id, token = secrets.token_hex(16), secrets.token_urlsafe(32)
        with self.db.write() as s:
            row = s.scalar(select(EnrolmentCode).where(
                EnrolmentCode.code_sha256 == sha256_hex(code.encode())).with_for_update())
            if row is None or row.revoked_at is not None or row.used >= row.uses:
                why = ("is not known" if row is None else "was revoked" if row.revoked_at
                       else "has no uses left")
                raise ApiError(403, "bad_enrolment_code",
                               f"this enrolment code {why}: ask the server's operator for a "
                               "new one")
            if s.scalar(select(Device.id).where(Device.identity_key == key_text)):
                raise ApiError(409, "identity_enrolled",
                               "a device with this identity key is enrolled already: recover "
                               "its token with POST /v1/devices/challenge and /recover")
            row.used += 1
            s.add(Device(id=device_id, token_sha256=sha256_hex(token.encode()),
                         created_at=self.clock(), identity_key=key_text,
                         enrolment_code=row.id))
            used = row.id
        log.info("device_enrolled", extra={"device_id": device_id, "code_id": used})
        return {"device_id": device_id, "token": token}

    def challenge(self, key_text: object) -> dict[str, Any]:
        """A one-time challenge for the device bound to this key to sign."""
        key_text = self._key(key_text)
        now = self.clock()
        with self.db.write() as s:
            device_id = self._device_by_key(s, key_text)
            for old in s.scalars(select(RecoveryChallenge).where(
                    RecoveryChallenge.device_id == device_id)):
                s.delete(old)
            challenge = secrets.token_urlsafe(32)
            s.add(RecoveryChallenge(challenge=challenge, device_id=device_id,
                                    expires_at=now + CHALLENGE_SECONDS))
        return {"challenge": challenge, "expires_at": now + CHALLENGE_SECONDS}

    def recover(self, key_text: object, challenge: object, signature: object) -> dict[str, str]:
        """A new token for the device bound to this key, if it signed the challenge."""
        key_text = self._key(key_text)
        if not isinstance(challenge, str) or not 0 < len(challenge) <= 64:
            raise ApiError(400, "bad_field", "'challenge' must be the text /challenge gave")
        try:
            identity.verify(key_text, identity.RECOVERY_CONTEXT, challenge.encode(), signature)
        except identity.IdentityError as err:
            raise ApiError(403, "bad_signature", str(err)) from None
        token = secrets.token_urlsafe(32)
        with self.db.write() as s:
            device_id = self._device_by_key(s, key_text)
            found = s.get(RecoveryChallenge, challenge, with_for_update=True)
            if found is None or found.device_id != device_id or found.expires_at < self.clock():
                raise ApiError(403, "bad_challenge", "this challenge is unknown, expired or "
                                                     "for another device: ask for a new one")
            s.delete(found)  # used once
            s.get(Device, device_id).token_sha256 = sha256_hex(token.encode())
        log.info("device_token_recovered", extra={"device_id": device_id})
        return {"device_id": device_id, "token": token}

    @staticmethod
    def _key(key_text: object) -> str:
        try:
            identity.parse_public_key(key_text)
        except identity.IdentityError as err:
            raise ApiError(400, "bad_identity_key", f"{err}: send the device's Ed25519 public "
                                                    "key as 'identity_key'") from None
        return str(key_text)

    @staticmethod
    def _device_by_key(s: Session, key_text: str) -> str:
        found = s.scalar(select(Device.id).where(Device.identity_key == key_text))
        if found is None:
            raise ApiError(404, "unknown_identity", "no device is enrolled with this identity "
                                                    "key: enrol with an enrolment code")
        return found

