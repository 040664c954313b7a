"""The private napari attributes the dock uses: a new layer's parts built on turns of their own.

napari builds, in the turn of a layer's insertion, the layer's visuals and its layer controls:
one map layer's insertion measured 162-175 ms of the viewer's CPU (2026-12-06, 2-core machine,
software-rendered display), and the dock's Render turn 179-210 ms, over the 100 ms limit. Built
on turns of their own, each part stays under it. napari has no public API for this. Plugin code
that reads private attributes through the viewer napari hands to a dock gets a
``FutureWarning`` per attribute ("deprecated and will be unavailable no earlier than 0.10.0").
Every lookup goes through :func:`private_attr`, which answers ``None`` when napari no longer
has (or no longer gives) the attribute, so that the layer is then inserted as napari does it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

__all__ = ["deferrable_parts", "parts_deferred", "private_attr"]


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


@contextlib.contextmanager
def parts_deferred(layers: Any, parts: list[tuple[Callable[..., None], Any]]) -> Iterator[None]:
    """Insert layers with ``parts`` (of :func:`_deferrable_parts`) held back, selection kept.

    Selecting each new layer would also rebuild the layer controls panel on the way. napari has
    no public switch for this and warns about the private one; a warning would also pop up as an
    animated notification, which repaints the window for seconds.
    """
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        for handler, _ in parts:
            stack.enter_context(layers.events.inserted.blocker(handler))
        warnings.simplefilter("ignore", FutureWarning)
        activate = getattr(layers, "_activate_on_insert", None)
        if activate is not None:
            layers._activate_on_insert = False
            stack.callback(setattr, layers, "_activate_on_insert", activate)
        yield


def deferrable_parts(viewer: Any) -> list[tuple[Callable[..., None], Callable[[Any], None]]]:
    """Return the parts of napari's insertion of a layer that can run on turns of their own.

    napari builds, in the same turn as the insertion, the layer's visuals (~35-45 ms: three
    vispy nodes) and its controls (~20-30 ms). Each pair is (the handler of the layer list's
    ``inserted`` event, what builds that part later); a part this napari does not expose is
    left to the insertion itself.
    """
    qt_viewer = private_attr(viewer.window, "_qt_viewer")
    parts = []
    on_insert = private_attr(qt_viewer, "_on_add_layer_change")
    add_visual = private_attr(qt_viewer, "_add_layer")
    canvas = getattr(qt_viewer, "canvas", None)
    if on_insert is not None and add_visual is not None and canvas is not None:

        def visuals(layer: Any) -> None:
            if layer not in getattr(canvas, "layer_to_visual", {}):
                add_visual(layer)

        parts.append((on_insert, visuals))
    controls = getattr(qt_viewer, "controls", None)
    add_controls = private_attr(controls, "_add")
    if add_controls is not None and hasattr(controls, "widgets"):

        def panel(layer: Any) -> None:
            if layer not in controls.widgets:
                add_controls(SimpleNamespace(value=layer))

        parts.append((add_controls, panel))
    return parts
