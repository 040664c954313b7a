"""Dense image features on a superpixel grid, computed once per tissue area.

Two sources, both returning :class:`~napari_histosge.features.histology.DenseMaps`
(per-cell channel maps with summed-area pooling), so that superpixels, spots and 4x positions
are all pooled from the same maps and extra positions cost almost nothing:

- the built-in ``histology`` encoder's dense maps (colour, stain and texture statistics);
- a ViT's patch-token embeddings: the tissue is cut into tiles of the model's input size,
  each tile's token grid is kept (minus ``context`` tokens on each side, which only give the
  inner tokens their surroundings), and the tokens are laid side by side into one map whose
  cells are the tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.base.progress import Progress, run_generator

from ._boxes import box_means
from .histology import DenseMaps, HistologyEncoder

if TYPE_CHECKING:
    from .vit import TimmEncoder

__all__ = [
    "DEFAULT_SCALES_UM",
    "histology_dense_maps",
    "iter_vit_token_maps",
    "pool_maps",
    "superpixel_features",
    "vit_token_maps",
]

#: Box sides (µm) pooled around every superpixel by default: the superpixel itself and three
#: context scales (chosen by leave-one-section-out, ``bench/superres.py``).
DEFAULT_SCALES_UM = (8.0, 24.0, 64.0, 144.0)


def histology_dense_maps(
    image: Any,
    um_per_px: float,
    extent: tuple[float, float, float, float],
    *,
    encoder: HistologyEncoder | None = None,
) -> Generator[Progress, None, DenseMaps]:
    """Compute the histology encoder's dense maps over ``extent`` (scale-0 pixels), with progress.

    Examples
    --------
    >>> import xarray as xr
    >>> img = xr.DataArray(np.full((3, 64, 64), 200, np.uint8), dims=("c", "y", "x"))
    >>> maps = run_generator(histology_dense_maps(img, 1.0, (0, 0, 64, 64)))
    >>> maps.cells.shape[0]
    22
    """
    enc = encoder or HistologyEncoder()
    gen = enc.iter_dense_maps(image, um_per_px, extent)
    while True:
        try:
            step, total = next(gen)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        yield Progress("features", step, total, "dense histology maps")


def superpixel_features(
    maps: DenseMaps,
    positions_px: np.ndarray,
    *,
    scales_um: Sequence[float] = DEFAULT_SCALES_UM,
    encoder: HistologyEncoder | None = None,
) -> np.ndarray:
    """Histology features of square boxes of each side in ``scales_um`` around every position.

    Returns
    -------
    ``(n, len(scales_um) * 22)`` float32 (means and standard deviations per box).

    Examples
    --------
    >>> import xarray as xr
    >>> img = xr.DataArray(np.full((3, 64, 64), 200, np.uint8), dims=("c", "y", "x"))
    >>> maps = run_generator(histology_dense_maps(img, 1.0, (0, 0, 64, 64)))
    >>> superpixel_features(maps, np.array([[32.0, 32.0]]), scales_um=(8, 16)).shape
    (1, 44)
    """
    enc = encoder or HistologyEncoder()
    if not len(scales_um) or min(scales_um) <= 0:
        raise ValueError(f"Expected positive box sides in µm, found {list(scales_um)}.")
    return enc.pool(maps, positions_px, [float(s) / maps.um_per_px for s in scales_um])


def pool_maps(maps: DenseMaps, positions_px: np.ndarray, size_px: float) -> np.ndarray:
    """Means of every channel over ``size_px``-sided boxes around ``positions_px``.

    Examples
    --------
    >>> m = DenseMaps(np.ones((2, 4, 4), np.float32), 1.0, (0.0, 0.0), None, 1.0)
    >>> pool_maps(m, np.array([[2.0, 2.0]]), 2.0).tolist()
    [[1.0, 1.0]]
    """
    c = np.asarray(positions_px, dtype=float).reshape(-1, 2)
    cx = (c[:, 0] - maps.origin_px[0]) / maps.cell_px
    cy = (c[:, 1] - maps.origin_px[1]) / maps.cell_px
    half = float(size_px) / (2.0 * maps.cell_px)
    return box_means(maps.sat, cx - half, cy - half, cx + half, cy + half).astype(np.float32)


def iter_vit_token_maps(
    encoder: TimmEncoder,
    image: Any,
    um_per_px: float,
    extent: tuple[float, float, float, float],
    *,
    token_um: float | None = None,
    context: int = 1,
    keep: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 8,
) -> Generator[Progress, None, DenseMaps]:
    """Patch-token maps of a timm ViT over ``extent`` (scale-0 pixels), tile by tile.

    The tiles lie on the image-anchored lattice of :mod:`.vit_tiles` and are kept in the
    encoder's tile cache, so tiles that earlier position sets (spots, 4x positions) embedded
    with the same encoder are not embedded again.

    Parameters
    ----------
    encoder
        A :class:`napari_histosge.features.vit.TimmEncoder` (UNI, UNI2-h, ``timm:<name>``).
    image
        ``(c, y, x)`` DataArray or multiscale DataTree.
    um_per_px
        Scale-0 resolution.
    extent
        ``(x0, y0, x1, y1)`` box to cover.
    token_um
        Side of one token in µm; by default the model's patch size at 0.5 µm per pixel (UNI's
        training resolution: 8 µm for 16-pixel patches).
    context
        Tokens dropped on each side of a tile (tiles overlap by twice that), so that every kept
        token saw its surroundings.
    keep
        ``callable((n, 2) tile centres in scale-0 pixels) -> (n,) bool``: tiles to embed
        (for example those on tissue); the others are left at zero.
    batch_size
        Tiles per forward pass.

    Returns
    -------
    The token maps: ``cells`` is ``(dim, rows, columns)``, one cell per kept token, from the
    lattice tile containing ``extent``'s top-left corner.
    """
    from .vit_tiles import iter_fill_tiles, token_tiles

    tiles = token_tiles(encoder, image, um_per_px, token_um=token_um, context=context)
    rng = tiles.tile_range(extent)
    tx0, ty0, tx1, ty1 = rng
    keys = [(ty, tx) for ty in range(ty0, ty1) for tx in range(tx0, tx1)]
    if keep is not None:
        t = tiles.tile_px
        centres = np.array([[(tx + 0.5) * t, (ty + 0.5) * t] for ty, tx in keys]).reshape(-1, 2)
        keys = [k for k, ok in zip(keys, np.asarray(keep(centres), bool), strict=True) if ok]
    yield from iter_fill_tiles(encoder, tiles, keys, batch_size=batch_size, message="ViT tokens")
    maps = tiles.maps(rng)
    if keep is not None:  # tiles embedded earlier for other positions stay out of a kept map
        kept = {(ty - ty0, tx - tx0) for ty, tx in keys}
        n = tiles.inner
        for ty in range(ty1 - ty0):
            for tx in range(tx1 - tx0):
                if (ty, tx) not in kept:
                    maps.cells[:, ty * n : (ty + 1) * n, tx * n : (tx + 1) * n] = 0.0
    return maps


def vit_token_maps(
    encoder: TimmEncoder, image: Any, um_per_px: float, extent: Any, **kwargs: Any
) -> DenseMaps:
    """Run :func:`iter_vit_token_maps` to the end.

    Examples
    --------
    >>> import xarray as xr
    >>> from napari_histosge.features import get_encoder
    >>> enc = get_encoder("timm:test_vit", weights="random", device="cpu")
    >>> img = xr.DataArray(np.full((3, 200, 200), 200, np.uint8), dims=("c", "y", "x"))
    >>> vit_token_maps(enc, img, 0.5, (0, 0, 200, 200), context=0).cells.shape
    (64, 20, 20)
    """
    return run_generator(iter_vit_token_maps(encoder, image, um_per_px, extent, **kwargs))
