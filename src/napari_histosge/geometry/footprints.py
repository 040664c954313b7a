"""Superpixel grids and the footprints of measured units on them.

A measured unit (a Visium or ST spot, a Visium HD bin, a pooled pseudo-spot, a segmented cell)
is the aggregate of what lies under its footprint. On a regular superpixel grid a footprint is
a row of a sparse ``(units, superpixels)`` membership matrix whose weights sum to one, so that
``membership @ values`` is the mean of per-superpixel values over each footprint.

All positions are ``(x, y)`` in one frame (the H&E image's scale-0 pixels in the package).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "SuperpixelGrid",
    "circle_membership",
    "default_resolution",
    "geometry_membership",
    "pool_membership",
    "superpixel_grid",
    "unit_footprints",
    "unit_membership",
]


@dataclass(frozen=True)
class SuperpixelGrid:
    """A regular square grid of superpixels, of which those in ``mask`` are kept.

    Parameters
    ----------
    origin
        ``(x, y)`` centre of superpixel ``(row 0, column 0)``.
    step
        Side of a superpixel (same frame as ``origin``).
    mask
        ``(rows, columns)`` boolean: which superpixels are kept.
    """

    origin: tuple[float, float]
    step: float
    mask: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the full grid."""
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))

    @property
    def rows_cols(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of each kept superpixel, row by row."""
        r, c = np.nonzero(self.mask)
        return r, c

    @property
    def positions(self) -> np.ndarray:
        """``(n, 2)`` centres ``(x, y)`` of the kept superpixels, row by row."""
        r, c = self.rows_cols
        return np.c_[self.origin[0] + c * self.step, self.origin[1] + r * self.step]

    @property
    def n(self) -> int:
        """Number of kept superpixels."""
        return int(self.mask.sum())

    def to_raster(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Place ``(n, k)`` per-superpixel values on the grid: ``(k, rows, columns)``.

        Examples
        --------
        >>> g = SuperpixelGrid((0.0, 0.0), 1.0, np.array([[True, False], [True, True]]))
        >>> g.to_raster(np.arange(3.0)[:, None])[0].tolist()
        [[0.0, nan], [1.0, 2.0]]
        """
        v = np.asarray(values)
        if v.ndim == 1:
            v = v[:, None]
        if v.shape[0] != self.n:
            raise ValueError(f"Expected values for {self.n} superpixels, found {v.shape[0]}.")
        out = np.full((v.shape[1], *self.shape), fill, dtype=np.float32)
        r, c = self.rows_cols
        out[:, r, c] = v.T
        return out


def superpixel_grid(
    extent: tuple[float, float, float, float],
    step: float,
    *,
    keep: Any = None,
    max_superpixels: int = 20_000_000,
) -> SuperpixelGrid:
    """Lay a grid of ``step``-sided superpixels over ``extent = (x0, y0, x1, y1)``.

    Parameters
    ----------
    extent
        Box to cover.
    step
        Superpixel side.
    keep
        ``callable((n, 2) positions) -> (n,) bool`` choosing the superpixels to keep (tissue,
        or near measured units); all are kept when ``None``.
    max_superpixels
        Refuse larger grids (choose a coarser step).

    Returns
    -------
    The grid.

    Examples
    --------
    >>> superpixel_grid((0.0, 0.0, 10.0, 4.0), 2.0).shape
    (2, 5)
    """
    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"Expected a positive superpixel step, found `{step}`.")
    x0, y0, x1, y1 = (float(v) for v in extent)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(
            f"Expected an extent (x0, y0, x1, y1) with x1 > x0, y1 > y0, found {extent}."
        )
    w = max(1, int(np.ceil((x1 - x0) / step - 1e-9)))
    h = max(1, int(np.ceil((y1 - y0) / step - 1e-9)))
    if w * h > max_superpixels:
        raise ValueError(
            f"Expected at most {max_superpixels} superpixels, found {w * h} at step {step}; "
            "choose a coarser resolution."
        )
    grid = SuperpixelGrid((x0 + step / 2, y0 + step / 2), float(step), np.ones((h, w), bool))
    if keep is None:
        return grid
    mask = np.asarray(keep(grid.positions), dtype=bool).reshape(h, w)
    return SuperpixelGrid(grid.origin, grid.step, mask)


def default_resolution(diameters: np.ndarray, resolution: float) -> float:
    """Return the finer of ``resolution`` and a quarter of the smallest unit diameter.

    Examples
    --------
    >>> default_resolution(np.array([55.0, 60.0]), 8.0)
    8.0
    >>> default_resolution(np.array([16.0]), 8.0)
    4.0
    """
    d = np.asarray(diameters, dtype=float)
    d = d[np.isfinite(d) & (d > 0)]
    if not len(d):
        raise ValueError("Expected at least one unit with a positive diameter, found none.")
    return float(min(resolution, d.min() / 4.0))


def _normalise_rows(rows: np.ndarray, cols: np.ndarray, n_units: int, n_sp: int) -> Any:
    import scipy.sparse as sp

    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_units, n_sp))
    m.data[:] = 1.0  # duplicates (overlapping parts) count once
    m.sum_duplicates()
    m.data[:] = 1.0
    sizes = np.asarray(m.sum(1)).ravel()
    return sp.diags(1.0 / np.maximum(sizes, 1.0)) @ m


def _fill_empty(
    rows: list[np.ndarray], cols: list[np.ndarray], anchors: np.ndarray, positions: np.ndarray
) -> None:
    """Give each unit without a superpixel centre inside its footprint the nearest one."""
    from scipy.spatial import cKDTree

    have = np.zeros(len(anchors), bool)
    if rows:
        have[np.unique(np.concatenate(rows))] = True
    empty = np.flatnonzero(~have)
    if len(empty):
        _, idx = cKDTree(positions).query(anchors[empty])
        rows.append(empty)
        cols.append(np.asarray(idx).ravel())


def circle_membership(positions: np.ndarray, centers: np.ndarray, radii: Any) -> Any:
    """Footprints of circles on superpixels: a row-normalised sparse ``(units, n)`` matrix.

    A superpixel belongs to a circle when its centre lies inside; a circle with no superpixel
    centre inside (smaller than a superpixel) takes its nearest superpixel.

    Examples
    --------
    >>> pos = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    >>> circle_membership(pos, np.array([[0.5, 0.0]]), 1.0).toarray().tolist()
    [[0.5, 0.5, 0.0]]
    """
    from scipy.spatial import cKDTree

    pos = _as_xy(positions, "superpixel positions")
    c = _as_xy(centers, "circle centres")
    r = np.broadcast_to(np.asarray(radii, dtype=float), (len(c),))
    if not np.all(np.isfinite(r) & (r > 0)):
        raise ValueError("Expected positive finite circle radii, found some that are not.")
    tree = cKDTree(pos)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for rad in np.unique(r):
        sel = np.flatnonzero(r == rad)
        hits = tree.query_ball_point(c[sel], rad)
        lens = np.fromiter((len(h) for h in hits), int, len(hits))
        if lens.sum():
            rows.append(np.repeat(sel, lens))
            cols.append(np.concatenate([np.asarray(h, dtype=np.int64) for h in hits if len(h)]))
    _fill_empty(rows, cols, c, pos)
    return _normalise_rows(np.concatenate(rows), np.concatenate(cols), len(c), len(pos))


def geometry_membership(positions: np.ndarray, geometries: Sequence[Any]) -> Any:
    """Footprints of shapely (Multi)Polygons (or circles as ``Point.buffer``) on superpixels.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> pos = np.array([[0.5, 0.5], [1.5, 0.5], [5.0, 5.0]])
    >>> geometry_membership(pos, [box(0, 0, 2, 1)]).toarray().tolist()
    [[0.5, 0.5, 0.0]]
    """
    import shapely
    from scipy.spatial import cKDTree

    pos = _as_xy(positions, "superpixel positions")
    geoms = np.asarray(list(geometries), dtype=object)
    if not len(geoms):
        raise ValueError("Expected at least one footprint geometry, found none.")
    kinds = set(shapely.get_type_id(geoms).tolist())
    if not kinds <= {3, 6}:  # Polygon, MultiPolygon
        raise ValueError(
            "Expected Polygon or MultiPolygon footprints, found geometry types "
            f"{sorted(set(shapely.get_type_id(geoms).tolist()))} (shapely type ids)."
        )
    tree = cKDTree(pos)
    bounds = shapely.bounds(geoms)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for i, (g, b) in enumerate(zip(geoms, bounds, strict=True)):
        centre = (b[:2] + b[2:]) / 2
        half = float(np.hypot(*(b[2:] - b[:2]))) / 2 + 1e-9
        cand = np.asarray(tree.query_ball_point(centre, half), dtype=np.int64)
        if not len(cand):
            continue
        inside = cand[shapely.contains_xy(g, pos[cand, 0], pos[cand, 1])]
        if len(inside):
            rows.append(np.full(len(inside), i))
            cols.append(inside)
    anchors = shapely.get_coordinates(shapely.point_on_surface(geoms))
    _fill_empty(rows, cols, anchors, pos)
    return _normalise_rows(np.concatenate(rows), np.concatenate(cols), len(geoms), len(pos))


def pool_membership(membership: Any, labels: np.ndarray) -> Any:
    """Footprints of pooled units: the union of the members' footprints (row-normalised).

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> m = sp.csr_matrix(np.eye(3))
    >>> pool_membership(m, np.array([0, 0, 1])).toarray().tolist()
    [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    """
    import scipy.sparse as sp

    lab = np.asarray(labels).ravel()
    m = sp.csr_matrix(membership)
    if lab.shape != (m.shape[0],):
        raise ValueError(f"Expected one label per unit ({m.shape[0]}), found {lab.shape}.")
    coo = m.tocoo()
    return _normalise_rows(lab[coo.row], coo.col, int(lab.max()) + 1, m.shape[1])


def _as_xy(values: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"Expected {what} of shape (n, 2), found {a.shape}.")
    return a


def unit_footprints(
    sdata: Any, *, image_key: str, spots_key: str, table_key: str
) -> tuple[str, Any, np.ndarray]:
    """Return the measured units' footprints in the image's scale-0 pixels, in the table's order.

    Returns
    -------
    ``("circles", (centres (n, 2), radii (n,)), diameters)`` or
    ``("polygons", geometries (n,), diameters)``; ``diameters`` are those of the disks of the
    same area as each unit (image pixels).

    Examples
    --------
    >>> from napari_histosge.io import load_sample, resolve_keys
    >>> sdata = load_sample()
    >>> kind, _, d = unit_footprints(sdata, **resolve_keys(sdata).__dict__)
    >>> kind, round(float(d[0]), 1)
    ('circles', 75.7)
    """
    import shapely

    from .spots import spots_to_image_affine, table_units

    _, sel = table_units(sdata, spots_key=spots_key, table_key=table_key)
    to_px = spots_to_image_affine(sdata, image_key=image_key, spots_key=spots_key)
    scale = float(np.sqrt(abs(np.linalg.det(to_px[:2, :2]))))
    if "radius" in sel.columns:
        xy = np.c_[sel.geometry.x.to_numpy(), sel.geometry.y.to_numpy(), np.ones(len(sel))]
        centres = (xy @ to_px.T)[:, :2]
        radii = sel["radius"].to_numpy(dtype=float) * scale
        return "circles", (centres, radii), 2.0 * radii
    from shapely import affinity

    m = to_px
    params = [m[0, 0], m[0, 1], m[1, 0], m[1, 1], m[0, 2], m[1, 2]]
    out = np.asarray([affinity.affine_transform(g, params) for g in sel.geometry], dtype=object)
    diam = 2.0 * np.sqrt(shapely.area(out).astype(float) / np.pi)
    return "polygons", out, diam


def unit_membership(kind: str, footprints: Any, positions: np.ndarray) -> Any:
    """Membership matrix of :func:`unit_footprints` on superpixels at ``positions``.

    Examples
    --------
    >>> unit_membership("circles", (np.zeros((1, 2)), np.ones(1)), np.zeros((1, 2))).shape
    (1, 1)
    """
    if kind == "circles":
        centres, radii = footprints
        return circle_membership(positions, centres, radii)
    if kind == "polygons":
        return geometry_membership(positions, footprints)
    raise ValueError(f"Expected footprints 'circles' or 'polygons', found `{kind}`.")
