"""Schema migrations with Alembic (revisions in `aggregation_server/migrations/versions`).

Every server process brings its database to the newest revision at start-up, inside the
transaction `Database.create_schema` holds (with PostgreSQL's advisory lock), so several
processes starting together migrate once. A database made before migrations existed (no
`alembic_version` table, tables from `create_all`) is stamped with the first revision,
then upgraded. A new schema change is a new revision:

    PYTHONPATH=. alembic -c aggregation_server/migrations/alembic.ini revision \
        --autogenerate -m "what changed"

(then read the generated file: autogenerate does not see renames).
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
FIRST_REVISION = "0001"  # the schema `create_all` made before migrations existed


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Bring the schema on `connection` to `revision` (stamping a pre-migration database)."""
    config = alembic_config(connection)
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables and "rounds" in tables:
        command.stamp(config, FIRST_REVISION)
    command.upgrade(config, revision)


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head
