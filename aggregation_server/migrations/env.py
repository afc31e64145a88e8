"""Alembic's entry point: migrations run on the connection `aggregation_server.migrate` gives
(inside the server's start-up transaction), or on `sqlalchemy.url` from the command line."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from aggregation_server.db import Base

config = context.config


def run(connection) -> None:
    # batch mode: SQLite cannot ALTER most things, so Alembic copies tables there
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url")).begin() as conn:
        run(conn)
