"""Learning-rate schedules, shared by local/central training and the server optimizer."""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The multiplier of the base learning rate at `step` (0-based) of `total_steps`.

    "cosine" falls from 1 to 0 over `total_steps` (Loshchilov & Hutter 2017) and stays at its
    last value after them; "constant" is always 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} not in {SCHEDULES}")
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
