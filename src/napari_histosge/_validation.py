"""Input checks that raise errors a user can act on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["assert_in_range", "assert_key_in_sdata", "assert_one_of"]


def assert_key_in_sdata(sdata: Any, key: str, *, attr: str = "elements") -> None:
    """Raise a ``KeyError`` naming the available keys when ``key`` is not in ``sdata``.

    Examples
    --------
    >>> assert_key_in_sdata({"a": 1}, "a")
    """
    container = getattr(sdata, attr, sdata) if attr != "elements" else sdata
    keys = list(container.keys()) if hasattr(container, "keys") else list(container)
    if key not in keys:
        raise KeyError(f"Expected `{key}` in the {attr} of the store, found `{sorted(keys)}`.")


def assert_in_range(name: str, value: float, minn: float, maxx: float) -> None:
    """Raise a ``ValueError`` when ``value`` is outside ``[minn, maxx]``.

    Examples
    --------
    >>> assert_in_range("fraction", 0.5, 0, 1)
    """
    if not (minn <= value <= maxx):
        raise ValueError(
            f"Expected `{name}` to be in interval `[{minn}, {maxx}]`, found `{value}`."
        )


def assert_one_of(name: str, value: Any, options: Iterable[Any]) -> None:
    """Raise a ``ValueError`` when ``value`` is not one of ``options``.

    Examples
    --------
    >>> assert_one_of("mode", "4x", ["4x", "grid"])
    """
    opts = list(options)
    if value not in opts:
        raise ValueError(f"Expected `{name}` to be one of `{opts}`, found `{value!r}`.")
