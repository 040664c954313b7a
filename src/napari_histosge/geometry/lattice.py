"""Spot lattices: pitch, neighbours, lattice type and HisToSGE's 4x positions between spots."""

from __future__ import annotations

from typing import Literal

import numpy as np

from napari_histosge.base.validation import assert_one_of

__all__ = [
    "detect_lattice",
    "Lattice",
    "lattice_pitch",
    "neighbour_pairs",
    "ST_DIAMETER_UM",
    "ST_PITCH_UM",
    "subspot_positions",
    "VISIUM_DIAMETER_UM",
    "VISIUM_PITCH_UM",
]


Lattice = Literal["hexagonal", "square"]


#: Centre-to-centre distance and diameter of the spots, in µm, per array layout.
VISIUM_PITCH_UM = 100.0


VISIUM_DIAMETER_UM = 55.0


ST_PITCH_UM = 200.0


ST_DIAMETER_UM = 100.0


_EDGE_TOL = 1.2


_DIAG_MAX = 1.7


def lattice_pitch(xy: np.ndarray, max_queries: int | None = None) -> float:
    """Median nearest-neighbour distance.

    With ``max_queries``, only that many evenly spread points are queried, each against all
    points (the spacing within a subsample would be the subsample's, several times larger).

    Examples
    --------
    >>> lattice_pitch(np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]))
    2.0
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=float)
    if len(xy) < 2:
        raise ValueError(f"Expected at least 2 spots to measure their spacing, found {len(xy)}.")
    queries = xy if max_queries is None else xy[:: max(1, len(xy) // max_queries)]
    d, _ = cKDTree(xy).query(queries, k=2)
    return float(np.median(d[:, 1]))


def neighbour_pairs(xy: np.ndarray) -> tuple[np.ndarray, float]:
    """Pairs of neighbouring spots on the lattice and the lattice pitch.

    The pitch is the median length of all pairs closer than 1.25 nearest-neighbour distances
    (less biased by jitter than the nearest-neighbour distance alone); neighbours are the pairs
    closer than 1.2 pitches.

    Parameters
    ----------
    xy
        ``(n, 2)`` spot centres.

    Returns
    -------
    ``(m, 2)`` index pairs ``i < j`` and the pitch in the units of ``xy``.

    Examples
    --------
    >>> pairs, pitch = neighbour_pairs(np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]))
    >>> pairs.tolist(), pitch
    ([[0, 1]], 1.0)
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=float)
    p0 = lattice_pitch(xy)
    tree = cKDTree(xy)
    near = tree.query_pairs(1.25 * p0, output_type="ndarray")
    pitch = float(np.median(np.linalg.norm(xy[near[:, 0]] - xy[near[:, 1]], axis=1)))
    pairs = tree.query_pairs(_EDGE_TOL * pitch, output_type="ndarray")
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order].astype(int).reshape(-1, 2), pitch


def detect_lattice(xy: np.ndarray) -> Lattice:
    """Tell a hexagonal (Visium) from a square (legacy ST) spot array by neighbour angles.

    Directions to neighbours repeat every 60° on a hexagonal lattice and every 90° on a square
    one; the lattice whose angular order (``|mean(exp(6iθ))|`` against ``|mean(exp(4iθ))|``) is
    stronger wins. This holds for rotated, jittered and partial arrays.

    Examples
    --------
    >>> xs, ys = np.meshgrid(np.arange(5.0), np.arange(5.0))
    >>> detect_lattice(np.c_[xs.ravel(), ys.ravel()])
    'square'
    """
    xy = np.asarray(xy, dtype=float)
    if len(xy) < 3:
        return "hexagonal"
    pairs, _ = neighbour_pairs(xy)
    if len(pairs) == 0:
        return "hexagonal"
    v = xy[pairs[:, 1]] - xy[pairs[:, 0]]
    theta = np.arctan2(v[:, 1], v[:, 0])
    order6 = abs(np.exp(6j * theta).mean())
    order4 = abs(np.exp(4j * theta).mean())
    return "hexagonal" if order6 > order4 + 1e-9 else "square"


def _dedupe(points: np.ndarray, tol: float) -> np.ndarray:
    from scipy.spatial import cKDTree

    if len(points) == 0:
        return points.reshape(0, 2)
    keep = np.ones(len(points), dtype=bool)
    pairs = cKDTree(points).query_pairs(tol, output_type="ndarray")
    for i, j in pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]:
        if keep[i] and keep[j]:
            keep[j] = False
    return points[keep]


def subspot_positions(centers_px: np.ndarray, *, lattice: Lattice | None = None) -> np.ndarray:
    """HisToSGE's 4x positions: half-way points between neighbouring spots on the lattice.

    Neighbours are found from the coordinates with a KD-tree (pairs closer than 1.2 lattice
    pitches, see :func:`neighbour_pairs`), so no pixel offset is assumed and the result scales
    with the coordinates.

    - Hexagonal (Visium): the midpoint of every neighbouring pair. An interior spot has 6
      neighbours and shares each edge with one other spot, so there are about 3 new positions
      per spot (fewer at the border): spots plus new positions give about 4x the density.
    - Square (legacy ST): the edge midpoints (about 2 per spot) plus the cell centres (about
      1 per spot): the mean of the 4 corners of a cell, or the midpoint of the diagonal when a
      corner is missing. Again about 4x the density.

    Parameters
    ----------
    centers_px
        ``(n, 2)`` spot centres.
    lattice
        Detected from the coordinates when ``None``.

    Returns
    -------
    ``(m, 2)`` new positions, deduplicated, not including the spots themselves. A hexagonal
    patch of ``nx`` by ``ny`` spots gives ``3 nx ny - 2 nx - 2 ny + 1`` positions; a square
    one gives ``2 nx ny - nx - ny`` edge midpoints plus ``(nx - 1)(ny - 1)`` cell centres.

    Examples
    --------
    >>> xs, ys = np.meshgrid(np.arange(3.0), np.arange(3.0))
    >>> subspot_positions(np.c_[xs.ravel(), ys.ravel()] * 10).shape
    (16, 2)
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(centers_px, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"Expected spot centres of shape (n, 2), found {xy.shape}.")
    if len(xy) < 2:
        return np.zeros((0, 2))
    kind = lattice or detect_lattice(xy)
    assert_one_of("lattice", kind, ["hexagonal", "square"])
    pairs, pitch = neighbour_pairs(xy)
    new = [(xy[pairs[:, 0]] + xy[pairs[:, 1]]) / 2.0]
    if kind == "square" and len(pairs):
        tree = cKDTree(xy)
        diag = tree.query_pairs(_DIAG_MAX * pitch, output_type="ndarray")
        d = np.linalg.norm(xy[diag[:, 0]] - xy[diag[:, 1]], axis=1)
        diag = diag[d > _EDGE_TOL * pitch]
        adjacency: list[set[int]] = [set() for _ in range(len(xy))]
        for i, j in pairs:
            adjacency[i].add(int(j))
            adjacency[j].add(int(i))
        centres = []
        for i, j in diag:
            corners = [int(i), int(j), *sorted(adjacency[i] & adjacency[j])]
            # A cell has exactly two other corners; more means a distorted array: use the diagonal.
            use = corners if len(corners) == 4 else corners[:2]
            centres.append(xy[use].mean(axis=0))
        if centres:
            new.append(np.asarray(centres))
    out = _dedupe(np.concatenate(new), 0.25 * pitch)
    if len(out):
        dist, _ = cKDTree(xy).query(out)
        out = out[dist > 0.25 * pitch]
    return out
