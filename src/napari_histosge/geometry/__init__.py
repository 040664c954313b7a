"""Unit centres and sizes in image pixels, lattices, super-resolution positions, tissue mask.

All positions are ``(x, y)`` = (column, row) float64 in the scale-0 pixels of the chosen image
element (see ``docs/architecture.md``).
"""

from __future__ import annotations

from .lattice import (
    ST_DIAMETER_UM,
    ST_PITCH_UM,
    VISIUM_DIAMETER_UM,
    VISIUM_PITCH_UM,
    Lattice,
    detect_lattice,
    lattice_pitch,
    neighbour_pairs,
    subspot_positions,
)
from .spots import SpotGeometry, grid_positions, spot_geometry, spots_to_image_affine
from .tissue import tissue_mask

__all__ = [
    "ST_DIAMETER_UM",
    "ST_PITCH_UM",
    "VISIUM_DIAMETER_UM",
    "VISIUM_PITCH_UM",
    "Lattice",
    "SpotGeometry",
    "detect_lattice",
    "grid_positions",
    "lattice_pitch",
    "neighbour_pairs",
    "spot_geometry",
    "spots_to_image_affine",
    "subspot_positions",
    "tissue_mask",
]
