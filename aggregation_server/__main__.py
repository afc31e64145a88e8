"""`python -m aggregation_server --data-dir DIR [...]`: the development server (werkzeug, threaded).

For production see `aggregation_server.app` (gunicorn). Also
`python -m aggregation_server backup OUT.tar` and `restore IN.tar` (`aggregation_server.backup`).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from werkzeug.serving import make_server

from aggregation_server.app import create_app, shutdown
from aggregation_server.config import ConfigError, load_settings
from aggregation_server.storage import StorageError

log = logging.getLogger("aggregation_server.main")


def parse_args(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m aggregation_server", description="Federated-learning aggregation server.",
        epilog="Backup and restore: python -m aggregation_server backup OUT.tar, "
               "python -m aggregation_server restore IN.tar (each with --help).")
    p.add_argument("--data-dir", dest="data_dir", help="models, updates, SQLite file")
    p.add_argument("--db", dest="db_url", help="SQLAlchemy URL (default: SQLite in data dir)")
    p.add_argument("--host")
    p.add_argument("--port", type=int, help="0 picks a free port (logged)")
    p.add_argument("--config", help="JSON or TOML settings file")
    p.add_argument("--init-model", dest="init_model",
                   help="checkpoint stored as version 0 if the data dir has no model "
                        "(default: the public pre-trained model shipped in model/shipped/)")
    p.add_argument("--tokenizer", help="the init model's tokenizer.json (with --init-model)")
    p.add_argument("--blob-store", dest="blob_store", choices=("files", "database"),
                   help="where models and updates live: the data dir (default) or the "
                        "PostgreSQL database given by --db (several hosts)")
    p.add_argument("--admin-token", dest="admin_token")
    p.add_argument("--log-level", dest="log_level")
    return vars(p.parse_args(argv))


def backup_command(argv: list[str]) -> int:
    """`backup OUT` / `restore IN` with the server's --data-dir, --db, --config, --blob-store."""
    from aggregation_server import backup
    p = argparse.ArgumentParser(prog=f"python -m aggregation_server {argv[0]}",
                                description=backup.__doc__.split("\n")[0])
    p.add_argument("path", type=Path, help="the backup file (a tar archive)")
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--db", dest="db_url")
    p.add_argument("--config")
    p.add_argument("--blob-store", dest="blob_store", choices=("files", "database"))
    flags = vars(p.parse_args(argv[1:]))
    path = flags.pop("path")
    try:
        settings = load_settings(flags)
        run = backup.backup if argv[0] == "backup" else backup.restore
        manifest = run(settings, path)
    except (ConfigError, backup.BackupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    done = "written to" if argv[0] == "backup" else "restored from"
    print(f"{sum(manifest['rows'].values())} rows and {len(manifest['blobs'])} blobs "
          f"{done} {path} (schema revision {manifest['revision']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("backup", "restore"):
        return backup_command(argv)
    try:
        settings = load_settings(parse_args(argv))
        app = create_app(settings)
    except (ConfigError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # we log requests as JSON
    server = make_server(settings.host, settings.port, app, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("listening", extra={"host": settings.host, "port": server.server_port,
                                 "url": f"http://{settings.host}:{server.server_port}"})
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        shutdown(app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
