"""Writing a file atomically: the one helper the device, the server and the model tools share.

It lives in `device_model/`, the lowest package both shipped in the app (buildozer.spec
leaves `data/` out) and importable by all its users: the device's token, keys, caches and
settings (`keyboard_app`), the server's blobs (`aggregation_server.storage`) and the model
tools' checkpoints (`model.checkpoint`, which may import nothing from `federated` or
above: see the import-linter layers in pyproject.toml). Standard library only.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, data: bytes, mode: int = 0o600, make_parents: bool = True
                 ) -> None:
    """Write `data` to `path` so that, once this returns, it is on disk whole, and a crash
    at any point leaves the old file or the new one, never half of one: a temporary file
    in the same folder, fsync, rename over `path`, fsync of the folder.

    `mode`: the new file's permissions, owner-only by default (tokens, keys, history
    caches); pass 0o644 for a file meant to be shared, such as a public checkpoint.
    `make_parents`: create missing folders (False: a missing folder is an OSError, as for
    a path a person typed).
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (the folder's entry, not only the file's bytes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
