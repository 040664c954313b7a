"""Input checks that raise one-line errors a user can act on: what was expected, what was found.

Every layer uses these instead of writing its own ``raise``, so messages read alike::

    Expected `mode` to be one of ['improved', 'faithful'], found `fast`.
    Expected `epochs` >= 1, found `0`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

__all__ = ["assert_at_least", "assert_in_range", "assert_one_of", "assert_positive"]


def assert_one_of(
    name: str, value: Any, options: Iterable[Any], *, error: type[Exception] = ValueError
) -> None:
    """Raise ``error`` (``ValueError`` by default) when ``value`` is not one of ``options``.

    Pass ``error=KeyError`` for element keys of a store.

    Examples
    --------
    >>> assert_one_of("positions", "4x", ["4x", "grid"])
    """
    opts = list(options)
    if value not in opts:
        raise error(f"Expected `{name}` to be one of {opts}, found `{value}`.")


def assert_in_range(
    name: str, value: float, minn: float, maxx: float, *, include_max: bool = True
) -> None:
    """Raise a ``ValueError`` when ``value`` is outside ``[minn, maxx]`` (or ``[minn, maxx)``).

    Examples
    --------
    >>> assert_in_range("fraction", 0.5, 0, 1)
    """
    above = value > maxx if include_max else value >= maxx
    if not (isinstance(value, numbers.Real) and math.isfinite(value)) or value < minn or above:
        bracket = "]" if include_max else ")"
        raise ValueError(f"Expected `{name}` in [{minn}, {maxx}{bracket}, found `{value}`.")


def assert_at_least(name: str, value: float, minimum: float) -> None:
    """Raise a ``ValueError`` when ``value`` is below ``minimum`` (or not a finite number).

    Examples
    --------
    >>> assert_at_least("epochs", 10, 1)
    """
    if not (isinstance(value, numbers.Real) and math.isfinite(value)) or value < minimum:
        raise ValueError(f"Expected `{name}` >= {minimum}, found `{value}`.")


def assert_positive(name: str, value: float) -> None:
    """Raise a ``ValueError`` unless ``value`` is a finite number above zero.

    Examples
    --------
    >>> assert_positive("pitch_px", 2.5)
    """
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
        raise ValueError(f"Expected a positive `{name}`, found `{value}`.")
