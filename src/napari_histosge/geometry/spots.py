"""Spot centres and sizes in image pixels through spatialdata transformations, and dense grids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.base.validation import assert_one_of, assert_positive
from napari_histosge.store import SLIDE_META_KEY

from .lattice import (
    ST_DIAMETER_UM,
    VISIUM_DIAMETER_UM,
    VISIUM_PITCH_UM,
    Lattice,
    detect_lattice,
    lattice_pitch,
    neighbour_pairs,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = [
    "grid_positions",
    "guess_um_per_px",
    "spot_geometry",
    "SpotGeometry",
    "spots_to_image_affine",
]


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
    return np.asarray(
        tf.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")),  # type: ignore[union-attr]
        dtype=float,
    )


def spots_to_image_affine(sdata: SpatialData, *, image_key: str, spots_key: str) -> np.ndarray:
    """Return the 3 x 3 affine matrix from the spots' coordinates to the image's scale-0 pixels.

    It composes the spots' transformation into a coordinate system they share with the image
    and the inverse of the image's transformation into that system.

    Examples
    --------
    >>> from napari_histosge.io import load_sample
    >>> sdata = load_sample()
    >>> spots_to_image_affine(sdata, image_key="V1_Adult_Mouse_Brain_image",
    ...                       spots_key="V1_Adult_Mouse_Brain_spots").round(6).tolist()
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    from spatialdata.transformations import get_transformation

    shapes = sdata.shapes[spots_key]
    image = sdata.images[image_key]
    spot_cs = set(get_transformation(shapes, get_all=True))  # type: ignore[arg-type]
    image_cs = set(get_transformation(image, get_all=True))  # type: ignore[arg-type]
    shared = sorted(spot_cs & image_cs)
    if not shared:
        raise ValueError(
            f"Expected `{spots_key}` and `{image_key}` to share a coordinate system, found "
            f"{sorted(spot_cs)} for the spots and {sorted(image_cs)} for the image."
        )
    cs = "global" if "global" in shared else shared[0]
    image_to_cs = _affine_xy(image, cs)
    if abs(np.linalg.det(image_to_cs[:2, :2])) < 1e-12:
        raise ValueError(f"Expected an invertible transformation of `{image_key}` to `{cs}`.")
    return np.linalg.inv(image_to_cs) @ _affine_xy(shapes, cs)


def table_units(sdata: SpatialData, *, spots_key: str, table_key: str) -> tuple[Any, Any]:
    """Return the table rows annotating ``spots_key`` and their shapes, in the table's order.

    Returns
    -------
    The table's ``obs`` (rows of ``spots_key``) and the matching rows of the shapes element.
    """
    shapes = sdata.shapes[spots_key]
    table = sdata.tables[table_key]
    attrs = table.uns.get("spatialdata_attrs", {})
    instance_key = attrs.get("instance_key")
    if instance_key is None or instance_key not in table.obs:
        raise ValueError(
            f"Expected table `{table_key}` to name its instance key in "
            f"uns['spatialdata_attrs'], found {attrs}."
        )
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
    return obs, shapes.loc[ids]


def spot_geometry(
    sdata: SpatialData, *, image_key: str, spots_key: str, table_key: str
) -> SpotGeometry:
    """Spot centres and diameter in the image's pixels, through the stored transformations.

    Centres go from the spots' frame to a shared coordinate system and back through the inverse
    of the image's transformation, so a scaled hires image works as well as the full
    resolution. The diameter is the circles' radius through the same transformation. For
    (Multi)Polygon footprints the centres are the centroids and the diameter is that of the disk
    with the median area of the polygons' parts (a pooled pseudo-spot's member disks). µm per
    pixel comes from the spot diameter in µm recorded by the readers
    (``table.uns["histosge_slide"]["spot_diameter_um"]``; ``["um_per_px"]`` for polygons).
    For stores written elsewhere it comes from the lattice: the 100 µm Visium pitch on a
    hexagonal array (robust to the 65 µm convention of Space Ranger's
    ``spot_diameter_fullres``), the 100 µm spot diameter on a square (legacy ST) one.

    Parameters
    ----------
    sdata
        The slide.
    image_key, spots_key, table_key
        The H&E image, the spot circles and the table annotating them.

    Returns
    -------
    The spots' geometry, in the table's order.

    Examples
    --------
    >>> from napari_histosge.io import load_sample, resolve_keys
    >>> sdata = load_sample(); keys = resolve_keys(sdata)
    >>> geom = spot_geometry(sdata, **keys.__dict__)
    >>> geom.lattice, round(geom.diameter_px, 1), round(geom.um_per_px, 3)
    ('hexagonal', 75.7, 0.727)
    """
    for key, container, what in (
        (image_key, sdata.images, "image_key"),
        (spots_key, sdata.shapes, "spots_key"),
        (table_key, sdata.tables, "table_key"),
    ):
        assert_one_of(what, key, container, error=KeyError)
    shapes = sdata.shapes[spots_key]
    table = sdata.tables[table_key]
    circles = "radius" in shapes.columns
    kinds = set(shapes.geometry.geom_type.unique())
    if not circles and not (kinds and kinds <= {"Polygon", "MultiPolygon"}):
        raise ValueError(
            f"Expected `{spots_key}` to be circles (a `radius` column) or (Multi)Polygons, "
            f"found columns {list(shapes.columns)} and geometries {sorted(kinds)}."
        )
    to_px = spots_to_image_affine(sdata, image_key=image_key, spots_key=spots_key)

    obs, sel = table_units(sdata, spots_key=spots_key, table_key=table_key)
    pts = sel.geometry if circles else sel.geometry.centroid
    xy = np.c_[pts.x.to_numpy(), pts.y.to_numpy(), np.ones(len(sel))]
    centers = np.ascontiguousarray((xy @ to_px.T)[:, :2], dtype=np.float64)
    if circles:
        radius = float(np.median(sel["radius"].to_numpy(dtype=float)))
    else:  # polygons: the radius of the disk of the same area as each part (pooled disks)
        parts = sel.geometry.explode(index_parts=False).area.to_numpy(dtype=float)
        radius = float(np.median(np.sqrt(parts / np.pi)))
    scale = float(np.sqrt(abs(np.linalg.det(to_px[:2, :2]))))
    diameter_px = 2.0 * radius * scale
    if not np.isfinite(diameter_px) or diameter_px <= 0:
        raise ValueError(f"Expected a positive spot radius in `{spots_key}`, found {radius}.")
    # The array lattice is that of the circles, or of the polygons' parts (pooled spots' disks).
    lattice_xy = centers
    if not circles:
        parts = sel.geometry.explode(index_parts=False).centroid
        pxy = np.c_[parts.x.to_numpy(), parts.y.to_numpy(), np.ones(len(parts))]
        lattice_xy = (pxy @ to_px.T)[:, :2]
    lattice = detect_lattice(lattice_xy)
    meta = dict(table.uns.get(SLIDE_META_KEY, {}))
    if not circles and "um_per_px" in meta:
        um_per_px = float(meta["um_per_px"])
    elif "spot_diameter_um" in meta and circles:
        um_per_px = float(meta["spot_diameter_um"]) / diameter_px
    else:
        um_per_px = guess_um_per_px(lattice_xy, lattice, diameter_px)
    return SpotGeometry(
        spot_ids=np.asarray(obs.index.astype(str)),
        centers_px=centers,
        diameter_px=diameter_px,
        um_per_px=float(um_per_px),
        lattice=lattice,
        image_key=image_key,
    )


def guess_um_per_px(lattice_xy: np.ndarray, lattice: str, diameter_px: float) -> float:
    """µm per pixel from the lattice alone: the 100 µm Visium pitch, else the spot diameter.

    Used when a slide records no resolution: a hexagonal lattice of at least 7 spots is taken as
    Visium (100 µm pitch), anything else by its spots' diameter (55 µm Visium, 100 µm ST).

    Examples
    --------
    >>> round(guess_um_per_px(np.zeros((3, 2)), "square", 50.0), 2)
    2.0
    """
    if lattice == "hexagonal" and len(lattice_xy) >= 7:
        return float(VISIUM_PITCH_UM / neighbour_pairs(lattice_xy)[1])
    diameter_um = VISIUM_DIAMETER_UM if lattice == "hexagonal" else ST_DIAMETER_UM
    return float(diameter_um / diameter_px)


def grid_positions(
    geom: SpotGeometry,
    *,
    pitch_um: float,
    mask: np.ndarray | None = None,
    mask_scale: float = 1.0,
) -> np.ndarray:
    """Lay a regular square grid at ``pitch_um`` over the tissue.

    Without a mask, tissue is where measured spots are: grid points within 0.75 spot pitches of
    a spot. With a boolean ``mask`` (``mask[row, col]``, ``mask_scale`` image pixels per mask
    pixel, for example from :func:`tissue_mask`), the points of that window that fall inside
    the mask are kept.

    Parameters
    ----------
    geom
        The spots' geometry.
    pitch_um
        Grid spacing in µm.
    mask
        Optional boolean tissue mask.
    mask_scale
        Scale-0 image pixels per mask pixel.

    Returns
    -------
    ``(m, 2)`` positions in image pixels, row by row.

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
    assert_positive("mask_scale", mask_scale)
    step = pitch_um / geom.um_per_px
    xy = geom.centers_px
    spacing = lattice_pitch(xy)
    reach = 0.75 * spacing
    lo = xy.min(axis=0) - reach
    hi = xy.max(axis=0) + reach
    n_points = float(np.prod((hi - lo) / step + 1))
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
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"Expected a 2-D tissue mask (rows, columns), found shape {m.shape}.")
    m = m.astype(bool)
    rc = np.floor(grid[:, ::-1] / mask_scale).astype(int)
    ok = (rc[:, 0] >= 0) & (rc[:, 0] < m.shape[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < m.shape[1])
    keep = np.zeros(len(grid), dtype=bool)
    keep[ok] = m[rc[ok, 0], rc[ok, 1]]
    return grid[keep]
