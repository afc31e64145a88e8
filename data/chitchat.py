"""The chitchat corpus as devices: one sender, their messages in timestamp order."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np

from data.errors import DatasetError
from data.split import ROLES, role_of

try:
    import chitchat_dataset
    CHITCHAT_PATH = Path(chitchat_dataset.__file__).parent / "dataset.json"
except ImportError:  # pragma: no cover - the package is a pinned dependency
    CHITCHAT_PATH = Path("dataset.json")


@dataclass
class Device:
    """One simulated phone: a sender and its typing history."""

    sender: str
    role: str
    messages: list[str] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)


def _timestamp(value: object, path: Path, where: str) -> float:
    if not isinstance(value, str):
        raise DatasetError(path, f"{where}: timestamp is not a string")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise DatasetError(path, f"{where}: bad timestamp {value[:40]!r}") from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DatasetError(path, f"not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise DatasetError(path, f"not valid JSON, truncated or malformed at line {err.lineno} "
                                 f"column {err.colno}: {err.msg}") from None
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(path, "expected a non-empty object of conversations")
    return raw


@lru_cache(maxsize=4)
def _load(path: Path) -> tuple[Device, ...]:
    raw = _read_json(path)
    rows: dict[str, list[tuple[float, str]]] = {}
    for conv_id, conv in raw.items():
        turns = conv.get("messages") if isinstance(conv, dict) else None
        if not isinstance(turns, list):
            raise DatasetError(path, f"conversation {conv_id}: no 'messages' list")
        for t, turn in enumerate(turns):
            if not isinstance(turn, list):
                raise DatasetError(path, f"conversation {conv_id} turn {t}: not a list")
            for m, msg in enumerate(turn):
                where = f"conversation {conv_id} turn {t} message {m}"
                if not isinstance(msg, dict) or not isinstance(msg.get("text"), str) \
                        or not isinstance(msg.get("sender"), str):
                    raise DatasetError(path, f"{where}: needs string 'text' and 'sender'")
                rows.setdefault(msg["sender"], []).append(
                    (_timestamp(msg.get("timestamp"), path, where), msg["text"]))
    devices = []
    for sender in sorted(rows):
        ordered = sorted(rows[sender], key=lambda row: row[0])  # stable: ties keep file order
        devices.append(Device(sender, role_of(sender), [text for _, text in ordered],
                              [ts for ts, _ in ordered]))
    return tuple(devices)


def load_devices(path: str | Path = CHITCHAT_PATH) -> list[Device]:
    """Every sender of a chitchat-format file as a Device, sorted by sender id."""
    return list(_load(Path(path).resolve()))


def load_split(role: str | tuple[str, ...], path: str | Path = CHITCHAT_PATH) -> list[Device]:
    """The devices whose sender falls in `role` (one of ROLES, or a tuple of them)."""
    roles = (role,) if isinstance(role, str) else tuple(role)
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown split {sorted(unknown)}; choose from {ROLES}")
    return [d for d in load_devices(path) if d.role in roles]


def typical_histories(role: str) -> dict[str, list[str]]:
    """The messages of the split's senders closest to the median ("median") and the
    90th-percentile ("p90") history size: what the device benchmarks measure on."""
    devices = load_split(role)
    picked = {}
    for label, q in (("median", 50), ("p90", 90)):
        target = float(np.percentile([len(d.messages) for d in devices], q))
        picked[label] = min(devices, key=lambda d: (abs(len(d.messages) - target),
                                                    d.sender)).messages
    return picked
