"""Backup and restore of a deployment: the database and every blob, in one tar file.

    python -m aggregation_server backup OUT.tar --data-dir DIR [--db URL] [--blob-store ...]
    python -m aggregation_server restore IN.tar --data-dir NEW [--db URL] [--blob-store ...]

A backup may be taken while servers run: the tables are read in one transaction (a
consistent snapshot), then the blobs; if a blob the snapshot names was deleted meanwhile
(a round closed and its updates went), the backup starts again. The archive holds
`manifest.json` (schema revision, row and blob counts), `tables/<name>.jsonl` (one JSON
object per row) and `blobs/<path>` (model versions, optimizer state, the tokenizer,
pending updates and masked inputs, the admin token file). Restore goes into a fresh
database and data dir only: it creates the schema at the backup's revision, inserts the
rows, writes the blobs through the target's blob store (so a backup of a files deployment
restores into a database one, and back), then migrates to the newest revision. Started on
the restored data, a server continues the run: open rounds, their updates and every
device's token and privacy charges included.
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, MetaData, Table, func, inspect, select, text

from aggregation_server import migrate
from aggregation_server.config import Settings
from aggregation_server.db import Base, Database, ModelVersion, Round, SecAggMessage, Task
from aggregation_server.storage import BlobStore, blob_store
from federated.clock import Clock, SystemClock

FORMAT = "private-keyboard/server-backup-1"
BLOB_DIRS = ("models", "optimizer", "updates")
EXTRA_FILES = ("tokenizer.json",)  # blobs outside the three folders
ADMIN_TOKEN = "admin_token"        # a data dir file, kept so admins keep their token
ATTEMPTS = 5


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; the message says what to do."""


def _stores(settings: Settings) -> tuple[Database, BlobStore]:
    db = Database(settings.database_url)
    return db, blob_store(settings.blob_store, Path(settings.data_dir), db.engine)


def _dump_tables(conn: Connection) -> dict[str, list[dict[str, Any]]]:
    return {table.name: [dict(row._mapping) for row in conn.execute(select(table))]
            for table in Base.metadata.sorted_tables if table.name != "blobs"}


def _referenced(tables: dict[str, list[dict[str, Any]]]) -> set[str]:
    """Blobs the snapshot needs: the tokenizer, the latest model version (older ones may be
    gone by `keep_versions`) and the updates and masked inputs of rounds not yet closed."""
    live = {r["id"] for r in tables[Round.__tablename__] if r["state"] in ("open", "closing")}
    latest = max(tables[ModelVersion.__tablename__], key=lambda row: row["version"])
    paths = {p for p in (latest["path"], latest["optimizer_path"]) if p}
    for name in (Task.__tablename__, SecAggMessage.__tablename__):
        paths |= {row["path"] for row in tables[name] if row["path"] and row["round_id"] in live}
    return paths | set(EXTRA_FILES)


def _blob_names(blobs: BlobStore) -> list[str]:
    if hasattr(blobs, "engine"):  # DatabaseBlobStore
        with blobs.engine.connect() as conn:
            return list(conn.scalars(text("SELECT name FROM blobs ORDER BY name")))
    names = [p.relative_to(blobs.root).as_posix() for d in BLOB_DIRS
             for p in sorted((blobs.root / d).rglob("*")) if p.is_file()
             and not p.name.startswith(".")]
    return names + [n for n in EXTRA_FILES if (blobs.root / n).is_file()]


def _rows(db: Database) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Every table's rows and the schema revision, read in one transaction (a snapshot)."""
    engine = db.engine if db.is_sqlite else \
        db.engine.execution_options(isolation_level="REPEATABLE READ")
    with engine.connect() as conn, conn.begin():
        return _dump_tables(conn), migrate.current_revision(conn)


def _add(tar: tarfile.TarFile, name: str, data: bytes, now: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(now), 0o600
    tar.addfile(info, io.BytesIO(data))


def _write_archive(tmp: Path, db: Database, blobs: BlobStore, token: Path,
                   now: float) -> dict | None:
    """One attempt: the rows, then the blobs one at a time; None if a blob the rows need
    was deleted meanwhile (a round closed). `now`: the backup's time."""
    tables, revision = _rows(db)
    written: list[str] = []
    with tarfile.open(tmp, "w") as tar:
        for name in _blob_names(blobs):
            try:
                _add(tar, f"blobs/{name}", blobs.read(name), now)
            except FileNotFoundError:
                continue  # deleted since it was listed
            written.append(name)
        if not _referenced(tables) <= set(written):
            return None
        for name, rows in tables.items():
            lines = "".join(json.dumps(row, default=str) + "\n" for row in rows)
            _add(tar, f"tables/{name}.jsonl", lines.encode(), now)
        if token.is_file():
            _add(tar, f"files/{ADMIN_TOKEN}", token.read_bytes(), now)
        manifest = {"format": FORMAT, "revision": revision, "created_at": now,
                    "rows": {name: len(rows) for name, rows in tables.items()},
                    "blobs": written, "admin_token": token.is_file()}
        _add(tar, "manifest.json", json.dumps(manifest, indent=1).encode(), now)
    return manifest


def backup(settings: Settings, out: Path, clock: Clock = SystemClock()) -> dict[str, Any]:
    """Write the deployment's database and blobs to the tar file `out`; its manifest
    (`clock`: the backup's time, recorded in it)."""
    data_dir = Path(settings.data_dir)
    if not data_dir.is_dir() or (settings.db_url is None
                                 and not (data_dir / "server.sqlite3").is_file()):
        raise BackupError(f"{data_dir}: no server data there (check --data-dir and --db)")
    db, blobs = _stores(settings)
    tmp = out.with_name(out.name + ".part")
    try:
        if "rounds" not in inspect(db.engine).get_table_names():
            raise BackupError(f"{db.engine.url.render_as_string(hide_password=True)}: no "
                              "server database there (check --data-dir and --db)")
        for _ in range(ATTEMPTS):
            manifest = _write_archive(tmp, db, blobs, data_dir / ADMIN_TOKEN, clock())
            if manifest is not None:
                tmp.replace(out)
                return manifest
            time.sleep(0.5)  # a round was closing: take the snapshot again
    finally:
        db.dispose()
        tmp.unlink(missing_ok=True)
    raise BackupError("the database kept changing under the backup (rounds closing): "
                      "try again, or stop training for a moment (POST /v1/admin/training)")


def _open_archive(path: Path) -> tuple[tarfile.TarFile, dict]:
    """The backup's tar (read one member at a time) and its manifest."""
    try:
        tar = tarfile.open(path, "r")
        manifest = json.loads(_member(tar, "manifest.json"))
    except (OSError, tarfile.TarError, KeyError, json.JSONDecodeError) as err:
        raise BackupError(f"{path} is not a server backup: {err}") from None
    if manifest.get("format") != FORMAT:
        tar.close()
        raise BackupError(f"{path} is a {manifest.get('format')!r} file, not {FORMAT!r}")
    return tar, manifest


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    if member is None:
        raise KeyError(name)
    return member.read()


def _insert_rows(conn: Connection, tar: tarfile.TarFile, manifest: dict) -> None:
    meta = MetaData()
    for name in manifest["rows"]:
        table = Table(name, meta, autoload_with=conn)
        rows = [json.loads(line) for line in _member(tar, f"tables/{name}.jsonl").splitlines()]
        if rows:
            conn.execute(table.insert(), rows)
        if conn.dialect.name == "postgresql" and "id" in table.c and rows:
            sequence = conn.scalar(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": name})
            if sequence:
                conn.execute(text("SELECT setval(:s, :v)"),
                             {"s": sequence, "v": conn.scalar(select(func.max(table.c.id)))})


def restore(settings: Settings, archive: Path) -> dict[str, Any]:
    """Put a backup into a fresh database and data dir; then migrate to the newest schema."""
    tar, manifest = _open_archive(archive)
    try:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        db, blobs = _stores(settings)
        try:
            _refuse_unless_fresh(db, blobs)
            with db.engine.begin() as conn:
                if not db.is_sqlite:
                    conn.execute(text("SELECT pg_advisory_xact_lock(7405341)"))
                migrate.upgrade(conn, manifest["revision"])
                _insert_rows(conn, tar, manifest)
            for name in manifest["blobs"]:  # one at a time: backups may be large
                blobs.write(name, _member(tar, f"blobs/{name}"))
            if manifest.get("admin_token"):
                path = Path(settings.data_dir) / ADMIN_TOKEN
                path.write_bytes(_member(tar, f"files/{ADMIN_TOKEN}"))
                path.chmod(0o600)
            db.create_schema()  # the newest revision
        finally:
            db.dispose()
    finally:
        tar.close()
    return manifest


def _refuse_unless_fresh(db: Database, blobs: BlobStore) -> None:
    if inspect(db.engine).get_table_names():
        raise BackupError("the target database is not empty: restore into a new, empty "
                          "database (and a new data dir)")
    if any((blobs.root / "models").glob("*.safetensors")):
        raise BackupError(f"{blobs.root} already holds model files: restore into a new, "
                          "empty data dir")
