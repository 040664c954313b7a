"""Spot centres and sizes in image pixels, and super-resolution positions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = [
    "SpotGeometry",
    "detect_lattice",
    "grid_positions",
    "lattice_pitch",
    "spot_geometry",
    "subspot_positions",
]

Lattice = Literal["hexagonal", "square"]


@dataclass(frozen=True)
class SpotGeometry:
    """Where the spots are on the H&E image.

    Parameters
    ----------
    spot_ids
        ``(n,)`` spot ids in the table's order.
    centers_px
        ``(n, 2)`` spot centres ``(x, y)`` in the image's scale-0 pixels.
    diameter_px
        Spot diameter in image pixels.
    um_per_px
        Micrometres per image pixel.
    lattice
        ``"hexagonal"`` (Visium) or ``"square"`` (legacy ST).
    image_key
        The image the pixels refer to.
    """

    spot_ids: np.ndarray
    centers_px: np.ndarray
    diameter_px: float
    um_per_px: float
    lattice: Lattice
    image_key: str

    @property
    def pitch_px(self) -> float:
        """Median centre-to-centre distance of neighbouring spots, in pixels."""
        return lattice_pitch(self.centers_px)

    @property
    def centers_um(self) -> np.ndarray:
        """Spot centres in µm."""
        return self.centers_px * self.um_per_px


def _affine_xy(element: object, cs: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    tf = get_transformation(element, to_coordinate_system=cs)
    return np.asarray(tf.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def lattice_pitch(xy: np.ndarray) -> float:
    """Median nearest-neighbour distance.

    Examples
    --------
    >>> lattice_pitch(np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]))
    2.0
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=float)
    if len(xy) < 2:
        raise ValueError(f"Expected at least 2 spots to measure their spacing, found {len(xy)}.")
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


def detect_lattice(xy: np.ndarray) -> Lattice:
    """Tell a hexagonal (Visium) from a square (legacy ST) spot array.

    On a hexagonal lattice an interior spot has 6 neighbours at the pitch, on a square one 4;
    the decision uses the most common count among spots with any neighbour.

    Examples
    --------
    >>> xs, ys = np.meshgrid(np.arange(5.0), np.arange(5.0))
    >>> detect_lattice(np.c_[xs.ravel(), ys.ravel()])
    'square'
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=float)
    pitch = lattice_pitch(xy)
    tree = cKDTree(xy)
    counts = np.array([len(n) - 1 for n in tree.query_ball_point(xy, r=1.2 * pitch)])
    return "hexagonal" if np.percentile(counts, 90) >= 5.5 else "square"


def spot_geometry(
    sdata: SpatialData, *, image_key: str, spots_key: str, table_key: str
) -> SpotGeometry:
    """Spot centres and diameter in the image's pixels, through the stored transformations.

    Centres go from the spots' frame to a shared coordinate system and back through the inverse
    of the image's transformation, so a scaled hires image works as well as the full resolution.

    Examples
    --------
    >>> from napari_histosge.io import load_sample, resolve_keys
    >>> sdata = load_sample(); keys = resolve_keys(sdata)
    >>> round(spot_geometry(sdata, **keys.__dict__).diameter_px, 1)
    89.4
    """
    from spatialdata.transformations import get_transformation

    from .io import SLIDE_META_KEY

    shapes = sdata.shapes[spots_key]
    table = sdata.tables[table_key]
    image = sdata.images[image_key]
    shared = sorted(
        set(get_transformation(shapes, get_all=True)) & set(get_transformation(image, get_all=True))
    )
    if not shared:
        raise ValueError(
            f"Expected `{spots_key}` and `{image_key}` to share a coordinate system, found none."
        )
    cs = "global" if "global" in shared else shared[0]
    to_px = np.linalg.inv(_affine_xy(image, cs)) @ _affine_xy(shapes, cs)

    attrs = table.uns.get("spatialdata_attrs", {})
    instance_key = attrs.get("instance_key")
    if instance_key is None or instance_key not in table.obs:
        raise ValueError(f"Expected table `{table_key}` to name its instance key, found {attrs}.")
    region_key = attrs.get("region_key")
    obs = table.obs
    if region_key in obs and obs[region_key].nunique() > 1:
        obs = obs[obs[region_key].astype(str) == spots_key]
    ids = obs[instance_key].to_numpy()
    missing = ~np.isin(ids, shapes.index.to_numpy())
    if missing.any():
        raise ValueError(
            f"Expected every row of table `{table_key}` to annotate a spot of `{spots_key}`, found "
            f"{int(missing.sum())} rows naming unknown spots, e.g. {list(ids[missing][:3])}."
        )
    sel = shapes.loc[ids]
    xy = np.c_[sel.geometry.x.to_numpy(), sel.geometry.y.to_numpy(), np.ones(len(sel))]
    centers = (xy @ to_px.T)[:, :2]
    radius = float(np.median(sel["radius"].to_numpy(dtype=float)))
    scale = float(np.sqrt(abs(np.linalg.det(to_px[:2, :2]))))
    diameter_px = 2.0 * radius * scale
    lattice = detect_lattice(centers) if len(centers) >= 3 else "hexagonal"
    meta = dict(table.uns.get(SLIDE_META_KEY, {}))
    diameter_um = float(meta.get("spot_diameter_um", 55.0 if lattice == "hexagonal" else 100.0))
    if diameter_px <= 0:
        raise ValueError(f"Expected a positive spot radius in `{spots_key}`, found {radius}.")
    return SpotGeometry(
        spot_ids=np.asarray(obs.index.astype(str)),
        centers_px=centers,
        diameter_px=diameter_px,
        um_per_px=diameter_um / diameter_px,
        lattice=lattice,
        image_key=image_key,
    )


def _dedupe(points: np.ndarray, tol: float) -> np.ndarray:
    from scipy.spatial import cKDTree

    if len(points) == 0:
        return points.reshape(0, 2)
    tree = cKDTree(points)
    keep = np.ones(len(points), dtype=bool)
    for i, j in sorted(tree.query_pairs(tol)):
        if keep[i] and keep[j]:
            keep[j] = False
    return points[keep]


def subspot_positions(centers_px: np.ndarray, *, lattice: Lattice | None = None) -> np.ndarray:
    """HisToSGE's 4x positions: half-way points between neighbouring spots on the lattice.

    Neighbours are found from the coordinates (pairs closer than 1.2 pitches), so no pixel offset
    is assumed. On a hexagonal lattice the edge midpoints add about 3 positions per spot; on a
    square lattice the edge midpoints add about 2 and the cell centres (midpoints of diagonal
    neighbours) about 1, so the density grows about 4x on both.

    Parameters
    ----------
    centers_px
        ``(n, 2)`` spot centres.
    lattice
        Detected from the coordinates when ``None``.

    Returns
    -------
    ``(m, 2)`` new positions, not including the spots themselves.

    Examples
    --------
    >>> xs, ys = np.meshgrid(np.arange(3.0), np.arange(3.0))
    >>> subspot_positions(np.c_[xs.ravel(), ys.ravel()] * 10).shape
    (16, 2)
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(centers_px, dtype=float)
    pitch = lattice_pitch(xy)
    kind = lattice or detect_lattice(xy)
    tree = cKDTree(xy)
    pairs = np.array(sorted(tree.query_pairs(1.2 * pitch)), dtype=int).reshape(-1, 2)
    mids = [(xy[pairs[:, 0]] + xy[pairs[:, 1]]) / 2.0]
    if kind == "square":
        diag = np.array(sorted(tree.query_pairs(1.6 * pitch)), dtype=int).reshape(-1, 2)
        d = np.linalg.norm(xy[diag[:, 0]] - xy[diag[:, 1]], axis=1)
        diag = diag[(d > 1.2 * pitch) & (d < 1.6 * pitch)]
        mids.append((xy[diag[:, 0]] + xy[diag[:, 1]]) / 2.0)
    new = _dedupe(np.concatenate(mids), 0.1 * pitch)
    if len(new):
        dist, _ = tree.query(new)
        new = new[dist > 0.1 * pitch]
    return new


def grid_positions(
    geometry: SpotGeometry,
    *,
    pitch_um: float,
    mask: np.ndarray | None = None,
    mask_scale: float = 1.0,
) -> np.ndarray:
    """A regular grid at ``pitch_um`` restricted to tissue.

    Without a mask, tissue is where measured spots are: grid points within 0.75 of the spot
    spacing from a spot. With a boolean ``mask`` (``mask[row, col]`` at ``mask_scale`` image
    pixels per mask pixel), points inside the mask are kept.

    Examples
    --------
    >>> g = SpotGeometry(np.array(["a", "b"]), np.array([[0.0, 0.0], [100.0, 0.0]]), 55.0, 1.0,
    ...                  "hexagonal", "he")
    >>> len(grid_positions(g, pitch_um=25.0)) > 4
    True
    """
    from scipy.spatial import cKDTree

    if not np.isfinite(pitch_um) or pitch_um <= 0:
        raise ValueError(f"Expected a positive grid pitch in µm, found `{pitch_um}`.")
    step = pitch_um / geometry.um_per_px
    xy = geometry.centers_px
    spacing = lattice_pitch(xy)
    reach = 0.75 * spacing
    lo = xy.min(axis=0) - reach
    hi = xy.max(axis=0) + reach
    n_points = ((hi - lo) / step + 1).prod()
    if n_points > 5_000_000:
        raise ValueError(
            f"Expected a grid of at most 5 million points, found {int(n_points)} at {pitch_um} µm; "
            "choose a larger pitch."
        )
    gx = np.arange(lo[0], hi[0] + step / 2, step)
    gy = np.arange(lo[1], hi[1] + step / 2, step)
    grid = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    if mask is None:
        dist, _ = cKDTree(xy).query(grid)
        return grid[dist <= reach]
    m = np.asarray(mask, dtype=bool)
    rc = np.floor(grid[:, ::-1] / mask_scale).astype(int)
    ok = (rc[:, 0] >= 0) & (rc[:, 0] < m.shape[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < m.shape[1])
    keep = np.zeros(len(grid), dtype=bool)
    keep[ok] = m[rc[ok, 0], rc[ok, 1]]
    return grid[keep]
