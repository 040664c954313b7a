"""Rasterise predictions into per-gene maps placed on the H&E image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from napari_histosge.base.validation import assert_one_of, assert_positive

from .predict import Predictions

if TYPE_CHECKING:
    from .geometry import SpotGeometry

__all__ = [
    "GeneMaps",
    "default_pitch_px",
    "map_layout",
    "on_map",
    "place_on_grid",
    "pyramid_factors",
    "rasterize",
    "sample_map",
]


@dataclass
class GeneMaps:
    """Per-gene expression maps on a regular grid over the H&E image.

    Map pixel ``(row i, col j)`` is centred at H&E pixel
    ``(x, y) = (origin_px[0] + j * pitch_px, origin_px[1] + i * pitch_px)``; in napari this is
    ``scale=(pitch_px, pitch_px)`` and ``translate=(origin_px[1], origin_px[0])`` on the H&E's
    world frame.

    Parameters
    ----------
    data
        ``(g, h, w)`` float32, NaN off tissue: a numpy array, or a dask array computed a few
        genes at a time.
    genes
        Channel names.
    pitch_px
        Size of one map pixel in H&E scale-0 pixels.
    origin_px
        ``(x, y)`` of the centre of map pixel ``[0, 0]`` in H&E pixels.
    scale_factors
        Pyramid downscaling factors for the export (none: a single scale).
    mantissa_bits
        float32 mantissa bits the export keeps at the coarser scales (all when ``None``); the
        renderer of ``data`` rounds the finest scale the same way.
    """

    data: np.ndarray
    genes: list[str]
    pitch_px: float
    origin_px: tuple[float, float]
    scale_factors: tuple[int, ...] = ()
    mantissa_bits: int | None = None

    @property
    def scale(self) -> tuple[float, float]:
        """Napari ``scale`` (y, x) on the H&E world frame."""
        return (self.pitch_px, self.pitch_px)

    @property
    def translate(self) -> tuple[float, float]:
        """Napari ``translate`` (y, x) on the H&E world frame."""
        return (self.origin_px[1], self.origin_px[0])

    def gene(self, name: str) -> np.ndarray:
        """Return the ``(h, w)`` map of one gene."""
        if name not in self.genes:
            raise KeyError(f"Expected a rendered gene among `{self.genes[:10]}`, found `{name}`.")
        return np.asarray(self.data[self.genes.index(name)])

    def pixel_of(self, xy_px: np.ndarray) -> np.ndarray:
        """Map pixel ``(row, col)`` containing each H&E position ``(x, y)``.

        Examples
        --------
        >>> m = GeneMaps(np.zeros((1, 4, 4), "float32"), ["a"], 10.0, (5.0, 5.0))
        >>> m.pixel_of(np.array([[26.0, 14.0]])).tolist()
        [[1, 2]]
        """
        xy = np.atleast_2d(np.asarray(xy_px, dtype=float))
        col = np.rint((xy[:, 0] - self.origin_px[0]) / self.pitch_px).astype(int)
        row = np.rint((xy[:, 1] - self.origin_px[1]) / self.pitch_px).astype(int)
        return np.stack([row, col], axis=1)


def _nearest_spacing(points: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    if len(points) < 2:
        raise ValueError(f"Expected at least 2 positions to rasterise, found {len(points)}.")
    dist, _ = cKDTree(points).query(points, k=2)
    spacing = float(np.median(dist[:, 1]))
    if not np.isfinite(spacing) or spacing <= 0:
        raise ValueError("Expected distinct positions to rasterise, found duplicates only.")
    return spacing


def default_pitch_px(positions_px: np.ndarray) -> float:
    """Map pixel size: a quarter of the median distance between neighbouring positions.

    Examples
    --------
    >>> default_pitch_px(np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]]))
    25.0
    """
    return _nearest_spacing(np.asarray(positions_px, dtype=float)) / 4.0


def map_layout(
    xy: np.ndarray, pitch_px: float | None, *, clip: bool = False
) -> tuple[float, float, np.ndarray, int, int]:
    """Lay a map grid over positions ``xy``: ``(spacing, pitch, origin, height, width)``.

    The grid reaches three quarters of the positions' spacing past the outermost ones (not
    below pixel 0 with ``clip``); its pixels are ``pitch_px`` wide (a quarter of the spacing
    by default) and ``origin`` is the centre of pixel ``[0, 0]``.

    Examples
    --------
    >>> xy = np.array([[10.0, 10.0], [30.0, 10.0], [10.0, 30.0], [30.0, 30.0]])
    >>> spacing, pitch, origin, h, w = map_layout(xy, 5.0)
    >>> spacing, pitch, origin.tolist(), h, w
    (20.0, 5.0, [-2.5, -2.5], 10, 10)
    """
    spacing = _nearest_spacing(xy)
    pitch = float(pitch_px) if pitch_px is not None else spacing / 4.0
    assert_positive("pitch_px", pitch)
    reach = 0.75 * spacing
    lo = xy.min(axis=0) - reach
    hi = xy.max(axis=0) + reach
    if clip:
        lo = np.maximum(lo, 0.0)
    origin = lo + pitch / 2.0
    width = int(np.ceil((hi[0] - lo[0]) / pitch))
    height = int(np.ceil((hi[1] - lo[1]) / pitch))
    return spacing, pitch, origin, height, width


def rasterize(
    predictions: Predictions,
    *,
    genes: Sequence[str] | None = None,
    pitch_px: float | None = None,
    method: Literal["nearest", "gaussian"] = "nearest",
    geometry: SpotGeometry | None = None,
) -> GeneMaps:
    """Rasterise predictions into one ``(genes, y, x)`` float32 map over the tissue.

    Each map pixel takes the prediction of its nearest position (``"nearest"``, so a spot's pixel
    holds exactly that spot's prediction) or a Gaussian-weighted mean of nearby positions
    (``"gaussian"``). Pixels farther than 0.75 of the position spacing from every position are
    off tissue and set to NaN.

    Parameters
    ----------
    predictions
        Output of :func:`napari_histosge.workflows.pipeline.predict`.
    genes
        Genes to render; all predicted genes by default.
    pitch_px
        Map pixel size in H&E pixels; a quarter of the position spacing by default.
    method
        Interpolation between positions.
    geometry
        Unused except to bound the map to the image when given.

    Returns
    -------
    The maps with their placement on the H&E image.

    Examples
    --------
    >>> xy = np.array([[10.0, 10.0], [30.0, 10.0], [10.0, 30.0], [30.0, 30.0]])
    >>> p = Predictions(["g"], xy, np.arange(4.0)[:, None], np.array(["spot"] * 4),
    ...                 np.array(list("abcd")), 20.0)
    >>> maps = rasterize(p, pitch_px=5.0)
    >>> float(maps.gene("g")[tuple(maps.pixel_of(xy[3:])[0])])
    3.0
    """
    from scipy.spatial import cKDTree

    xy = np.asarray(predictions.positions_px, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"Expected positions of shape (m, 2), found {xy.shape}.")
    names = list(predictions.genes) if genes is None else list(genes)
    if not names:
        raise ValueError("Expected at least one gene to render, found none.")
    cols = predictions.gene_index(names)
    spacing, pitch, origin, height, width = map_layout(xy, pitch_px, clip=geometry is not None)
    reach = 0.75 * spacing
    gx = origin[0] + pitch * np.arange(width)
    gy = origin[1] + pitch * np.arange(height)
    grid = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)

    tree = cKDTree(xy)
    values = np.asarray(predictions.values, dtype=np.float32)[:, cols]
    out = np.full((len(names), height * width), np.nan, dtype=np.float32)
    step = 64  # genes per block: bounds the temporary copies for large gene panels
    if method == "nearest":
        dist, idx = tree.query(grid, k=1)
        inside = np.flatnonzero(dist <= reach)
        src = idx[inside]
        for g0 in range(0, len(names), step):
            out[g0 : g0 + step, inside] = values[src, g0 : g0 + step].T
    elif method == "gaussian":
        k = min(7, len(xy))
        dist, idx = tree.query(grid, k=k)
        inside = dist[:, 0] <= reach
        sigma = spacing / 2.0
        w = np.exp(-0.5 * (dist[inside] / sigma) ** 2)
        w /= w.sum(axis=1, keepdims=True)
        near = idx[inside]
        for g0 in range(0, len(names), step):
            block = values[:, g0 : g0 + step][near]
            out[g0 : g0 + step, inside] = np.einsum("pk,pkg->gp", w, block).astype(np.float32)
    else:
        assert_one_of("method", method, ["nearest", "gaussian"])
    data = out.reshape(len(names), height, width)
    return GeneMaps(
        data=data, genes=names, pitch_px=pitch, origin_px=(float(origin[0]), float(origin[1]))
    )


def sample_map(maps: GeneMaps, gene: str, xy_px: np.ndarray) -> np.ndarray:
    """Values of one gene's map at H&E positions ``(x, y)``; NaN outside the map.

    Examples
    --------
    >>> m = GeneMaps(np.ones((1, 2, 2), "float32"), ["a"], 10.0, (5.0, 5.0))
    >>> sample_map(m, "a", np.array([[5.0, 5.0], [500.0, 5.0]])).tolist()
    [1.0, nan]
    """
    plane = maps.gene(gene)
    rc = maps.pixel_of(xy_px)
    ok = (
        (rc[:, 0] >= 0)
        & (rc[:, 0] < plane.shape[0])
        & (rc[:, 1] >= 0)
        & (rc[:, 1] < plane.shape[1])
    )
    out = np.full(len(rc), np.nan, dtype=np.float32)
    out[ok] = plane[rc[ok, 0], rc[ok, 1]]
    return out


def pyramid_factors(h: int, w: int) -> tuple[int, ...]:
    """Downscaling factors of a map's pyramid: halve until the longer side is under 256.

    Examples
    --------
    >>> pyramid_factors(1000, 300)
    (2, 2)
    """
    factors: list[int] = []
    side = max(h, w)
    while side >= 256 and len(factors) < 5:
        factors.append(2)
        side //= 2
    return tuple(factors)


def place_on_grid(out: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: Any) -> None:
    """Set ``out[:, rows, cols] = values`` (``(g, n)``), copying runs of adjacent pixels.

    The positions of a superpixel grid are a few runs of consecutive pixels along its rows:
    copying each run as a slice is several times faster than scattering every pixel (which
    is done when the runs are many, or the positions out of order).

    Examples
    --------
    >>> out = np.zeros((1, 2, 3), "float32")
    >>> place_on_grid(out, np.array([0, 0, 1]), np.array([1, 2, 0]), np.array([[1, 2, 3]]))
    >>> out.tolist()
    [[[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]]
    """
    flat = np.asarray(rows, dtype=np.int64) * out.shape[2] + np.asarray(cols, dtype=np.int64)
    plane = out.reshape(len(out), -1)
    step = np.diff(flat)
    starts = np.flatnonzero(step != 1) + 1
    if len(flat) < 2 or len(starts) > len(flat) // 64 or bool((step <= 0).any()):
        plane[:, flat] = values
        return
    bounds = np.concatenate([[0], starts, [len(flat)]])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        plane[:, flat[a] : flat[a] + (b - a)] = values[:, a:b]


def on_map(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> Any:
    """Lay per-position ``values`` ``(..., n)`` out on a map's pixels: ``(..., h * w)``, NaN off.

    Examples
    --------
    >>> on_map(np.array([1.0, 2.0]), np.array([0, 1]), np.array([1, 0]), (2, 2)).tolist()
    [nan, 1.0, 2.0, nan]
    """
    lead = values.shape[:-1]
    out = np.full((int(np.prod(lead)), *shape), np.nan, dtype=values.dtype)
    place_on_grid(out, rows, cols, values.reshape(-1, values.shape[-1]))
    return out.reshape(*lead, shape[0] * shape[1])
