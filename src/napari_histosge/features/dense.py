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

from napari_histosge._progress import Progress, run_generator

from .histology import DenseMaps, HistologyEncoder, _box_means

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
    return _box_means(maps.sat, cx - half, cy - half, cx + half, cy + half).astype(np.float32)


def _vit_tokens(encoder: TimmEncoder, tiles: np.ndarray) -> np.ndarray:
    """Patch-token embeddings ``(n, g, g, dim)`` of ``(n, T, T, 3)`` uint8 tiles."""
    import torch

    model = encoder.model
    n_prefix = int(getattr(model, "num_prefix_tokens", 1))
    x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float() / 255.0
    x = ((x - encoder.mean) / encoder.std).to(encoder.device)
    dev_type = torch.device(encoder.device).type
    with (
        torch.inference_mode(),
        torch.autocast(device_type=dev_type, dtype=torch.bfloat16, enabled=encoder.bf16),
    ):
        out = model.forward_features(x)
    tokens = out[:, n_prefix:].float().cpu().numpy()
    g = int(round(np.sqrt(tokens.shape[1])))
    if g * g != tokens.shape[1]:
        raise ValueError(f"Expected a square token grid, found {tokens.shape[1]} tokens.")
    return tokens.reshape(len(tiles), g, g, -1)


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
    The token maps: ``cells`` is ``(dim, rows, columns)``, one cell per kept token.
    """
    from napari_histosge.images import image_levels, level_scales

    from .patches import read_regions

    if not (np.isfinite(um_per_px) and um_per_px > 0):
        raise ValueError(f"Expected a positive `um_per_px`, found `{um_per_px}`.")
    patch = int(encoder.model.patch_embed.patch_size[0])
    size = int(encoder.input_size)
    g = size // patch
    if not 0 <= context < g // 2:
        raise ValueError(f"Expected `context` in [0, {g // 2 - 1}], found `{context}`.")
    t_um = float(token_um) if token_um is not None else 0.5 * patch
    tok_px = t_um / um_per_px  # scale-0 pixels per token
    inner = g - 2 * context
    x0, y0, x1, y1 = (float(v) for v in extent)
    nx = max(1, int(np.ceil((x1 - x0) / (inner * tok_px))))
    ny = max(1, int(np.ceil((y1 - y0) / (inner * tok_px))))
    scales = level_scales(image)
    want = tok_px / patch  # scale-0 pixels per model pixel
    ok = [i for i, s in enumerate(scales) if s <= want * 1.001]
    li = max(ok) if ok else 0
    level, ds = image_levels(image)[li], scales[li]
    cells = np.zeros((encoder.dim, ny * inner, nx * inner), dtype=np.float32)
    tiles = [(ty, tx) for ty in range(ny) for tx in range(nx)]
    if keep is not None:
        centres = np.array(
            [
                [x0 + (tx + 0.5) * inner * tok_px, y0 + (ty + 0.5) * inner * tok_px]
                for ty, tx in tiles
            ]
        ).reshape(-1, 2)
        tiles = [t for t, k in zip(tiles, np.asarray(keep(centres), bool), strict=True) if k]
    for b0 in range(0, len(tiles), batch_size):
        batch = tiles[b0 : b0 + batch_size]
        boxes = []
        for ty, tx in batch:
            bx0 = x0 + (tx * inner - context) * tok_px
            by0 = y0 + (ty * inner - context) * tok_px
            boxes.append(
                tuple(int(round(v / ds)) for v in (bx0, by0, bx0 + g * tok_px, by0 + g * tok_px))
            )
        regions = read_regions(level, boxes)
        arr = np.stack([_resize(r, size) for r in regions])
        tokens = _vit_tokens(encoder, arr)
        for (ty, tx), tok in zip(batch, tokens, strict=True):
            keep_tok = tok[context : context + inner, context : context + inner]
            cells[:, ty * inner : (ty + 1) * inner, tx * inner : (tx + 1) * inner] = np.moveaxis(
                keep_tok, -1, 0
            )
        yield Progress("features", min(b0 + batch_size, len(tiles)), len(tiles), "ViT tokens")
    return DenseMaps(
        cells=cells, cell_px=float(tok_px), origin_px=(x0, y0), image=image, um_per_px=um_per_px
    )


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


def _resize(region: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 region to ``size`` x ``size`` (area averaging or bilinear)."""
    if region.shape[0] == size and region.shape[1] == size:
        return region
    import torch

    x = torch.from_numpy(np.ascontiguousarray(region)).permute(2, 0, 1)[None].float()
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
