"""Qt widgets of napari-histosge: the only package that imports Qt.

The dock is imported on first use, so that the worker process, which imports
:mod:`._tasks_steps` and :mod:`._worker_process` from this package, never loads Qt.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HisToSGEWidget"]


def __getattr__(name: str) -> Any:
    if name == "HisToSGEWidget":
        from ._dock import HisToSGEWidget

        return HisToSGEWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
