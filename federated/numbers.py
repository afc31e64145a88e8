"""What a JSON number from the other side must be before it is used as a float."""
from __future__ import annotations

import math


def is_finite_number(value: object) -> bool:
    """An int or float (not a bool) that is finite as a float: JSON gives integers of any
    size (a hostile peer's 400 digits overflow float()) and Python's parser accepts NaN and
    Infinity."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
