"""Argument checks that fail early with a message naming the argument."""
from __future__ import annotations

import math
import numbers
from typing import Any


def check_int(name: str, value: Any) -> int:
    """Return ``int(value)`` if it is an integer (``bool`` excluded), else raise ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Return ``int(value)`` if it is an integer >= ``minimum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_positive_float(name: str, value: Any) -> float:
    """Return ``float(value)`` if it is a finite real number > 0, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive finite number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)
