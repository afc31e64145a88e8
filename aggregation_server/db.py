"""The database: SQLAlchemy 2.x models and transactions, on SQLite (WAL) or PostgreSQL.

Everything about rounds lives here, never only in a process's memory, so several
server processes sharing one database serve the same rounds. Write transactions are
serialised where they must be: on PostgreSQL by row locks (`SELECT ... FOR UPDATE`), on
SQLite by `BEGIN IMMEDIATE` (one writer at a time).
"""
from __future__ import annotations

from collections.abc import Iterator
import threading
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import (JSON, Boolean, Float, ForeignKey, Integer, LargeBinary, String, Text,
                        UniqueConstraint, create_engine, event, text)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

ROUND_STATES = ("open", "closing", "closed", "abandoned")
TASK_STATES = ("issued", "submitted", "aggregated", "discarded")


class Base(DeclarativeBase):
    pass


class ServerState(Base):
    """One row (id 1): whether training runs, the live round config, why rounds are blocked."""

    __tablename__ = "server_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    training: Mapped[bool] = mapped_column(Boolean)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    blocked_reason: Mapped[str | None] = mapped_column(Text, default=None)
    heartbeat: Mapped[float | None] = mapped_column(Float, default=None)  # a process was up


class Device(Base):
    """An enrolled device: its token (hashed) and the Ed25519 identity public key it bound
    at enrolment (`federated.identity` text form), which proves it is the same device later."""

    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    identity_key: Mapped[str] = mapped_column(String(64), unique=True)
    enrolment_code: Mapped[str | None] = mapped_column(String(16), default=None)


class EnrolmentCode(Base):
    """A limited-use credential the operator hands out (admin API); stored only hashed."""

    __tablename__ = "enrolment_codes"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    code_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    uses: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer, default=0)
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, default=None)


class RecoveryChallenge(Base):
    """A one-time challenge a device signs with its identity key to get a new token."""

    __tablename__ = "recovery_challenges"
    challenge: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    expires_at: Mapped[float] = mapped_column(Float)


class RateWindow(Base):
    """Requests counted per client address and purpose in the current fixed window."""

    __tablename__ = "rate_windows"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer)


class Round(Base):
    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    model_version: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    opened_at: Mapped[float] = mapped_column(Float)
    deadline: Mapped[float] = mapped_column(Float)
    target: Mapped[int] = mapped_column(Integer)
    minimum: Mapped[int] = mapped_column(Integer)
    capacity: Mapped[int] = mapped_column(Integer)
    tasks_issued: Mapped[int] = mapped_column(Integer, default=0)
    reports: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[float | None] = mapped_column(Float, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    new_version: Mapped[int | None] = mapped_column(Integer, default=None)
    closed_at: Mapped[float | None] = mapped_column(Float, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    epsilon_max: Mapped[float | None] = mapped_column(Float, default=None)  # against the server
    epsilon_max_model_users: Mapped[float | None] = mapped_column(Float, default=None)
    # a "closing" round whose aggregation failed: since when, why, and who holds the lease
    failing_since: Mapped[float | None] = mapped_column(Float, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    # "train" makes a new model version; "evaluate" asks devices to score model versions
    # (aggregation_server.evaluation): what it evaluates, then the aggregate it published
    kind: Mapped[str] = mapped_column(String(16), default="train", server_default="train")
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class Task(Base):
    """A device's place in a round: handed out, then its update, then aggregated or dropped."""

    __tablename__ = "tasks"
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True,
                                           index=True)
    state: Mapped[str] = mapped_column(String(16))
    noise_multiplier: Mapped[float] = mapped_column(Float)
    issued_at: Mapped[float] = mapped_column(Float)
    # the privacy charge, set when the server accepts the update or masked input (kept when
    # the round is abandoned): the noise multipliers against the server / model users
    charged_at: Mapped[float | None] = mapped_column(Float, default=None, index=True)
    z_server: Mapped[float | None] = mapped_column(Float, default=None)
    z_model_users: Mapped[float | None] = mapped_column(Float, default=None)
    submitted_at: Mapped[float | None] = mapped_column(Float, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    body_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    num_examples: Mapped[int | None] = mapped_column(Integer, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    path: Mapped[str | None] = mapped_column(Text, default=None)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class ModelVersion(Base):
    """A global model: its file (relative to the data dir), sha256 and provenance."""

    __tablename__ = "model_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    round_id: Mapped[int | None] = mapped_column(Integer, default=None)
    reports: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    optimizer_path: Mapped[str | None] = mapped_column(Text, default=None)


class SecAggRound(Base):
    """A secure-aggregation round's protocol state (aggregation_server.secure): its public
    config (federated.secagg SecAggConfig), the phase and when the phase closes at the latest."""

    __tablename__ = "secagg_rounds"
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    phase: Mapped[str] = mapped_column(String(16))  # secure.ORDER or abandoned
    phase_deadline: Mapped[float] = mapped_column(Float)
    messages: Mapped[int] = mapped_column(Integer, default=0)  # stored messages (cache key)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    cause: Mapped[str | None] = mapped_column(String(24), default=None)  # secure.CAUSES
    aborts: Mapped[dict[str, int] | None] = mapped_column(JSON, default=None)  # reason: devices


class SecAggMember(Base):
    """A device's protocol client id (1..n) in a secure round, given with its task."""

    __tablename__ = "secagg_members"
    __table_args__ = (UniqueConstraint("round_id", "device_id"),)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), primary_key=True)
    client_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)


class SecAggMessage(Base):
    """A protocol message the round took (accepted, or excluding its sender), in order; a
    masked input's bytes are a blob at `path` (uniformly random alone)."""

    __tablename__ = "secagg_messages"
    __table_args__ = (UniqueConstraint("round_id", "phase", "client_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    phase: Mapped[str] = mapped_column(String(16))
    client_id: Mapped[int] = mapped_column(Integer)
    body: Mapped[str | None] = mapped_column(Text, default=None)
    path: Mapped[str | None] = mapped_column(Text, default=None)
    received_at: Mapped[float] = mapped_column(Float)


class SecAggRelay(Base):
    """What the server relays to one client when a phase closes (keys, shares, unmask)."""

    __tablename__ = "secagg_relays"
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    client_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(Text)


class ServerProcess(Base):
    """A server process's heartbeat: how a lease owner on another host proves it is alive
    (liveness.py)."""

    __tablename__ = "server_processes"
    owner: Mapped[str] = mapped_column(String(200), primary_key=True)  # host/pid/start time
    host: Mapped[str] = mapped_column(String(200))
    heartbeat: Mapped[float] = mapped_column(Float)
    stopped: Mapped[bool] = mapped_column(Boolean, default=False)


class Blob(Base):
    """A model version, optimizer state, update, masked input or the tokenizer, by the
    relative path it has in a data dir, when `blob_store = "database"` (storage.py)."""

    __tablename__ = "blobs"
    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class Database:
    """An engine plus `read()` and `write()` sessions that commit or roll back as a whole."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = create_engine(url, pool_size=20, max_overflow=20, pool_timeout=60,
                                        connect_args={"timeout": 60})
            _sqlite_pragmas(self.engine)
        else:
            self.engine = create_engine(url, pool_size=10, max_overflow=20, pool_timeout=60,
                                        pool_pre_ping=True)
        self._writer = self.engine.execution_options(immediate=True)
        # SQLite has one writer at a time; threads of this process queue here instead of
        # in SQLite's busy handler, which sleeps in steps of up to 100 ms.
        self._write_lock = threading.Lock() if self.is_sqlite else nullcontext()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that takes SQLite's write lock at BEGIN (PostgreSQL: row locks)."""
        with self._write_lock, Session(self._writer, expire_on_commit=False) as session, \
                session.begin():
            yield session

    def create_schema(self) -> None:
        """Bring the schema to the newest migration once, even with several processes
        starting together (`aggregation_server.migrate`)."""
        from aggregation_server import migrate

        with self._writer.begin() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(7405341)"))
            migrate.upgrade(conn)

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL, full fsync at commit, waits instead of 'database is locked', explicit BEGINs."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=60000",
                       "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
