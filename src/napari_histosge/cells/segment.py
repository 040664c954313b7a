"""Nuclei of a whole slide in overlapping tiles, stitched so that none is cut or counted twice.

The slide is segmented tile by tile (:mod:`._classical` on each window); each window reaches
``margin`` pixels beyond its tile on every side, more than the largest nucleus, so a nucleus
that touches the tile is seen whole. A nucleus belongs to the tile holding its centroid; its
pixels in a neighbouring tile keep its id because the neighbour, which sees the same pixels
with enough context, finds the same nucleus with the same centroid. Tiles are written to a
temporary zarr array as they come, so memory stays at a few windows whatever the slide's size.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from napari_histosge.base.progress import Progress, run_generator

__all__ = ["NucleiOptions", "Nuclei", "iter_segment_nuclei", "segment_nuclei"]


@dataclass(frozen=True)
class NucleiOptions:
    """Settings of the nucleus segmentation.

    Parameters
    ----------
    method
        ``"classical"``: colour deconvolution, threshold and watershed (scikit-image);
        ``"stardist"``: a StarDist model from the local folder ``weights`` (optional package).
    min_diameter_um, max_diameter_um
        Nuclei sizes kept (diameters of disks of the same area, µm).
    sigma_um
        Gaussian smoothing of the haematoxylin channel.
    threshold
        Threshold on the haematoxylin above its local background; ``None``: Otsu's threshold
        over a few windows spread over the area.
    max_um_per_px
        Segment on the coarsest pyramid level whose pixels are at most this size (scale 0
        when none is).
    tile_px
        Tile side in pixels of the level segmented.
    expand_um
        Growth of each nucleus into its cell footprint (``expand_labels``).
    weights
        ``"stardist"``: the local StarDist model folder (:mod:`._deep`).
    workers
        Processes segmenting tiles at once (classical method; 1: in this process).
    """

    method: Literal["classical", "stardist"] = "classical"
    min_diameter_um: float = 4.0
    max_diameter_um: float = 15.0
    sigma_um: float = 0.5
    threshold: float | None = None
    max_um_per_px: float = 0.6
    tile_px: int = 2048
    expand_um: float = 3.0
    weights: str | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        if self.method not in ("classical", "stardist"):
            raise ValueError(
                f"Expected a nucleus method in ['classical', 'stardist'], found `{self.method}`."
            )
        if self.method == "stardist" and not self.weights:
            raise ValueError("Expected the StarDist model folder in `weights`, found none.")
        if not 0 < self.min_diameter_um < self.max_diameter_um:
            raise ValueError(
                "Expected 0 < min_diameter_um < max_diameter_um, found "
                f"{self.min_diameter_um} and {self.max_diameter_um}."
            )
        if self.tile_px < 128:
            raise ValueError(f"Expected tiles of at least 128 px, found `{self.tile_px}`.")
        if self.expand_um < 0 or self.sigma_um < 0:
            raise ValueError("Expected non-negative expand_um and sigma_um.")


@dataclass
class Nuclei:
    """Nuclei of an area of a slide.

    Parameters
    ----------
    labels
        ``(h, w)`` int32 dask array of the nuclei on the level segmented (0: none; ids are the
        rows of ``table`` plus one).
    factor
        Size of one label pixel in scale-0 image pixels.
    offset_px
        ``(x, y)`` of the label array's corner in scale-0 image pixels.
    um_per_px
        Size of one label pixel in µm.
    table
        One row per nucleus: ``x``, ``y`` (centroid, scale-0 pixels), ``area_um2``,
        ``eccentricity``, ``ellipse_fill``, ``haematoxylin``.
    meta
        Method, parameters, threshold and counts.
    """

    labels: Any
    factor: int
    offset_px: tuple[int, int]
    um_per_px: float
    table: Any
    meta: dict[str, Any]
    _cleanup: Any = None

    @property
    def n(self) -> int:
        """Number of nuclei."""
        return len(self.table)

    @property
    def temporary(self) -> bool:
        """Whether the labels live in temporary tiles, which :meth:`close` removes."""
        return self._cleanup is not None

    def close(self) -> None:
        """Remove the temporary tiles behind ``labels`` (compute or write them first)."""
        if self._cleanup is not None:
            self._cleanup.cleanup()


def _levels(image: Any) -> list[Any]:
    """``(c, y, x)`` arrays of every pyramid level of an image element, finest first."""
    if getattr(image, "children", None):
        return [image[k]["image"].data for k in sorted(image.children, key=lambda k: int(k[5:]))]
    return [image.data]


def _pick_level(levels: list[Any], um: float, max_um: float) -> tuple[int, Any]:
    h0 = levels[0].shape[-1]
    best = (1, levels[0])
    for arr in levels[1:]:
        f = int(round(h0 / arr.shape[-1]))
        if f > 1 and um * f <= max_um * (1 + 1e-6) and f > best[0]:
            best = (f, arr)
    return best


def _tile_grid(h: int, w: int, tile: int) -> list[tuple[int, int, int, int]]:
    return [
        (y0, min(h, y0 + tile), x0, min(w, x0 + tile))
        for y0 in range(0, h, tile)
        for x0 in range(0, w, tile)
    ]


def _window(arr: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB of one window of a ``(c, y, x)`` level."""
    a = np.asarray(arr[:3, y0:y1, x0:x1])
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(a, 0, -1))


def _otsu_threshold(
    arr: Any, box: tuple[int, int, int, int], um: float, opts: NucleiOptions
) -> float:
    """Otsu's threshold of the nuclear signal over 9 windows of 512 px spread over ``box``."""
    from skimage.filters import threshold_otsu

    from ._classical import nuclear_signal

    y0, y1, x0, x1 = box
    side = min(512, y1 - y0, x1 - x0)
    values = []
    for fy in (0.25, 0.5, 0.75):
        for fx in (0.25, 0.5, 0.75):
            cy = min(max(y0, int(y0 + fy * (y1 - y0)) - side // 2), y1 - side)
            cx = min(max(x0, int(x0 + fx * (x1 - x0)) - side // 2), x1 - side)
            rgb = _window(arr, cy, cy + side, cx, cx + side)
            sig, _ = nuclear_signal(rgb, um, opts.sigma_um, opts.max_diameter_um)
            values.append(sig.ravel())
    v = np.concatenate(values)
    return float(threshold_otsu(v)) if np.ptp(v) > 0 else float(v.max() + 1.0)


def _object_stats(labels: np.ndarray, hema: np.ndarray) -> dict[str, np.ndarray]:
    """Area, centroid, shape and mean haematoxylin of every label (from moments, vectorised)."""
    flat = labels.ravel()
    at = np.flatnonzero(flat)
    lab = flat[at]
    n = int(labels.max()) + 1
    yy, xx = np.divmod(at, labels.shape[1])
    yy, xx = yy.astype(np.float64), xx.astype(np.float64)
    cnt = np.bincount(lab, minlength=n).astype(np.float64)
    c = np.maximum(cnt, 1.0)
    sx = np.bincount(lab, xx, n) / c
    sy = np.bincount(lab, yy, n) / c
    vxx = np.bincount(lab, xx * xx, n) / c - sx**2 + 1 / 12
    vyy = np.bincount(lab, yy * yy, n) / c - sy**2 + 1 / 12
    vxy = np.bincount(lab, xx * yy, n) / c - sx * sy
    half_tr, det = (vxx + vyy) / 2, vxx * vyy - vxy**2
    disc = np.sqrt(np.maximum(half_tr**2 - det, 0.0))
    l1, l2 = half_tr + disc, np.maximum(half_tr - disc, 1e-12)
    return {
        "count": cnt,
        "x": sx,
        "y": sy,
        "eccentricity": np.sqrt(np.clip(1.0 - l2 / np.maximum(l1, 1e-12), 0.0, 1.0)),
        "ellipse_fill": cnt / (4.0 * np.pi * np.sqrt(l1 * l2)),
        "haematoxylin": np.bincount(lab, hema.ravel()[at], n) / c,
    }


def _tile_job(job: dict[str, Any], deep: Any = None) -> dict[str, Any]:
    """Segment one window, write its tile's core to the temporary array; return its nuclei."""
    import zarr

    from ._classical import nuclear_signal, segment_window, sized

    opts, um = job["opts"], job["um"]
    wy0, wx0 = job["window"]
    ty0, ty1, tx0, tx1 = job["core"]
    y0, x0 = job["origin"]
    a = np.asarray(job["rgb"])
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(np.moveaxis(a, 0, -1))
    sig, hema = nuclear_signal(rgb, um, opts.sigma_um, opts.max_diameter_um)
    dmax = opts.max_diameter_um / um
    if deep is None:
        lab = segment_window(
            sig, job["threshold"], min_diameter_px=opts.min_diameter_um / um, max_diameter_px=dmax
        )
    else:
        lab = sized(deep(rgb, um), opts.min_diameter_um / um, dmax)
    st = _object_stats(lab, hema)
    cx = st["x"] + wx0 - x0  # centroid in the extent's level pixels
    cy = st["y"] + wy0 - y0
    core = lab[y0 + ty0 - wy0 : y0 + ty1 - wy0, x0 + tx0 - wx0 : x0 + tx1 - wx0]
    zarr.open_array(job["store"], mode="r+")[ty0:ty1, tx0:tx1] = core
    present = np.unique(core)
    present = present[present > 0]
    ids = np.arange(1, len(st["count"]))
    mine = ids[(cx[ids] >= tx0) & (cx[ids] < tx1) & (cy[ids] >= ty0) & (cy[ids] < ty1)]
    return {
        "present": present,
        "centroids": np.c_[cx[present], cy[present]],
        "mine": mine,
        "cx": cx[mine],
        "cy": cy[mine],
        "stats": {
            k: st[k][mine] for k in ("count", "eccentricity", "ellipse_fill", "haematoxylin")
        },
    }


def _run_tiles(jobs: list[dict[str, Any]], workers: int, deep: Any) -> Any:
    """Results of :func:`_tile_job` in the order of ``jobs``: here, or in worker processes."""
    if workers <= 1:
        for job in jobs:
            yield _tile_job(job, deep)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        yield from ex.map(_tile_job, jobs)


def iter_segment_nuclei(
    image: Any,
    um_per_px: float,
    *,
    extent: tuple[float, float, float, float] | None = None,
    keep: Callable[[np.ndarray], np.ndarray] | None = None,
    options: NucleiOptions | None = None,
    workdir: str | Path | None = None,
) -> Generator[Progress, None, Nuclei]:
    """Segment the nuclei of an image element, tile by tile, yielding progress.

    Parameters
    ----------
    image
        A ``(c, y, x)`` RGB image element (single scale or multiscale).
    um_per_px
        Scale-0 pixel size.
    extent
        ``(x0, y0, x1, y1)`` in scale-0 pixels to segment; the whole image when ``None``.
    keep
        ``callable((n, 2) centroids (x, y) in scale-0 pixels) -> (n,) bool``: which nuclei
        to keep (for example those on a superpixel grid); all when ``None``.
    options
        Sizes, smoothing, threshold, level and tiles.
    workdir
        Folder for the temporary tiles (a new temporary folder when ``None``).

    Returns
    -------
    The nuclei; call :meth:`Nuclei.close` once the labels are written.

    Examples
    --------
    >>> nuc = run_generator(iter_segment_nuclei(sdata.images["he"], 0.5))  # doctest: +SKIP
    """
    import dask.array as da
    import pandas as pd
    import zarr
    from scipy.spatial import cKDTree

    opts = options or NucleiOptions()
    if not (np.isfinite(um_per_px) and um_per_px > 0):
        raise ValueError(f"Expected a positive µm per pixel, found `{um_per_px}`.")
    f, arr = _pick_level(_levels(image), float(um_per_px), opts.max_um_per_px)
    um = float(um_per_px) * f
    full_h, full_w = (int(s) for s in arr.shape[-2:])
    if extent is None:
        x0, y0, x1, y1 = 0, 0, full_w, full_h
    else:
        x0 = max(0, int(np.floor(extent[0] / f)))
        y0 = max(0, int(np.floor(extent[1] / f)))
        x1 = min(full_w, int(np.ceil(extent[2] / f)))
        y1 = min(full_h, int(np.ceil(extent[3] / f)))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"Expected an extent overlapping the image, found {extent}.")
    h, w = y1 - y0, x1 - x0
    dmax = opts.max_diameter_um / um
    margin = int(np.ceil(2 * dmax + 3 * opts.sigma_um / um)) + 4
    thr = opts.threshold
    deep = None
    if opts.method == "stardist":
        from ._deep import stardist_segmenter

        deep = stardist_segmenter(str(opts.weights))
        thr = float("nan")
    elif thr is None:
        thr = _otsu_threshold(arr, (y0, y1, x0, x1), um, opts)
    tiles = _tile_grid(h, w, opts.tile_px)
    tmp = tempfile.TemporaryDirectory(prefix="histosge-nuclei-") if workdir is None else None
    root = Path(tmp.name if tmp is not None else str(workdir))
    store = zarr.open_array(
        str(root / "tiles.zarr"), mode="w", shape=(h, w), chunks=(opts.tile_px,) * 2, dtype="i4"
    )
    owned: list[pd.DataFrame] = []
    seen: list[tuple[np.ndarray, np.ndarray]] = []  # per tile: local ids, centroids (x, y)
    jobs = []
    for ty0, ty1, tx0, tx1 in tiles:
        wy0, wy1 = max(0, y0 + ty0 - margin), min(full_h, y0 + ty1 + margin)
        wx0, wx1 = max(0, x0 + tx0 - margin), min(full_w, x0 + tx1 + margin)
        jobs.append(
            {
                "rgb": arr[:3, wy0:wy1, wx0:wx1],
                "window": (wy0, wx0),
                "core": (ty0, ty1, tx0, tx1),
                "origin": (y0, x0),
                "um": um,
                "opts": opts,
                "threshold": thr,
                "store": str(root / "tiles.zarr"),
            }
        )
    workers = 1 if deep is not None else max(1, min(int(opts.workers), len(jobs)))
    for i, res in enumerate(_run_tiles(jobs, workers, deep)):
        seen.append((res["present"], res["centroids"]))
        mine, cx, cy = res["mine"], res["cx"], res["cy"]
        sx0, sy0 = (cx + x0 + 0.5) * f, (cy + y0 + 0.5) * f
        ok = np.ones(len(mine), bool)
        if keep is not None and len(mine):
            ok = np.asarray(keep(np.c_[sx0, sy0]), dtype=bool)
        st = res["stats"]
        owned.append(
            pd.DataFrame(
                {
                    "tile": i,
                    "local": mine[ok],
                    "lx": cx[ok],
                    "ly": cy[ok],
                    "x": sx0[ok],
                    "y": sy0[ok],
                    "area_um2": st["count"][ok] * um * um,
                    "eccentricity": st["eccentricity"][ok],
                    "ellipse_fill": st["ellipse_fill"][ok],
                    "haematoxylin": st["haematoxylin"][ok],
                }
            )
        )
        yield Progress("nuclei", i + 1, len(tiles), f"tile {i + 1}/{len(tiles)}")
    table = pd.concat(owned, ignore_index=True)
    luts, unmatched = _tile_luts(table, seen, cKDTree)
    n_cols = -(-w // opts.tile_px)
    labels = da.from_zarr(store).map_blocks(_relabel_block, luts, n_cols, dtype=np.int32)
    table = table.drop(columns=["tile", "local", "lx", "ly"])
    table.index = pd.RangeIndex(1, len(table) + 1, name="nucleus_id")
    meta = {
        **{k: v for k, v in asdict(opts).items() if k != "threshold"},
        "threshold": float(thr),
        "threshold_from": "options" if opts.threshold is not None else "otsu",
        **({"threshold_from": "none (stardist)"} if deep is not None else {}),
        "level_factor": f,
        "um_per_px": um,
        "extent_px": [int(x0 * f), int(y0 * f), int(x1 * f), int(y1 * f)],
        "n_tiles": len(tiles),
        "margin_px": margin,
        "n_nuclei": len(table),
        "n_unmatched_parts": unmatched,
    }
    return Nuclei(labels, f, (int(x0 * f), int(y0 * f)), um, table, meta, tmp)


def _tile_luts(table: Any, seen: list[tuple[np.ndarray, np.ndarray]], tree_cls: Any) -> Any:
    """Per tile, the final id of each local label present in its core (0: left out).

    A label owned by the tile maps by its local id; one owned by a neighbour by its centroid,
    which the neighbour found the same (within half a pixel); anything else is left out.
    """
    tree = tree_cls(table[["lx", "ly"]].to_numpy()) if len(table) else None
    luts = []
    unmatched = 0
    final = np.arange(1, len(table) + 1)
    for present, cent in seen:
        lut = np.zeros(int(present.max()) + 1 if len(present) else 1, np.int32)
        if len(present) and tree is not None:
            d, j = tree.query(cent)
            ok = d <= 0.5
            lut[present[ok]] = final[j[ok]]
            unmatched += int((~ok).sum())
        luts.append(lut)
    return luts, unmatched


def _relabel_block(block: np.ndarray, luts: list[np.ndarray], n_cols: int, block_info=None):  # noqa: ANN001
    loc = block_info[0]["chunk-location"]
    lut = luts[loc[0] * n_cols + loc[1]]
    return lut[np.minimum(block, len(lut) - 1)] * (block < len(lut))


def segment_nuclei(image: Any, um_per_px: float, **kwargs: Any) -> Nuclei:
    """Run :func:`iter_segment_nuclei` to the end.

    Examples
    --------
    >>> nuc = segment_nuclei(sdata.images["he"], 0.5)  # doctest: +SKIP
    """
    return run_generator(iter_segment_nuclei(image, um_per_px, **kwargs))
