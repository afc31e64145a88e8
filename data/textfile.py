"""A plain UTF-8 text file, one message per line: a person's or institution's own text."""
from __future__ import annotations

from pathlib import Path

from data.errors import DatasetError

MAX_LINE_CHARS = 10_000


def load_text_file(path: str | Path, max_bytes: int = 512 * 1024 * 1024) -> list[str]:
    """Non-empty lines of a UTF-8 text file, in order, stripped of line ends."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    size = path.stat().st_size
    if size > max_bytes:
        raise DatasetError(path, f"{size} bytes is over the {max_bytes}-byte limit")
    raw = path.read_bytes()
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DatasetError(path, f"binary data (NUL byte at offset {nul}), expected UTF-8 text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DatasetError(path, f"not UTF-8 text (line {line}, byte {err.start})") from None
    messages = []
    for number, line in enumerate(text.splitlines(), start=1):
        if len(line) > MAX_LINE_CHARS:
            raise DatasetError(path, f"line {number} has {len(line)} characters, "
                                     f"over the {MAX_LINE_CHARS} limit for one message")
        if line.strip():
            messages.append(line.strip())
    if not messages:
        raise DatasetError(path, "no messages (the file is empty or only blank lines)")
    return messages
