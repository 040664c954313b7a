"""Lazy patches from a (multiscale, dask-backed) image: batched region reads and resizing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from napari_histosge.base.validation import assert_at_least, assert_one_of
from napari_histosge.images import choose_level, image_levels, level_xy_scales

if TYPE_CHECKING:
    from xarray import DataArray

    from napari_histosge.images import ImageElement

__all__ = [
    "PAD_VALUE",
    "patch_sizes_px",
    "read_patches",
    "read_patches_multi",
    "read_region",
    "read_regions",
]


#: Patches reaching past the image border are padded with white, the colour of bare glass.
PAD_VALUE = 255


def _to_rgb_uint8(block: np.ndarray) -> np.ndarray:
    """``(c, y, x)`` block to ``(y, x, 3)`` uint8 RGB (grey is repeated, alpha dropped)."""
    if block.shape[0] == 1:
        block = np.repeat(block, 3, axis=0)
    block = block[:3]
    if block.dtype != np.uint8:
        block = np.clip(np.rint(block.astype(np.float32)), 0, 255).astype(np.uint8)
    return np.moveaxis(block, 0, 2)


def read_regions(level: DataArray, boxes: Sequence[tuple[int, int, int, int]]) -> list[np.ndarray]:
    """Read several ``(x0, y0, x1, y1)`` boxes of a ``(c, y, x)`` level, padding outside.

    All boxes are computed in one dask call, so chunks shared by several boxes are read once,
    and chunks under no box are never read.

    Parameters
    ----------
    level
        A ``(c, y, x)`` DataArray (dask- or numpy-backed).
    boxes
        Integer boxes in the level's pixels; they may reach past the border.

    Returns
    -------
    One ``(y1 - y0, x1 - x0, 3)`` uint8 RGB array per box.

    Examples
    --------
    >>> import xarray as xr
    >>> lv = xr.DataArray(np.zeros((3, 4, 4), np.uint8), dims=("c", "y", "x"))
    >>> [r.shape for r in read_regions(lv, [(-1, -1, 2, 2), (0, 0, 4, 4)])]
    [(3, 3, 3), (4, 4, 3)]
    """
    h, w = level.sizes["y"], level.sizes["x"]
    data = level.data
    n_c = level.sizes["c"]
    outs: list[np.ndarray] = []
    lazy: list[Any] = []
    where: list[tuple[int, int, int, int, int]] = []
    for x0, y0, x1, y1 in boxes:
        out = np.full((max(0, y1 - y0), max(0, x1 - x0), 3), PAD_VALUE, dtype=np.uint8)
        outs.append(out)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if cx1 > cx0 and cy1 > cy0:
            lazy.append(data[: min(n_c, 3), cy0:cy1, cx0:cx1])
            where.append((len(outs) - 1, cy0 - y0, cy1 - y0, cx0 - x0, cx1 - x0))
    if lazy:
        if hasattr(lazy[0], "dask"):
            import dask

            blocks = dask.compute(*lazy, scheduler="threads")
        else:
            blocks = [np.asarray(b) for b in lazy]
        for (i, a, b, c, d), block in zip(where, blocks, strict=True):
            outs[i][a:b, c:d] = _to_rgb_uint8(np.asarray(block))
    return outs


def read_region(level: DataArray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Read ``[y0:y1, x0:x1]`` of a ``(c, y, x)`` level as ``(y, x, 3)`` uint8, padding outside.

    Only the chunks under the region are computed.

    Examples
    --------
    >>> import xarray as xr
    >>> lv = xr.DataArray(np.zeros((3, 4, 4), np.uint8), dims=("c", "y", "x"))
    >>> read_region(lv, -1, -1, 2, 2).shape
    (3, 3, 3)
    """
    return read_regions(level, [(x0, y0, x1, y1)])[0]


def _resize(region: np.ndarray, box: tuple[float, float, float, float], out_px: int) -> np.ndarray:
    """Resize the sub-pixel ``box`` of ``region`` to ``out_px`` (Lanczos down, bicubic up).

    Lanczos antialiases when shrinking; when enlarging, bicubic rings less at sharp edges.
    """
    from PIL import Image

    x0, y0, x1, y1 = box
    if x0 == int(x0) and y0 == int(y0) and x1 - x0 == out_px and y1 - y0 == out_px:
        return region[int(y0) : int(y1), int(x0) : int(x1)]
    img = Image.fromarray(region)
    shrink = (x1 - x0) > out_px
    method = Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC
    return np.asarray(img.resize((out_px, out_px), method, box=box))


def read_patches(
    image: ImageElement,
    centers_px: np.ndarray,
    size_px: float,
    *,
    out_px: int = 224,
) -> np.ndarray:
    """Square RGB patches centred on ``centers_px``, resized to ``out_px``.

    Each patch covers exactly ``size_px`` scale-0 pixels (sub-pixel accurate) and is read from
    the coarsest pyramid level that still has at least ``out_px`` pixels across it, so a large
    context never reads the full resolution. Boxes are read in one dask call (shared chunks
    once) and resized with an antialiasing Lanczos filter (bicubic when enlarging). Patches
    that reach past the border are padded with white (:data:`PAD_VALUE`), never dropped.

    Parameters
    ----------
    image
        ``(c, y, x)`` DataArray or multiscale DataTree (uint8 RGB).
    centers_px
        ``(n, 2)`` centres ``(x, y)`` in scale-0 pixels.
    size_px
        Patch side in scale-0 pixels.
    out_px
        Output side in pixels.

    Returns
    -------
    ``(n, out_px, out_px, 3)`` uint8 RGB.

    Examples
    --------
    >>> import xarray as xr
    >>> img = xr.DataArray(np.zeros((3, 64, 64), np.uint8), dims=("c", "y", "x"))
    >>> read_patches(img, np.array([[0.0, 0.0]]), 32, out_px=16).shape
    (1, 16, 16, 3)
    """
    if not np.isfinite(size_px) or size_px <= 0:
        raise ValueError(f"Expected a positive patch size in pixels, found `{size_px}`.")
    assert_at_least("out_px", int(out_px), 1)
    out_px = int(out_px)
    centers = np.asarray(centers_px, dtype=float).reshape(-1, 2)
    if not np.isfinite(centers).all():
        raise ValueError("Expected finite patch centres, found NaN or inf.")
    idx = choose_level(image, size_px / out_px)
    level = image_levels(image)[idx]
    sx, sy = level_xy_scales(image)[idx]
    out = np.empty((len(centers), out_px, out_px, 3), dtype=np.uint8)
    if len(centers) == 0:
        return out
    boxes: list[tuple[int, int, int, int]] = []
    subs: list[tuple[float, float, float, float]] = []
    for cx, cy in centers:
        # Box in level pixels (pixel i covers [i, i + 1)); scale-0 centre cx maps to cx / s.
        fx0, fx1 = (cx - size_px / 2.0) / sx, (cx + size_px / 2.0) / sx
        fy0, fy1 = (cy - size_px / 2.0) / sy, (cy + size_px / 2.0) / sy
        ix0, iy0 = int(np.floor(fx0)) - 2, int(np.floor(fy0)) - 2
        ix1, iy1 = int(np.ceil(fx1)) + 2, int(np.ceil(fy1)) + 2
        boxes.append((ix0, iy0, ix1, iy1))
        subs.append((fx0 - ix0, fy0 - iy0, fx1 - ix0, fy1 - iy0))
    for i, (region, box) in enumerate(zip(read_regions(level, boxes), subs, strict=True)):
        out[i] = _resize(region, box, out_px)
    return out


def read_patches_multi(
    image: ImageElement,
    centers_px: np.ndarray,
    sizes_px: Sequence[float],
    *,
    out_px: int = 224,
) -> list[np.ndarray]:
    """Patches of several sizes around the same centres, one array per size.

    Examples
    --------
    >>> import xarray as xr
    >>> img = xr.DataArray(np.zeros((3, 64, 64), np.uint8), dims=("c", "y", "x"))
    >>> [p.shape for p in read_patches_multi(img, np.array([[8.0, 8.0]]), [8, 32], out_px=16)]
    [(1, 16, 16, 3), (1, 16, 16, 3)]
    """
    return [read_patches(image, centers_px, s, out_px=out_px) for s in sizes_px]


def patch_sizes_px(
    sizes: Sequence[float],
    unit: Literal["spot", "um", "px"] | str,
    *,
    diameter_px: float,
    um_per_px: float,
) -> list[float]:
    """Convert patch sizes in ``"spot"`` diameters, ``"um"`` or ``"px"`` to scale-0 pixels.

    Examples
    --------
    >>> patch_sizes_px([1, 2], "spot", diameter_px=100.0, um_per_px=0.5)
    [100.0, 200.0]
    """
    if unit == "spot":
        out = [float(s) * diameter_px for s in sizes]
    elif unit == "um":
        out = [float(s) / um_per_px for s in sizes]
    elif unit == "px":
        out = [float(s) for s in sizes]
    else:
        assert_one_of("patch_unit", unit, ["spot", "um", "px"])
    if not out or any(not np.isfinite(s) or s <= 0 for s in out):
        raise ValueError(f"Expected positive patch sizes, found `{list(sizes)}` ({unit}).")
    return out
