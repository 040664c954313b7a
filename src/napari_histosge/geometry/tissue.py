"""Tissue mask of an H&E image (Otsu on a low-resolution level)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_histosge.images import image_levels

if TYPE_CHECKING:
    from napari_histosge.images import ImageElement

__all__ = ["tissue_mask"]


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
    image: ImageElement, *, level: int | None = None, max_side: int = 2048
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
