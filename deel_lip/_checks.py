"""Argument checks shared by the whole library (one place, one wording).

Every check raises with a message ``"<argument> must be <expectation>, received: <value>"``:

* `TypeError` when the argument has the wrong type for a flag or a count that is checked
  by type (`check_bool`, `check_batch_size`);
* `ValueError` when a number is not an acceptable value (wrong range, not finite, not a
  number at all for the numeric checks).

Each check returns the value normalised (``float`` / ``int`` / ``bool``). No dependency on
the rest of the library: every level may import it.
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "check_bool",
    "check_batch_size",
    "check_positive_int",
    "check_positive_float",
    "check_non_negative_float",
    "check_lip_const",
    "check_epsilon",
    "check_one_of",
]


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_bool(name: str, value) -> bool:
    """``value`` if it is a bool; else `TypeError` naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, received: {value!r}")
    return value


def check_batch_size(batch_size, name: str = "batch_size") -> int:
    """An int >= 1: `TypeError` for a non-integer, `ValueError` below 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"{name} must be an int, received: {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"{name} must be >= 1, received: {batch_size!r}")
    return int(batch_size)


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """An int >= ``minimum`` (`ValueError` otherwise, a bool included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, received: {value!r}")
    return int(value)


def check_positive_float(name: str, value, allow_none: bool = False) -> float | None:
    """A finite number > 0 (or None when ``allow_none``); `ValueError` otherwise."""
    if value is None and allow_none:
        return None
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        expectation = "a finite number > 0" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {expectation}, received: {value!r}")
    return float(value)


def check_non_negative_float(name: str, value) -> float:
    """A finite number >= 0; `ValueError` otherwise."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, received: {value!r}")
    return float(value)


def check_lip_const(lip_const, name: str = "lip_const") -> float:
    """A Lipschitz constant: a finite number > 0."""
    return check_positive_float(name, lip_const)


def check_epsilon(epsilon, name: str = "epsilon") -> float:
    """A certification radius: a finite number >= 0."""
    return check_non_negative_float(name, epsilon)


def check_one_of(name: str, value, choices: tuple):
    """``value`` if it is one of ``choices``; else `ValueError` listing them."""
    if isinstance(value, (list, dict, set)) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, received: {value!r}")
    return value
