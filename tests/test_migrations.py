"""Schema migrations (Alembic, `aggregation_server.migrate`): an empty database and a
database of the schema before migrations (main at f4890bf, made by `create_all`) both
upgrade to the newest revision, on SQLite and PostgreSQL, keep their rows, and serve."""
from __future__ import annotations

import hashlib

import pytest
import requests
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from aggregation_server import migrate
from aggregation_server.db import Base, Database

OLD_TOKEN = "token-of-a-device-enrolled-before-identity-keys"


def legacy_database(url: str) -> None:
    """The tables revision 0001 describes, without alembic_version (as `create_all` left
    them), holding one device enrolled then."""
    engine = create_engine(url)
    with engine.begin() as conn:
        migrate.upgrade(conn, migrate.FIRST_REVISION)
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("INSERT INTO devices (id, token_sha256, created_at) "
                          "VALUES ('d-legacy', :t, 1.0)"),
                     {"t": hashlib.sha256(OLD_TOKEN.encode()).hexdigest()})
    engine.dispose()


def schema_differences(url: str) -> list:
    """What the models declare that the database lacks (or the reverse), by Alembic's compare;
    a unique constraint's name is not compared (PostgreSQL names unnamed ones itself)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)
    engine.dispose()
    return [d for d in diffs if not (isinstance(d, tuple) and d[0] in
                                     ("add_constraint", "remove_constraint"))]


def revision_and_tables(url: str) -> tuple[str | None, set[str]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = migrate.current_revision(conn), set(inspect(conn).get_table_names())
    engine.dispose()
    return found


def check_upgrade_from_empty(url: str) -> None:
    db = Database(url)
    db.create_schema()
    db.create_schema()  # a second start finds it current and changes nothing
    db.dispose()
    revision, tables = revision_and_tables(url)
    assert revision == migrate.head_revision()
    assert set(Base.metadata.tables) <= tables
    assert schema_differences(url) == []


def check_upgrade_from_legacy(url: str) -> None:
    legacy_database(url)
    assert revision_and_tables(url)[0] is None
    db = Database(url)
    db.create_schema()
    db.dispose()
    assert revision_and_tables(url)[0] == migrate.head_revision()
    assert schema_differences(url) == []
    engine = create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT id, token_sha256, identity_key FROM devices")).one()
    engine.dispose()
    # the device row stays (its rounds stay accounted), but its old token no longer works
    assert row.id == "d-legacy" and row.identity_key == "legacy:d-legacy"
    assert row.token_sha256 != hashlib.sha256(OLD_TOKEN.encode()).hexdigest()


def test_an_empty_sqlite_database_upgrades_to_the_newest_revision(tmp_path):
    check_upgrade_from_empty(f"sqlite:///{tmp_path / 'server.db'}")


def test_a_sqlite_database_of_the_previous_schema_upgrades(tmp_path):
    check_upgrade_from_legacy(f"sqlite:///{tmp_path / 'server.db'}")


@pytest.mark.postgres
def test_an_empty_postgres_database_upgrades_to_the_newest_revision(pg_url):
    check_upgrade_from_empty(pg_url)


@pytest.mark.postgres
def test_a_postgres_database_of_the_previous_schema_upgrades(pg_url):
    check_upgrade_from_legacy(pg_url)


def test_a_server_on_an_upgraded_database_serves_and_retires_old_tokens(start_server, tmp_path):
    url = f"sqlite:///{tmp_path / 'server.db'}"
    legacy_database(url)
    server = start_server(db_url=url)
    old = requests.post(f"{server.url}/v1/checkin", json={"model_version": None},
                        headers={"Authorization": f"Bearer {OLD_TOKEN}"}, timeout=30)
    assert old.status_code == 401
    device = server.enrol()
    assert "task" in server.checkin(device)
    assert revision_and_tables(url)[0] == migrate.head_revision()
