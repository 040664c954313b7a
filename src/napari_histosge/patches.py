"""Cut square patches lazily from a (multiscale, dask-backed) RGB image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PAD_VALUE", "choose_level", "level_scales", "read_patches", "read_region"]

#: Patches reaching past the image border are padded with white, the colour of bare glass.
PAD_VALUE = 255


def _levels(image: Any) -> list[Any]:
    from .io import image_levels

    return image_levels(image)


def level_scales(image: Any) -> list[float]:
    """Downsampling factor of each pyramid level relative to scale 0.

    Examples
    --------
    >>> import xarray as xr
    >>> level_scales(xr.DataArray(np.zeros((3, 8, 8)), dims=("c", "y", "x")))
    [1.0]
    """
    levels = _levels(image)
    w0 = levels[0].sizes["x"]
    return [w0 / lv.sizes["x"] for lv in levels]


def choose_level(image: Any, downsample: float) -> int:
    """The coarsest level whose downsampling does not exceed ``downsample``."""
    scales = level_scales(image)
    ok = [i for i, s in enumerate(scales) if s <= downsample * 1.001]
    return max(ok) if ok else 0


def read_region(level: Any, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Read ``[y0:y1, x0:x1]`` of a ``(c, y, x)`` level as ``(y, x, 3)`` uint8, padding outside.

    Only the chunks under the region are computed.

    Examples
    --------
    >>> import xarray as xr
    >>> lv = xr.DataArray(np.zeros((3, 4, 4), np.uint8), dims=("c", "y", "x"))
    >>> read_region(lv, -1, -1, 2, 2).shape
    (3, 3, 3)
    """
    h, w = level.sizes["y"], level.sizes["x"]
    out = np.full((y1 - y0, x1 - x0, 3), PAD_VALUE, dtype=np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 > cx0 and cy1 > cy0:
        data = level.data[:3, cy0:cy1, cx0:cx1]
        block = np.asarray(data.compute() if hasattr(data, "compute") else data)
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = np.moveaxis(block, 0, 2)
    return out


def read_patches(
    image: Any,
    centers_px: np.ndarray,
    size_px: float,
    *,
    out_px: int = 224,
) -> np.ndarray:
    """Square RGB patches centred on ``centers_px``, resized to ``out_px``.

    Each patch is read from the coarsest pyramid level that still has at least ``out_px``
    pixels across it, so a large context never reads the full resolution. Patches that reach
    past the border are padded with white (``PAD_VALUE``), never dropped.

    Parameters
    ----------
    image
        ``(c, y, x)`` DataArray or multiscale DataTree.
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
    from PIL import Image

    if size_px <= 0:
        raise ValueError(f"Expected a positive patch size in pixels, found `{size_px}`.")
    centers = np.atleast_2d(np.asarray(centers_px, dtype=float))
    idx = choose_level(image, size_px / out_px)
    level = _levels(image)[idx]
    ds = level_scales(image)[idx]
    side = max(1, int(round(size_px / ds)))
    out = np.empty((len(centers), out_px, out_px, 3), dtype=np.uint8)
    for i, (cx, cy) in enumerate(centers):
        x0 = int(np.floor(cx / ds - side / 2.0))
        y0 = int(np.floor(cy / ds - side / 2.0))
        region = read_region(level, x0, y0, x0 + side, y0 + side)
        if side != out_px:
            region = np.asarray(
                Image.fromarray(region).resize((out_px, out_px), Image.Resampling.LANCZOS)
            )
        out[i] = region
    return out


def patch_sizes_px(
    sizes: Sequence[float], unit: str, *, diameter_px: float, um_per_px: float
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
        raise ValueError(f"Expected `patch_unit` to be one of ['spot', 'um', 'px'], found `{unit}`.")
    if not out or any(not np.isfinite(s) or s <= 0 for s in out):
        raise ValueError(f"Expected positive patch sizes, found `{list(sizes)}` ({unit}).")
    return out
