"""Patch encoders: the built-in histology statistics, UNI, UNI2-h and any timm model.

:func:`get_encoder` is the registry. Every encoder has ``.name``, ``.id`` (name and weights
checksum, e.g. ``"uni@3f2a9c01b2de"``, ``"histology@v2"``, ``"timm:vit_small_patch16_224@random"``),
``.weights_sha256``, ``.dim``, ``.input_size`` and ``.embed(uint8 NHWC) -> float32 (n, d)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ENCODERS",
    "DenseMaps",
    "HistologyEncoder",
    "TimmEncoder",
    "file_sha256",
    "get_encoder",
    "load_state_dict",
    "patches_extent",
    "resolve_device",
]

#: Names accepted by :func:`get_encoder`.
ENCODERS = ("histology", "uni", "uni2-h", "timm:<name>")

#: ``weights`` values that are not files.
RANDOM_WEIGHTS = "random"
HUB_WEIGHTS = "hub"

#: timm settings of UNI (Chen et al., Nature Medicine 2024; MahmoodLab/UNI model card).
_UNI_KWARGS: dict[str, Any] = {
    "model_name": "vit_large_patch16_224",
    "img_size": 224,
    "patch_size": 16,
    "init_values": 1e-5,
    "num_classes": 0,
    "dynamic_img_size": True,
}

_HUB_IDS = {"uni": "hf-hub:MahmoodLab/uni", "uni2-h": "hf-hub:MahmoodLab/UNI2-h"}


def _uni2h_kwargs() -> dict[str, Any]:
    """Return the timm settings of UNI2-h (MahmoodLab/UNI2-h model card)."""
    import timm
    import torch

    return {
        "model_name": "vit_giant_patch14_224",
        "img_size": 224,
        "patch_size": 14,
        "depth": 24,
        "num_heads": 24,
        "init_values": 1e-5,
        "embed_dim": 1536,
        "mlp_ratio": 2.66667 * 2,
        "num_classes": 0,
        "no_embed_class": True,
        "mlp_layer": timm.layers.SwiGLUPacked,
        "act_layer": torch.nn.SiLU,
        "reg_tokens": 8,
        "dynamic_img_size": True,
    }


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in chunks.

    Examples
    --------
    >>> len(file_sha256(__file__))
    64
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_device(device: str | None = None) -> str:
    """``device`` if given, else ``"cuda"``, ``"mps"`` or ``"cpu"``, whichever is available.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    """
    if device:
        return str(device)
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


# ---------------------------------------------------------------------------------------------
# Built-in histology encoder


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
    image: Any
    um_per_px: float
    _sat: np.ndarray | None = None

    @property
    def sat(self) -> np.ndarray:
        """Summed-area tables of :attr:`cells`, computed once on first use."""
        if self._sat is None:
            self._sat = _summed_area(self.cells)
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


def _summed_area(cells: np.ndarray) -> np.ndarray:
    """Summed-area tables ``(C, h + 1, w + 1)`` float64 of ``(C, h, w)`` maps."""
    n_c, h, w = cells.shape
    sat = np.zeros((n_c, h + 1, w + 1), dtype=np.float64)
    for c in range(n_c):
        np.cumsum(cells[c], axis=0, dtype=np.float64, out=sat[c, 1:, 1:])
        np.cumsum(sat[c, 1:, 1:], axis=1, out=sat[c, 1:, 1:])
    return sat


def _box_means(
    sat: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray
) -> np.ndarray:
    """Means over fractional boxes (cell units) from summed-area tables ``(C, h + 1, w + 1)``.

    The summed-area table of a piecewise-constant map is bilinear within each cell, so
    bilinear interpolation of the table at fractional corners gives exact box integrals.
    Parts of a box outside the map are left out of the mean.
    """
    _, hp, wp = sat.shape
    h, w = hp - 1, wp - 1
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    area = np.maximum((x1 - x0) * (y1 - y0), 1e-12)

    def at(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        ix = np.clip(np.floor(xs).astype(np.int64), 0, max(w - 1, 0))
        iy = np.clip(np.floor(ys).astype(np.int64), 0, max(h - 1, 0))
        fx, fy = xs - ix, ys - iy
        return (
            sat[:, iy, ix] * ((1 - fx) * (1 - fy))
            + sat[:, iy, ix + 1] * (fx * (1 - fy))
            + sat[:, iy + 1, ix] * ((1 - fx) * fy)
            + sat[:, iy + 1, ix + 1] * (fx * fy)
        )

    total = at(x1, y1) - at(x0, y1) - at(x1, y0) + at(x0, y0)
    return (total / area).T


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

    def _plan(self, image: Any, um_per_px: float) -> tuple[int, int, int, float, float]:
        """Pyramid level, block factor ``f``, cell factor ``b``, level scale and working µm/px."""
        from .patches import level_scales

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
        image: Any,
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
            counts as white glass, as in :func:`napari_histosge.patches.read_patches`).

        Returns
        -------
        The maps; cached on the encoder, so a later call whose extent lies inside reuses them.
        """
        from .patches import image_levels, read_regions

        if not (np.isfinite(um_per_px) and um_per_px > 0):
            raise ValueError(f"Expected a positive `um_per_px`, found `{um_per_px}`.")
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
            means = _box_means(maps.sat, cx - half, cy - half, cx + half, cy + half)
            feats.append(self._stats(means))
        return np.concatenate(feats, axis=1) if feats else np.zeros((len(centers), 0), np.float32)

    def dense_features(
        self,
        image: Any,
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


def patches_extent(
    centers_px: np.ndarray, sizes_px: Sequence[float], margin_px: float = 0.0
) -> tuple[float, float, float, float]:
    """Scale-0 box ``(x0, y0, x1, y1)`` covering every patch (plus ``margin_px``).

    Examples
    --------
    >>> patches_extent(np.array([[10.0, 20.0]]), [4.0])
    (8.0, 18.0, 12.0, 22.0)
    """
    c = np.asarray(centers_px, dtype=float).reshape(-1, 2)
    half = max(float(s) for s in sizes_px) / 2.0 + margin_px
    return (
        float(c[:, 0].min() - half),
        float(c[:, 1].min() - half),
        float(c[:, 0].max() + half),
        float(c[:, 1].max() + half),
    )


# ---------------------------------------------------------------------------------------------
# Weight loading


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Drop a ``module.`` / ``model.`` / ``backbone.`` prefix shared by every key."""
    changed = True
    while changed and state:
        changed = False
        for prefix in ("module.", "model.", "backbone.", "encoder."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Load a state dict safely (safetensors, or ``torch.load(weights_only=True)``).

    Wrappers such as ``{"state_dict": ...}`` or ``{"model": ...}`` are unpacked and a prefix
    shared by every key (``module.``, ``model.``, ...) is stripped. Pickled Python objects are
    never executed.

    Parameters
    ----------
    path
        A ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file.

    Returns
    -------
    Parameter name to tensor.

    Raises
    ------
    ValueError
        Naming the file, when it is missing, unreadable or not a dict of tensors.

    Examples
    --------
    >>> load_state_dict("missing.pth")  # doctest: +SKIP
    ValueError: Expected a weights file at `missing.pth`, found nothing there.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"Expected a weights file at `{p}`, found nothing there.")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt or foreign file
        raise ValueError(
            f"Expected a readable weights file (.safetensors, .pth, .bin) at `{p}`, found a "
            f"corrupt or unsupported file: {type(err).__name__}: {str(err)[:200]}"
        ) from err
    for wrapper in ("state_dict", "model", "model_state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ValueError(
            f"Expected a dict of tensors in `{p}`, found {type(state).__name__}"
            + (f" with keys {list(state)[:5]}." if isinstance(state, dict) else ".")
        )
    return _strip_prefixes({str(k): v for k, v in state.items()})


def _load_into(model: Any, path: str | Path, expected: str, *, assign: bool = False) -> None:
    """Load ``path`` into ``model`` strictly; a ValueError summarises any mismatch."""
    state = load_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"Expected weights for {expected} in `{path}`, found another architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}), {len(shapes)} shape mismatches (e.g. {shapes[:2]})."
        )
    model.load_state_dict(state, strict=True, assign=assign)


# ---------------------------------------------------------------------------------------------
# timm encoders


def _create_random(model_name: str, kwargs: dict[str, Any]) -> Any:
    """Untrained model with timm's own initialisation."""
    import timm

    return timm.create_model(model_name, pretrained=False, **kwargs)


def _create_loaded(model_name: str, kwargs: dict[str, Any], path: Path, expected: str) -> Any:
    """Model with the weights of ``path``, built without a random init when possible.

    The model is first built on the ``meta`` device and the checked weights assigned to it; if
    any parameter or buffer is not covered by the file (e.g. non-persistent buffers), it is
    built normally and loaded instead.
    """
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, **kwargs)
    except Exception:  # noqa: BLE001 - some models cannot be built on meta: build normally
        model = None
    if model is not None:
        _load_into(model, path, expected, assign=True)
        tensors = [*model.parameters(), *model.buffers()]
        if not any(t.is_meta for t in tensors):
            return model
    model = timm.create_model(model_name, pretrained=False, **kwargs)
    _load_into(model, path, expected)
    return model


class TimmEncoder:
    """A timm image model used as a patch encoder (UNI, UNI2-h or any ``timm:<name>``).

    Parameters
    ----------
    name
        ``"uni"``, ``"uni2-h"`` or ``"timm:<model name>"``.
    weights
        A local ``.safetensors``/``.pth``/``.bin`` file; ``"random"`` for an untrained network
        (benchmarks); ``"hub"`` to download pretrained weights (Hugging Face / timm; UNI and
        UNI2-h are gated and need an access token configured for ``huggingface_hub``).
    device
        Torch device; chosen automatically (cuda, mps, cpu) when ``None``.
    bf16
        bf16 autocast during inference (CPU or CUDA).
    batch_size
        Largest number of patches sent through the network at once.

    Examples
    --------
    >>> enc = TimmEncoder("timm:test_vit", weights="random")
    >>> enc.id
    'timm:test_vit@random'
    """

    def __init__(
        self,
        name: str,
        *,
        weights: str | Path | None = None,
        device: str | None = None,
        bf16: bool = False,
        batch_size: int = 32,
    ) -> None:
        import timm
        import torch

        self.name = name
        self.device = resolve_device(device)
        self.bf16 = bool(bf16)
        self.batch_size = max(1, int(batch_size))
        if name == "uni":
            kwargs = dict(_UNI_KWARGS)
        elif name == "uni2-h":
            kwargs = _uni2h_kwargs()
        elif name.startswith("timm:") and len(name) > 5:
            kwargs = {"model_name": name[5:], "num_classes": 0}
        else:
            raise ValueError(f"Expected an encoder among {list(ENCODERS)}, found `{name}`.")
        model_name = kwargs.pop("model_name")
        if not timm.is_model(model_name):
            raise ValueError(
                "Expected a timm model name (see `timm.list_models()`), "
                f"found unknown `{model_name}`."
            )
        if weights is None or str(weights) == "":
            raise ValueError(
                f"Expected weights for encoder `{name}`: a local .safetensors/.pth/.bin file, "
                f"'{HUB_WEIGHTS}' to download them, or '{RANDOM_WEIGHTS}' for an untrained "
                "network; found none. The built-in `histology` encoder needs no weights."
            )
        self.weights_path: Path | None = None
        if str(weights) == HUB_WEIGHTS:
            model = self._from_hub(name, model_name, kwargs)
            self.weights_sha256: str | None = HUB_WEIGHTS
        elif str(weights) == RANDOM_WEIGHTS:
            model = _create_random(model_name, kwargs)
            self.weights_sha256 = RANDOM_WEIGHTS
        else:
            path = Path(weights)
            if not path.is_file():
                raise ValueError(
                    f"Expected a weights file for `{name}` at `{path}`, found nothing there."
                )
            model = _create_loaded(model_name, kwargs, path, f"`{name}` (timm `{model_name}`)")
            self.weights_sha256 = file_sha256(path)
            self.weights_path = path
        model.eval().to(self.device)
        self.model = model
        self.model_name = model_name
        cfg = timm.data.resolve_model_data_config(model)
        self.input_size = int(cfg["input_size"][-1])
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.dim = int(getattr(model, "num_features", 0) or model.embed_dim)

    @staticmethod
    def _from_hub(name: str, model_name: str, kwargs: dict[str, Any]) -> Any:
        """Pretrained weights from the Hugging Face hub (only when explicitly asked for)."""
        import timm

        hub = _HUB_IDS.get(name)
        try:
            if hub is not None:
                return timm.create_model(hub, pretrained=True, **kwargs)
            return timm.create_model(model_name, pretrained=True, **kwargs)
        except Exception as err:  # noqa: BLE001 - offline or gated: say what to do instead
            raise ValueError(
                f"Expected to download weights for `{name}` ({hub or model_name}), found the hub "
                f"unreachable or the model gated ({type(err).__name__}: {str(err)[:200]}); pass "
                "a local weights file instead."
            ) from err

    @property
    def id(self) -> str:
        """Encoder id: name and the first 12 hex digits of the weights checksum."""
        sha = self.weights_sha256 or "none"
        return f"{self.name}@{sha[:12]}"

    def embed(self, patches: np.ndarray) -> np.ndarray:
        """Embed ``(n, h, w, 3)`` uint8 RGB patches (resized to the model's input).

        Returns
        -------
        ``(n, dim)`` float32 (the pre-logits features, e.g. the class token for UNI).
        """
        import torch

        arr = np.asarray(patches)
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"Expected (n, h, w, 3) uint8 RGB patches, found shape {arr.shape}.")
        if len(arr) == 0:
            return np.zeros((0, self.dim), np.float32)
        dev_type = torch.device(self.device).type
        use_bf16 = self.bf16 and dev_type in ("cpu", "cuda")
        outs = []
        with torch.inference_mode():
            for start in range(0, len(arr), self.batch_size):
                chunk = arr[start : start + self.batch_size]
                x = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2).float()
                x = x / 255.0
                if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
                    x = torch.nn.functional.interpolate(
                        x, size=(self.input_size, self.input_size), mode="bicubic", antialias=True
                    ).clamp_(0.0, 1.0)
                x = ((x - self.mean) / self.std).to(self.device)
                if use_bf16 and dev_type == "cpu":
                    # bf16 weights run faster than autocast on CPUs with bf16 units (measured:
                    # ViT-L/16 6.0 vs 5.1 patches/s on 2 cores; bench/throughput.py).
                    if next(self.model.parameters()).dtype != torch.bfloat16:
                        self.model.to(torch.bfloat16)
                    out = self.model.forward_head(
                        self.model.forward_features(x.to(torch.bfloat16)), pre_logits=True
                    )
                else:
                    with torch.autocast(
                        device_type=dev_type, dtype=torch.bfloat16, enabled=use_bf16
                    ):
                        out = self.model.forward_head(
                            self.model.forward_features(x), pre_logits=True
                        )
                outs.append(out.float().cpu().numpy())
        return np.concatenate(outs, axis=0).astype(np.float32, copy=False)


def get_encoder(
    name: str = "histology",
    *,
    weights: str | Path | None = None,
    device: str | None = None,
    bf16: bool = False,
) -> HistologyEncoder | TimmEncoder:
    """Build an encoder from the registry.

    Parameters
    ----------
    name
        ``"histology"`` (built in, weight-free, the default), ``"uni"`` (timm ViT-L/16,
        1024-d), ``"uni2-h"`` (timm ViT-g/14 with registers, 1536-d) or ``"timm:<model name>"``.
    weights
        For ViT encoders: a local ``.safetensors``/``.pth``/``.bin`` file (loaded safely and
        strictly), ``"random"`` for untrained weights, or ``"hub"`` to download (never done
        unless asked). Must be ``None`` for ``histology``.
    device
        ``"cpu"``, ``"cuda"``, ``"mps"``; chosen automatically when ``None``.
    bf16
        bf16 autocast during inference.

    Returns
    -------
    The encoder.

    Examples
    --------
    >>> get_encoder().id
    'histology@v2'
    >>> get_encoder("timm:test_vit", weights="random", device="cpu").dim
    64
    """
    if name == "histology":
        if weights not in (None, ""):
            raise ValueError(
                f"Expected no weights for the built-in `histology` encoder, found `{weights}`."
            )
        return HistologyEncoder()
    return TimmEncoder(name, weights=weights, device=device, bf16=bf16)
