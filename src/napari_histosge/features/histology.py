"""The built-in weight-free histology encoder: colour, H&E stain and texture statistics."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_histosge.base.validation import assert_positive
from napari_histosge.images import image_levels, level_scales

from ._boxes import box_means, summed_area
from .base import patches_extent
from .patches import read_regions

if TYPE_CHECKING:
    from napari_histosge.images import ImageElement

__all__ = ["DenseMaps", "HistologyEncoder"]


@dataclass
class DenseMaps:
    """Pooling-cell maps of a region of an image (see :meth:`HistologyEncoder.dense_maps`).

    Parameters
    ----------
    cells
        ``(C, h, w)`` float32 means of the per-pixel channels over each pooling cell.
    cell_px
        Side of a pooling cell in scale-0 pixels.
    origin_px
        ``(x, y)`` scale-0 position of the top-left corner of cell ``(0, 0)``.
    image
        The image the maps were computed from (kept so that cached maps are never confused
        with those of another image).
    um_per_px
        Scale-0 resolution used.
    """

    cells: np.ndarray
    cell_px: float
    origin_px: tuple[float, float]
    image: ImageElement
    um_per_px: float
    _sat: np.ndarray | None = None

    @property
    def sat(self) -> np.ndarray:
        """Summed-area tables of :attr:`cells`, computed once on first use."""
        if self._sat is None:
            self._sat = summed_area(self.cells)
        return self._sat

    def covers(self, extent: tuple[float, float, float, float]) -> bool:
        """Whether the maps cover the scale-0 box ``(x0, y0, x1, y1)``."""
        _, h, w = self.cells.shape
        x0, y0 = self.origin_px
        x1, y1 = x0 + w * self.cell_px, y0 + h * self.cell_px
        return (
            extent[0] >= x0 - 1e-6
            and extent[1] >= y0 - 1e-6
            and extent[2] <= x1 + 1e-6
            and extent[3] <= y1 + 1e-6
        )


def _hed_lut() -> tuple[np.ndarray, np.ndarray]:
    """Lookup table of ``log(rgb) / log(1e-6)`` for uint8 values and skimage's HED matrix."""
    from skimage.color.colorconv import hed_from_rgb

    v = np.maximum(np.arange(256, dtype=np.float64) / 255.0, 1e-6)
    lut = (np.log(v) / np.log(1e-6)).astype(np.float32)
    return lut, np.asarray(hed_from_rgb, dtype=np.float32)


class HistologyEncoder:
    """Weight-free features: colour, H&E stain and texture statistics at several scales.

    Per-pixel maps are computed once over the tissue at a working resolution of about
    2.5 µm per pixel (read chunk-wise from the best pyramid level; the full-resolution image is
    never loaded whole), averaged into pooling cells of about 5 µm, and any position and patch
    size is then pooled exactly from summed-area tables: overlapping patches (4x positions,
    dense grids) and extra patch sizes cost almost nothing more.

    Channels (:attr:`channels`): RGB; haematoxylin, eosin and DAB optical densities after colour
    deconvolution (as ``skimage.color.rgb2hed``); grey level; a tissue indicator; gradient
    magnitude; nuclei-sized haematoxylin blobs (rectified difference of Gaussians) and
    cell-cluster-sized ones; orientation coherence of the structure tensor (fibrous stroma is
    coherent, cellular regions are not); and a six-bin local binary pattern histogram of the
    grey level (4 neighbours; classes: 0, 1, 2 adjacent, 2 opposite, 3, 4 brighter neighbours).
    Each patch gives the means of all channels and the standard deviations of
    :attr:`std_channels`, i.e. :attr:`dim_per_scale` values per patch size.

    Examples
    --------
    >>> enc = HistologyEncoder()
    >>> enc.embed(np.full((2, 32, 32, 3), 200, np.uint8)).shape
    (2, 22)
    """

    name = "histology"
    version = "v2"
    input_size = 224
    weights_sha256: str | None = None
    channels = (
        "r", "g", "b", "h", "e", "d", "grey", "tissue", "grad", "blob_fine", "blob_coarse",
        "coherence", "lbp0", "lbp1", "lbp2a", "lbp2o", "lbp3", "lbp4",
    )  # fmt: skip
    std_channels = ("h", "e", "grey", "grad")
    dim_per_scale = len(channels) + len(std_channels)
    #: Target working resolution (µm per pixel) of the per-pixel maps.
    work_um_per_px = 2.5
    #: Target side of a pooling cell (µm).
    cell_um = 4.0
    #: Side of a tile (working pixels) read and processed at once.
    tile_px = 1024
    # Per-pixel channels stored in the cell maps (before the cell-level ones are derived).
    _pixel = (
        "r", "g", "b", "h", "e", "d", "grey", "tissue", "blob_fine", "lbp0", "lbp1", "lbp2a",
        "lbp2o", "lbp3", "lbp4", "h2", "e2", "grey2", "gx2", "gy2", "gxgy", "grad",
    )  # fmt: skip

    def __init__(self) -> None:
        self._cache: DenseMaps | None = None
        self._lut, self._hed = _hed_lut()

    @property
    def id(self) -> str:
        """Encoder id used in cache keys and checkpoints."""
        return f"histology@{self.version}"

    @property
    def dim(self) -> int:
        """Feature width of one patch size."""
        return self.dim_per_scale

    # -- per-pixel and per-cell maps -----------------------------------------------------------

    def pixel_maps(self, rgb: np.ndarray, px_um: float) -> np.ndarray:
        """Per-pixel channels ``(len(_pixel), y, x)`` float32 of an RGB uint8 tile.

        Parameters
        ----------
        rgb
            ``(y, x, 3)`` uint8 tile at ``px_um`` µm per pixel.
        px_um
            Resolution of the tile.

        Returns
        -------
        The channels named in ``_pixel``.

        Examples
        --------
        >>> HistologyEncoder().pixel_maps(np.zeros((8, 8, 3), np.uint8), 2.5).shape
        (22, 8, 8)
        """
        from scipy import ndimage

        rgb = np.ascontiguousarray(rgb)
        x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
        od = self._lut[rgb]  # (y, x, 3) -log(rgb) / -log(1e-6)
        m = self._hed
        hed = [
            np.maximum(od[..., 0] * m[0, k] + od[..., 1] * m[1, k] + od[..., 2] * m[2, k], 0.0)
            for k in range(3)
        ]
        grey = x.mean(axis=2)
        sat = x.max(axis=2) - x.min(axis=2)
        tissue = ((sat > 0.07) | (grey < 0.75)).astype(np.float32)
        gx = ndimage.sobel(grey, axis=1) * np.float32(0.125)
        gy = ndimage.sobel(grey, axis=0) * np.float32(0.125)
        h = hed[0]
        s1 = max(0.5, 2.5 / px_um)  # about a nucleus radius / sqrt(2)
        blob = np.maximum(
            ndimage.gaussian_filter(h, s1, truncate=3.0)
            - ndimage.gaussian_filter(h, 2 * s1, truncate=3.0),
            0.0,
        )
        lbp = self._lbp_classes(grey)
        maps = [
            x[..., 0], x[..., 1], x[..., 2], hed[0], hed[1], hed[2], grey, tissue, blob, *lbp,
            hed[0] ** 2, hed[1] ** 2, grey**2, gx**2, gy**2, gx * gy, np.hypot(gx, gy),
        ]  # fmt: skip
        return np.stack(maps).astype(np.float32, copy=False)

    @staticmethod
    def _lbp_classes(grey: np.ndarray, threshold: float = 0.02) -> list[np.ndarray]:
        """Return indicators of six rotation-invariant 4-neighbour binary-pattern classes."""
        p = np.pad(grey, 1, mode="edge")
        c = p[1:-1, 1:-1]
        bits = [
            (p[:-2, 1:-1] - c) > threshold,  # up
            (p[1:-1, 2:] - c) > threshold,  # right
            (p[2:, 1:-1] - c) > threshold,  # down
            (p[1:-1, :-2] - c) > threshold,  # left
        ]
        count = sum(b.astype(np.uint8) for b in bits)
        opposite = (bits[0] & bits[2]) | (bits[1] & bits[3])
        two = count == 2
        return [
            (count == 0).astype(np.float32),
            (count == 1).astype(np.float32),
            (two & ~opposite).astype(np.float32),
            (two & opposite).astype(np.float32),
            (count == 3).astype(np.float32),
            (count == 4).astype(np.float32),
        ]

    def _derive(self, cells: np.ndarray, cell_um: float) -> np.ndarray:
        """Add the cell-level channels (coarse blobs, coherence) and order as :attr:`channels`."""
        from scipy import ndimage

        idx = {k: i for i, k in enumerate(self._pixel)}
        h = cells[idx["h"]]
        sa = max(0.5, 8.0 / cell_um)
        blob_coarse = np.maximum(
            ndimage.gaussian_filter(h, sa, mode="nearest")
            - ndimage.gaussian_filter(h, 2 * sa, mode="nearest"),
            0.0,
        )
        st = max(0.5, 4.0 / cell_um)
        jxx = ndimage.gaussian_filter(cells[idx["gx2"]], st, mode="nearest")
        jyy = ndimage.gaussian_filter(cells[idx["gy2"]], st, mode="nearest")
        jxy = ndimage.gaussian_filter(cells[idx["gxgy"]], st, mode="nearest")
        coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-4)
        named = {k: cells[i] for i, k in enumerate(self._pixel)}
        named["blob_coarse"] = blob_coarse.astype(np.float32)
        named["coherence"] = coherence.astype(np.float32)
        named["grad2"] = named["gx2"] + named["gy2"]
        order = [*self.channels, *(f"{k}2" for k in self.std_channels)]
        return np.stack([named[k] for k in order]).astype(np.float32, copy=False)

    def _stats(self, means: np.ndarray) -> np.ndarray:
        """Turn pooled means ``(n, C + S)`` into features: means and standard deviations."""
        n_c = len(self.channels)
        idx = [self.channels.index(k) for k in self.std_channels]
        var = np.maximum(means[:, n_c:] - means[:, idx] ** 2, 0.0)
        return np.concatenate([means[:, :n_c], np.sqrt(var)], axis=1).astype(np.float32)

    def _cells_from_rgb(self, rgb: np.ndarray, px_um: float, b: int) -> np.ndarray:
        maps = self.pixel_maps(rgb, px_um)
        c, hh, ww = maps.shape
        hb, wb = hh // b, ww // b
        maps = maps[:, : hb * b, : wb * b].reshape(c, hb, b, wb, b).mean(axis=(2, 4))
        return maps.astype(np.float32, copy=False)

    # -- whole patches -------------------------------------------------------------------------

    def embed(self, patches: np.ndarray, *, px_um: float | None = None) -> np.ndarray:
        """Features of whole patches ``(n, h, w, 3)`` uint8, one patch size per call.

        Parameters
        ----------
        patches
            RGB uint8 patches.
        px_um
            µm per patch pixel; :attr:`work_um_per_px` when ``None``.

        Returns
        -------
        ``(n, dim_per_scale)`` float32.
        """
        px = float(px_um or self.work_um_per_px)
        b = max(1, int(np.ceil(self.cell_um / px - 1e-6)))
        out = []
        for p in np.asarray(patches, dtype=np.uint8):
            b_eff = min(b, p.shape[0], p.shape[1])
            cells = self._derive(self._cells_from_rgb(p, px, b_eff), px * b_eff)
            out.append(cells.reshape(cells.shape[0], -1).mean(axis=1))
        return self._stats(np.stack(out).astype(np.float64)) if out else np.zeros((0, self.dim))

    # -- dense maps ----------------------------------------------------------------------------

    def _plan(self, image: ImageElement, um_per_px: float) -> tuple[int, int, int, float, float]:
        """Pyramid level, block factor ``f``, cell factor ``b``, level scale and working µm/px."""
        scales = level_scales(image)
        limit = 1.25 * self.work_um_per_px
        ok = [i for i, s in enumerate(scales) if s * um_per_px <= limit * 1.001]
        idx = max(ok) if ok else 0
        lv_um = scales[idx] * um_per_px
        f = max(1, int(np.floor(limit / lv_um + 1e-6)))
        work_um = lv_um * f
        b = max(1, int(np.ceil(self.cell_um / work_um - 1e-6)))
        return idx, f, b, scales[idx], work_um

    def iter_dense_maps(
        self,
        image: ImageElement,
        um_per_px: float,
        extent: tuple[float, float, float, float],
    ) -> Generator[tuple[int, int], None, DenseMaps]:
        """Compute (or reuse) the cell maps over ``extent``, yielding ``(tile, n_tiles)``.

        Parameters
        ----------
        image
            ``(c, y, x)`` DataArray or multiscale DataTree.
        um_per_px
            Scale-0 resolution.
        extent
            ``(x0, y0, x1, y1)`` box in scale-0 pixels (it may reach past the image; the outside
            counts as white glass, as in :func:`napari_histosge.features.patches.read_patches`).

        Returns
        -------
        The maps; cached on the encoder, so a later call whose extent lies inside reuses them.
        """
        assert_positive("um_per_px", um_per_px)
        cached = self._cache
        if (
            cached is not None
            and cached.image is image
            and abs(cached.um_per_px - um_per_px) < 1e-9
            and cached.covers(extent)
        ):
            return cached
        idx, f, b, ds, work_um = self._plan(image, um_per_px)
        level = image_levels(image)[idx]
        step = f * b  # level pixels per cell
        cell_px = ds * step
        cx0 = int(np.floor(extent[0] / cell_px))
        cy0 = int(np.floor(extent[1] / cell_px))
        cx1 = int(np.ceil(extent[2] / cell_px))
        cy1 = int(np.ceil(extent[3] / cell_px))
        wc, hc = max(1, cx1 - cx0), max(1, cy1 - cy0)
        n_ch = len(self._pixel)
        cells = np.empty((n_ch, hc, wc), dtype=np.float32)
        tile_c = max(1, self.tile_px // b)  # cells per tile side
        pad_c = int(np.ceil(8.0 / b))  # cells of context for the pixel filters
        tiles = [(ty, tx) for ty in range(0, hc, tile_c) for tx in range(0, wc, tile_c)]
        for i, (ty, tx) in enumerate(tiles):
            ty1, tx1 = min(hc, ty + tile_c), min(wc, tx + tile_c)
            x0 = (cx0 + tx - pad_c) * step
            y0 = (cy0 + ty - pad_c) * step
            x1 = (cx0 + tx1 + pad_c) * step
            y1 = (cy0 + ty1 + pad_c) * step
            region = read_regions(level, [(x0, y0, x1, y1)])[0]
            if f > 1:
                hh, ww = region.shape[0] // f, region.shape[1] // f
                region = (
                    region[: hh * f, : ww * f]
                    .reshape(hh, f, ww, f, 3)
                    .mean(axis=(1, 3))
                    .round()
                    .astype(np.uint8)
                )
            tile_cells = self._cells_from_rgb(region, work_um, b)
            cells[:, ty:ty1, tx:tx1] = tile_cells[
                :, pad_c : pad_c + ty1 - ty, pad_c : pad_c + tx1 - tx
            ]
            yield i + 1, len(tiles)
        derived = self._derive(cells, work_um * b)
        maps = DenseMaps(
            cells=derived,
            cell_px=float(cell_px),
            origin_px=(float(cx0 * cell_px), float(cy0 * cell_px)),
            image=image,
            um_per_px=float(um_per_px),
        )
        self._cache = maps
        return maps

    def pool(
        self, maps: DenseMaps, centers_px: np.ndarray, sizes_px: Sequence[float]
    ) -> np.ndarray:
        """Features of square patches of each size around ``centers_px`` from dense maps.

        Returns
        -------
        ``(n, len(sizes_px) * dim_per_scale)`` float32, sizes in the given order.
        """
        centers = np.asarray(centers_px, dtype=float).reshape(-1, 2)
        cx = (centers[:, 0] - maps.origin_px[0]) / maps.cell_px
        cy = (centers[:, 1] - maps.origin_px[1]) / maps.cell_px
        feats = []
        for size in sizes_px:
            half = float(size) / (2.0 * maps.cell_px)
            means = box_means(maps.sat, cx - half, cy - half, cx + half, cy + half)
            feats.append(self._stats(means))
        return np.concatenate(feats, axis=1) if feats else np.zeros((len(centers), 0), np.float32)

    def dense_features(
        self,
        image: ImageElement,
        centers_px: np.ndarray,
        sizes_px: Sequence[float],
        um_per_px: float,
        *,
        extent: tuple[float, float, float, float] | None = None,
    ) -> np.ndarray:
        """Features at ``centers_px`` for each patch size, pooled from (cached) dense maps.

        Parameters
        ----------
        image
            ``(c, y, x)`` DataArray or multiscale DataTree.
        centers_px
            ``(n, 2)`` positions in scale-0 pixels.
        sizes_px
            Patch sides in scale-0 pixels.
        um_per_px
            Scale-0 resolution.
        extent
            ``(x0, y0, x1, y1)`` box in scale-0 pixels over which maps are computed; the
            bounding box of the patches when ``None``.

        Returns
        -------
        ``(n, len(sizes_px) * dim_per_scale)`` float32.

        Examples
        --------
        >>> import xarray as xr
        >>> img = xr.DataArray(np.full((3, 64, 64), 200, np.uint8), dims=("c", "y", "x"))
        >>> HistologyEncoder().dense_features(img, np.array([[32.0, 32.0]]), [16, 32], 1.0).shape
        (1, 44)
        """
        centers = np.asarray(centers_px, dtype=float).reshape(-1, 2)
        if extent is None:
            extent = patches_extent(centers, sizes_px)
        gen = self.iter_dense_maps(image, um_per_px, extent)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                maps = stop.value
                break
        return self.pool(maps, centers, sizes_px)
