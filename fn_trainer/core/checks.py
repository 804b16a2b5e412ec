"""Argument checks that fail early with a message naming the argument."""
from __future__ import annotations

import math
import numbers
import reprlib
import sys
from typing import Any


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` as a ``bool`` if it is ``True`` or ``False`` (numpy's too), else raise
    ``TypeError`` naming ``name``: a flag read by truthiness would take ``"no"`` for yes."""
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")
    if not (isinstance(value, bool) or numpy_bool):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r} ({type(value).__name__})")
    return bool(value)


def check_function(name: str, value: Any) -> Any:
    """Return ``value`` if it can be called, else raise ``TypeError`` naming ``name``: before
    the work that would call it, where ``'NoneType' object is not callable`` names nothing."""
    if not callable(value):
        raise TypeError(f"{name} must be a function, got {type(value).__name__}")
    return value


def check_int(name: str, value: Any) -> int:
    """Return ``int(value)`` if it is an integer (``bool`` excluded), else raise ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


SEED_LIMIT = 2**32  # seeds are in [0, 2**32): numpy's legacy seeding accepts no more, and
# fit's per-epoch generator seed, seed * 1_000_003 + epoch, then stays within int64


def check_seed(name: str, value: Any) -> int:
    """Return ``int(value)`` if it is an integer in ``[0, SEED_LIMIT)``, else raise naming ``name``."""
    value = check_int(name, value)
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**32 - 1 = {SEED_LIMIT - 1}], got {value}")
    return value


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Return ``int(value)`` if it is an integer >= ``minimum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is a real number (``bool`` excluded) that a finite float can hold:
    ``math.isfinite`` of an int beyond the float range raises ``OverflowError`` instead."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if isinstance(value, numbers.Integral):
        return abs(int(value)) <= sys.float_info.max
    return math.isfinite(value)


def check_positive_float(name: str, value: Any) -> float:
    """Return ``float(value)`` if it is a finite real number > 0, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive finite number, got {value!r} ({type(value).__name__})")
    if not is_finite_number(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


def described(value: Any) -> str:
    """A tensor's shape and dtype, or any other value's type name, for an error message."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"shape {tuple(shape)} {dtype}"
    return type(value).__name__


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60


def shown(value: Any) -> str:
    """``repr(value)`` cut short and on one line, for an error message about a value of any
    size (read from a file, or given): at most 4 items of a list or dict, 2 levels deep, 60
    characters of a string or number; an array or tensor of several values as its shape and
    dtype (their reprs run over several lines, and their values are not the message's point)."""
    try:
        if not isinstance(value, type) and hasattr(value, "shape") and hasattr(value, "dtype") \
                and len(value.shape) > 0:
            return described(value)
        text = _SHORT.repr(value)
    except Exception:  # an int of more digits than Python prints, a repr or a shape that fails
        return f"a value of type {type(value).__name__}"
    return " ".join(text.split()) if "\n" in text else text  # a string's repr escapes its newlines
