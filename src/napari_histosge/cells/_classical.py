"""Classical nucleus segmentation of one RGB window (scikit-image, no weights).

Colour deconvolution to haematoxylin (Ruifrok and Johnston's H&E-DAB matrix, as
``skimage.color.rgb2hed``), Gaussian smoothing, a threshold, and a watershed of the distance
transform seeded at its local maxima, at the window's µm per pixel.
"""

from __future__ import annotations

import numpy as np

__all__ = ["haematoxylin", "nuclear_signal", "segment_window", "sized", "smoothed_haematoxylin"]


def _od_lut() -> np.ndarray:
    """Optical density of each uint8 value, as ``rgb2hed`` computes it (``log(v) / log(1e-6)``)."""
    v = np.maximum(np.arange(256, dtype=np.float64) / 255.0, 1e-6)
    return (np.log(v) / np.log(1e-6)).astype(np.float32)


_OD = _od_lut()


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin channel of an ``(h, w, 3)`` uint8 RGB image (``rgb2hed(rgb)[..., 0]``).

    Computed through a lookup table in float32, so a whole tile costs a few passes.

    Examples
    --------
    >>> from skimage.color import rgb2hed
    >>> rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    >>> bool(np.allclose(haematoxylin(rgb), rgb2hed(rgb)[..., 0], atol=1e-5))
    True
    """
    from skimage.color.colorconv import hed_from_rgb

    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"Expected an (h, w, 3) uint8 RGB image, found {a.shape} {a.dtype}.")
    m = hed_from_rgb[:, 0].astype(np.float32)
    out = _OD[a[..., 0]] * m[0]
    out += _OD[a[..., 1]] * m[1]
    out += _OD[a[..., 2]] * m[2]
    np.maximum(out, 0.0, out=out)
    return out


def smoothed_haematoxylin(rgb: np.ndarray, sigma_px: float) -> np.ndarray:
    """Haematoxylin smoothed by a Gaussian of ``sigma_px`` pixels."""
    from scipy.ndimage import gaussian_filter

    h = haematoxylin(rgb)
    return gaussian_filter(h, sigma_px, output=np.float32, truncate=3.0) if sigma_px > 0 else h


def nuclear_signal(
    rgb: np.ndarray, um_per_px: float, sigma_um: float, max_diameter_um: float
) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed haematoxylin above its local background, and the smoothed haematoxylin.

    The background is a grey opening wider than a nucleus: it removes every dark object
    narrower than ``max_diameter_um`` and keeps the slow changes of stain between regions, so
    one threshold fits pale stroma and dense tumour alike.
    """
    from scipy import ndimage as ndi

    h = smoothed_haematoxylin(rgb, sigma_um / um_per_px)
    # The opening on a 2x coarser copy (the background is smooth): a quarter of the work.
    size = 2 * int(round(max_diameter_um / 4.0 / um_per_px)) + 1
    small = h[: h.shape[0] // 2 * 2, : h.shape[1] // 2 * 2]
    small = small.reshape(small.shape[0] // 2, 2, small.shape[1] // 2, 2).max(axis=(1, 3))
    bg = ndi.maximum_filter(ndi.minimum_filter(small, size=size), size=size)
    bg = np.repeat(np.repeat(bg, 2, axis=0), 2, axis=1)
    bg = np.pad(bg, ((0, h.shape[0] - bg.shape[0]), (0, h.shape[1] - bg.shape[1])), mode="edge")
    return h - bg, h


def segment_window(
    signal: np.ndarray,
    threshold: float,
    *,
    min_diameter_px: float,
    max_diameter_px: float,
) -> np.ndarray:
    """Label the nuclei of one window from its nuclear ``signal`` (see :func:`nuclear_signal`).

    Pixels above ``threshold`` are nuclear (after an opening by a disk of a quarter of the
    smallest diameter, with holes smaller than the largest nucleus filled). Touching nuclei are
    split by a watershed of the signal smoothed at half the smallest radius, from its maxima
    at least 0.8 of that radius apart: nuclei are darkest at their centres, which parts dense
    clusters where a distance transform sees one blob. Objects whose area lies outside half
    the disk of ``min_diameter_px`` to the disk of ``max_diameter_px`` are dropped.

    Returns
    -------
    ``(h, w)`` int32 labels, 0 = background, consecutive from 1.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    r_min = max(1.0, min_diameter_px / 2.0)
    min_area = np.pi * r_min**2
    max_area = np.pi * (max_diameter_px / 2.0) ** 2
    empty = np.zeros(signal.shape, np.int32)
    mask = signal > threshold
    if not mask.any():
        return empty
    mask = ndi.binary_opening(mask, structure=_disk(max(1, int(r_min / 2))))
    back, _ = ndi.label(~mask)
    hole = np.bincount(back.ravel()) < max_area
    hole[0] = False
    hole[np.unique(np.r_[back[0], back[-1], back[:, 0], back[:, -1]])] = False
    mask |= hole[back]
    comp, n = ndi.label(mask)
    if n == 0:
        return empty
    small = np.bincount(comp.ravel()) < 0.5 * min_area
    small[0] = True
    mask = ~small[comp]
    elev = ndi.gaussian_filter(signal, 0.5 * r_min, truncate=2.0)
    size = 2 * int(round(0.8 * r_min)) + 1
    peaks = (elev == ndi.maximum_filter(elev, size=size)) & mask
    markers, _ = ndi.label(peaks, structure=np.ones((3, 3), bool))
    labels = watershed(-elev, markers, mask=mask)
    return sized(labels, min_diameter_px, max_diameter_px)


def sized(labels: np.ndarray, min_diameter_px: float, max_diameter_px: float) -> np.ndarray:
    """Keep the labels of area between half the disk of the smallest and the largest diameter.

    Returns
    -------
    ``(h, w)`` int32 labels, consecutive from 1.
    """
    r_min = max(1.0, min_diameter_px / 2.0)
    areas = np.bincount(np.asarray(labels).ravel())
    bad = (areas < 0.5 * np.pi * r_min**2) | (areas > np.pi * (max_diameter_px / 2.0) ** 2)
    bad[0] = True
    keep = np.flatnonzero(~bad)
    lut = np.zeros(len(areas), np.int32)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lut[labels]


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= r * r
