"""Qt widgets of napari-histosge: the only package that imports Qt."""

from __future__ import annotations

from ._dock import HisToSGEWidget

__all__ = ["HisToSGEWidget"]
