"""Cells from the H&E: nuclei segmented in tiles, cell footprints and the per-cell table.

Submodules are imported on first use, so ``import napari_histosge.cells`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "NucleiOptions",
    "Nuclei",
    "add_cells_to_store",
    "iter_segment_nuclei",
    "match_nuclei",
    "segment_nuclei",
]

_WHERE = {
    "NucleiOptions": "segment",
    "Nuclei": "segment",
    "iter_segment_nuclei": "segment",
    "segment_nuclei": "segment",
    "match_nuclei": "metrics",
    "add_cells_to_store": "table",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
