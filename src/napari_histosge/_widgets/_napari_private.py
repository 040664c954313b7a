"""The few private napari attributes the dock uses, looked up in one place.

napari has no public API to build a new layer's visuals and controls on turns of their own,
nor to reach its layer list widget. Plugin code that reads private attributes through the
viewer napari hands to a dock gets a ``FutureWarning`` per attribute ("deprecated and will be
unavailable no earlier than 0.10.0"): a console full of warnings for users. Every such lookup
goes through :func:`private_attr`, which answers ``None`` when napari no longer has (or no
longer gives) the attribute, so that each caller falls back to napari's public behaviour.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["private_attr"]


def private_attr(obj: Any, *names: str) -> Any:
    """Follow ``obj.<names[0]>.<names[1]>...``; ``None`` where one is missing.

    Examples
    --------
    >>> class A:
    ...     _b = 1
    >>> private_attr(A(), "_b"), private_attr(A(), "_c"), private_attr(None, "_b")
    (1, None, None)
    """
    with warnings.catch_warnings():
        # Known and handled: a napari without the attribute gives None here.
        warnings.filterwarnings("ignore", "Private attribute access", FutureWarning)
        for name in names:
            if obj is None:
                return None
            try:
                obj = getattr(obj, name, None)
            except Exception:  # noqa: BLE001 - a napari that blocks the access
                return None
    return obj
