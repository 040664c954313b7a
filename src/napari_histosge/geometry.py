"""Spot centres and sizes in image pixels, super-resolution positions and a tissue mask.

All positions are ``(x, y)`` = (column, row) float64 in the scale-0 pixels of the chosen image
element (see ``docs/architecture.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = [
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

Lattice = Literal["hexagonal", "square"]

#: Centre-to-centre distance and diameter of the spots, in µm, per array layout.
VISIUM_PITCH_UM = 100.0
VISIUM_DIAMETER_UM = 55.0
ST_PITCH_UM = 200.0
ST_DIAMETER_UM = 100.0

# Neighbours are pairs closer than this many lattice pitches: between the nearest (1) and the
# next-nearest distance of a square (sqrt 2) and of a hexagonal lattice (sqrt 3).
_EDGE_TOL = 1.2
_DIAG_MAX = 1.7


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


# --------------------------------------------------------------------------------------------
# Lattice


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


# --------------------------------------------------------------------------------------------
# Spots on the image


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


def spot_geometry(
    sdata: SpatialData, *, image_key: str, spots_key: str, table_key: str
) -> SpotGeometry:
    """Spot centres and diameter in the image's pixels, through the stored transformations.

    Centres go from the spots' frame to a shared coordinate system and back through the inverse
    of the image's transformation, so a scaled hires image works as well as the full
    resolution. The diameter is the circles' radius through the same transformation. µm per
    pixel comes from the spot diameter in µm recorded by the readers
    (``table.uns["histosge_slide"]["spot_diameter_um"]``). For stores written elsewhere it comes
    from the lattice: the 100 µm Visium pitch on a hexagonal array (robust to the 65 µm
    convention of Space Ranger's ``spot_diameter_fullres``), the 100 µm spot diameter on a
    square (legacy ST) one.

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
    from .io import SLIDE_META_KEY

    for key, container, what in (
        (image_key, sdata.images, "image_key"),
        (spots_key, sdata.shapes, "spots_key"),
        (table_key, sdata.tables, "table_key"),
    ):
        if key not in container:
            raise KeyError(f"Expected `{what}` to be one of {list(container)}, found `{key}`.")
    shapes = sdata.shapes[spots_key]
    table = sdata.tables[table_key]
    if "radius" not in shapes.columns:
        raise ValueError(
            f"Expected `{spots_key}` to be circles (a `radius` column), found columns "
            f"{list(shapes.columns)}."
        )
    to_px = spots_to_image_affine(sdata, image_key=image_key, spots_key=spots_key)

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
    sel = shapes.loc[ids]
    xy = np.c_[sel.geometry.x.to_numpy(), sel.geometry.y.to_numpy(), np.ones(len(sel))]
    centers = np.ascontiguousarray((xy @ to_px.T)[:, :2], dtype=np.float64)
    radius = float(np.median(sel["radius"].to_numpy(dtype=float)))
    scale = float(np.sqrt(abs(np.linalg.det(to_px[:2, :2]))))
    diameter_px = 2.0 * radius * scale
    if not np.isfinite(diameter_px) or diameter_px <= 0:
        raise ValueError(f"Expected a positive spot radius in `{spots_key}`, found {radius}.")
    lattice = detect_lattice(centers)
    meta = dict(table.uns.get(SLIDE_META_KEY, {}))
    if "spot_diameter_um" in meta:
        um_per_px = float(meta["spot_diameter_um"]) / diameter_px
    elif lattice == "hexagonal" and len(centers) >= 7:
        um_per_px = VISIUM_PITCH_UM / neighbour_pairs(centers)[1]
    else:
        diameter_um = VISIUM_DIAMETER_UM if lattice == "hexagonal" else ST_DIAMETER_UM
        um_per_px = diameter_um / diameter_px
    return SpotGeometry(
        spot_ids=np.asarray(obs.index.astype(str)),
        centers_px=centers,
        diameter_px=diameter_px,
        um_per_px=float(um_per_px),
        lattice=lattice,
        image_key=image_key,
    )


# --------------------------------------------------------------------------------------------
# Super-resolution positions


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
    if kind not in ("hexagonal", "square"):
        raise ValueError(
            f"Expected `lattice` to be one of ['hexagonal', 'square'], found `{kind}`."
        )
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
    if not np.isfinite(mask_scale) or mask_scale <= 0:
        raise ValueError(f"Expected a positive `mask_scale`, found `{mask_scale}`.")
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


# --------------------------------------------------------------------------------------------
# Tissue mask


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between))])


def tissue_mask(
    image: Any, *, level: int | None = None, max_side: int = 2048
) -> tuple[np.ndarray, float]:
    """Compute a boolean tissue mask of an H&E image: Otsu threshold on colour saturation.

    Stained tissue is saturated, glass and background are grey or white. The mask is computed
    on a low-resolution level, then closed, hole-filled and opened.

    Parameters
    ----------
    image
        An image element (single or multiscale), ``(c, y, x)`` RGB.
    level
        Pyramid level to use; by default the coarsest level at least 512 pixels on its longer
        side.
    max_side
        The chosen level is subsampled further to at most this many pixels per side.

    Returns
    -------
    The mask (``mask[row, col]``) and the scale-0 image pixels per mask pixel, ready for
    ``grid_positions(..., mask=mask, mask_scale=scale)``.

    Examples
    --------
    >>> from napari_histosge.io import load_sample
    >>> mask, scale = tissue_mask(load_sample().images["V1_Adult_Mouse_Brain_image"])
    >>> mask.dtype, scale
    (dtype('bool'), 1.0)
    """
    from scipy import ndimage

    from .io import image_levels

    levels = image_levels(image)
    if level is None:
        sides = [max(lv.sizes["y"], lv.sizes["x"]) for lv in levels]
        ok = [i for i, s in enumerate(sides) if s >= 512]
        level = ok[-1] if ok else 0
    if not -len(levels) <= level < len(levels):
        raise ValueError(f"Expected `level` in [0, {len(levels) - 1}], found `{level}`.")
    lv = levels[level]
    stride = max(1, int(np.ceil(max(lv.sizes["y"], lv.sizes["x"]) / max_side)))
    rgb = np.asarray(lv.data[:3, ::stride, ::stride], dtype=np.float32)
    if rgb.shape[0] != 3:
        raise ValueError(f"Expected an RGB image (3 channels), found {rgb.shape[0]}.")
    hi = rgb.max(axis=0)
    lo = rgb.min(axis=0)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
    t = _otsu(sat)
    mask = sat > t
    mask = ndimage.binary_closing(mask, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_opening(mask, iterations=2)
    scale = levels[0].sizes["x"] / lv.sizes["x"] * stride
    return np.asarray(mask, dtype=bool), float(scale)
