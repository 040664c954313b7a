"""ViT patch tokens of tissue tiles, embedded once and pooled for any position set.

A ViT sees a tile of ``g x g`` tokens (``g = input_size / patch_size``). The tiles lie on a
fixed lattice anchored at the image's origin: tile ``(ty, tx)`` keeps the inner
``(g - 2 context)^2`` tokens, whose cells cover ``[tx T, (tx + 1) T) x [ty T, (ty + 1) T)``
scale-0 pixels (``T`` = inner tokens x token side), and sees ``context`` more tokens on each
side. Tiles are embedded on demand and kept in a :class:`TokenTiles` cache held by the encoder,
so spots, 4x positions, grids and the superpixel maps of one slide share one pass over the
tissue: later position sets embed only the tiles that earlier ones did not need.

A position's feature for a patch side ``s`` is the mean of the token cells under the
``s x s`` box around it (fractional cells weighted by their overlap): the same pooling as the
superpixel features (:func:`napari_histosge.features.dense.pool_maps`).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.base.progress import Progress

from ._boxes import box_means
from .histology import DenseMaps

if TYPE_CHECKING:
    from .vit import TimmEncoder

__all__ = ["TILES_VERSION", "TokenTiles", "iter_fill_tiles", "tiles_provenance", "token_tiles"]

#: Version of the tiling that token features are pooled from. Version 1 (never recorded) laid
#: the tiles from the corner of each requested extent; version 2 lays them on the lattice
#: anchored at the image's origin. Bump it whenever the tiling changes the features, so that
#: features cached under another version are computed again.
TILES_VERSION = 2

#: Largest summed-area table (bytes) built at once when pooling positions.
_BLOCK_BYTES = 256 << 20


@dataclass
class TokenTiles:
    """Token embeddings of the tiles of one image at one token size, filled on demand.

    Parameters
    ----------
    image
        The image element the tiles come from (identity, so caches never mix images).
    um_per_px
        Scale-0 resolution.
    token_px
        Side of one token in scale-0 pixels.
    grid
        Tokens per tile side that the model sees.
    context
        Tokens dropped on each side of a tile.
    dim
        Token width.
    tokens
        ``(ty, tx) -> (inner, inner, dim)`` float32 token embeddings of the embedded tiles.
    """

    image: Any
    um_per_px: float
    token_px: float
    grid: int
    context: int
    dim: int
    tokens: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def inner(self) -> int:
        """Tokens kept per tile side."""
        return self.grid - 2 * self.context

    @property
    def tile_px(self) -> float:
        """Side of a tile's kept cells in scale-0 pixels."""
        return self.inner * self.token_px

    def tile_range(self, extent: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """Tile indices ``(tx0, ty0, tx1, ty1)`` (end exclusive) covering ``extent``."""
        t = self.tile_px
        x0, y0, x1, y1 = (float(v) for v in extent)
        tx0, ty0 = int(np.floor(x0 / t)), int(np.floor(y0 / t))
        tx1 = max(tx0 + 1, int(np.ceil(x1 / t)))
        ty1 = max(ty0 + 1, int(np.ceil(y1 / t)))
        return tx0, ty0, tx1, ty1

    def tiles_under(self, positions_px: np.ndarray, side_px: float) -> list[tuple[int, int]]:
        """Tiles whose kept cells meet a ``side_px`` box around any position (sorted)."""
        xy = np.asarray(positions_px, dtype=float).reshape(-1, 2)
        if not len(xy):
            return []
        t, half = self.tile_px, float(side_px) / 2.0
        lo = np.floor((xy - half) / t).astype(np.int64)
        hi = np.floor((xy + half) / t).astype(np.int64)
        span = int((hi - lo).max()) + 1
        keys: set[tuple[int, int]] = set()
        for dy in range(span):
            for dx in range(span):
                tx, ty = lo[:, 0] + dx, lo[:, 1] + dy
                ok = (tx <= hi[:, 0]) & (ty <= hi[:, 1])
                keys.update(zip(ty[ok].tolist(), tx[ok].tolist(), strict=True))
        return sorted(keys)

    def missing(self, keys: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """Return the tiles among ``keys`` not embedded yet."""
        return [k for k in keys if k not in self.tokens]

    def maps(self, tile_range: tuple[int, int, int, int]) -> DenseMaps:
        """Token maps over a tile range; tiles never embedded are left at zero."""
        tx0, ty0, tx1, ty1 = tile_range
        n = self.inner
        cells = np.zeros((self.dim, (ty1 - ty0) * n, (tx1 - tx0) * n), dtype=np.float32)
        for (ty, tx), tok in self.tokens.items():
            if ty0 <= ty < ty1 and tx0 <= tx < tx1:
                r, c = (ty - ty0) * n, (tx - tx0) * n
                cells[:, r : r + n, c : c + n] = np.moveaxis(tok, -1, 0)
        t = self.tile_px
        return DenseMaps(
            cells=cells,
            cell_px=float(self.token_px),
            origin_px=(tx0 * t, ty0 * t),
            image=self.image,
            um_per_px=self.um_per_px,
        )

    def pool(self, positions_px: np.ndarray, sizes_px: Sequence[float]) -> np.ndarray:
        """Mean token of the box of each side in ``sizes_px`` around every position.

        The tiles under the boxes must have been embedded (:func:`iter_fill_tiles`).

        Returns
        -------
        ``(n, len(sizes_px) * dim)`` float32, sizes in the given order.
        """
        xy = np.asarray(positions_px, dtype=float).reshape(-1, 2)
        gap = self.missing(self.tiles_under(xy, max(sizes_px)))
        if gap:
            raise ValueError(
                f"Expected the tiles under every position to be embedded, found {len(gap)} "
                f"missing (e.g. {gap[:3]})."
            )
        out = np.empty((len(xy), len(sizes_px) * self.dim), dtype=np.float32)
        t, half = self.tile_px, max(float(s) for s in sizes_px) / 2.0
        margin = int(np.ceil(half / t)) + 1
        cells_per_tile = self.inner**2 * self.dim * 8
        side = max(1, int(np.sqrt(_BLOCK_BYTES / cells_per_tile)) - 2 * margin)
        block = np.floor(xy / (side * t)).astype(np.int64)
        _, label = np.unique(block, axis=0, return_inverse=True)
        for b in range(int(label.max()) + 1 if len(xy) else 0):
            idx = np.flatnonzero(label.ravel() == b)
            sub = xy[idx]
            rng = self.tile_range(
                (
                    sub[:, 0].min() - half,
                    sub[:, 1].min() - half,
                    sub[:, 0].max() + half + 1e-6,
                    sub[:, 1].max() + half + 1e-6,
                )
            )
            sat = self.maps(rng).sat
            ox, oy = rng[0] * t, rng[1] * t
            cx, cy = (sub[:, 0] - ox) / self.token_px, (sub[:, 1] - oy) / self.token_px
            parts = []
            for s in sizes_px:
                hs = float(s) / (2.0 * self.token_px)
                parts.append(box_means(sat, cx - hs, cy - hs, cx + hs, cy + hs))
            out[idx] = np.concatenate(parts, axis=1)
        return out


def tiles_provenance(tiles: TokenTiles) -> dict[str, Any]:
    """Describe the tiling that features pooled from ``tiles`` depend on (cache provenance).

    Examples
    --------
    >>> tiles = TokenTiles(image=None, um_per_px=0.5, token_px=16.0, grid=14, context=1, dim=8)
    >>> tiles_provenance(tiles)["token_um"], tiles_provenance(tiles)["tile_context_tokens"]
    (8.0, 1)
    """
    return {
        "pooling": "tiles",
        "tiles_version": TILES_VERSION,
        "token_um": float(tiles.token_px * tiles.um_per_px),
        "tile_tokens": int(tiles.grid),
        "tile_context_tokens": int(tiles.context),
    }


def token_tiles(
    encoder: TimmEncoder,
    image: Any,
    um_per_px: float,
    *,
    token_um: float | None = None,
    context: int = 1,
) -> TokenTiles:
    """Return the encoder's tile cache for ``image`` at this token size (made on first use).

    Parameters
    ----------
    encoder
        A :class:`napari_histosge.features.vit.TimmEncoder`.
    image
        ``(c, y, x)`` DataArray or multiscale DataTree.
    um_per_px
        Scale-0 resolution.
    token_um
        Side of one token in µm; by default the model's patch size at 0.5 µm per pixel (UNI's
        training resolution: 8 µm for 16-pixel patches).
    context
        Tokens dropped on each side of a tile (tiles overlap by twice that), so that every kept
        token saw its surroundings.

    Examples
    --------
    >>> import xarray as xr
    >>> from napari_histosge.features import get_encoder
    >>> enc = get_encoder("timm:test_vit", weights="random", device="cpu")
    >>> img = xr.DataArray(np.full((3, 64, 64), 200, np.uint8), dims=("c", "y", "x"))
    >>> tiles = token_tiles(enc, img, 0.5)
    >>> tiles.inner, tiles.tile_px, token_tiles(enc, img, 0.5) is tiles
    (8, 128.0, True)
    """
    if not (np.isfinite(um_per_px) and um_per_px > 0):
        raise ValueError(f"Expected a positive `um_per_px`, found `{um_per_px}`.")
    patch = int(encoder.model.patch_embed.patch_size[0])
    g = int(encoder.input_size) // patch
    if not 0 <= context < g // 2:
        raise ValueError(f"Expected `context` in [0, {g // 2 - 1}], found `{context}`.")
    t_um = float(token_um) if token_um is not None else 0.5 * patch
    if not (np.isfinite(t_um) and t_um > 0):
        raise ValueError(f"Expected a positive `token_um`, found `{token_um}`.")
    tok_px = t_um / float(um_per_px)
    caches: list[TokenTiles] | None = getattr(encoder, "token_tiles_cache", None)
    if caches is None:
        caches = []
        encoder.token_tiles_cache = caches
    for c in caches:
        if (
            c.image is image
            and abs(c.um_per_px - um_per_px) < 1e-9
            and abs(c.token_px - tok_px) < 1e-9
            and c.context == context
        ):
            return c
    made = TokenTiles(image, float(um_per_px), tok_px, g, int(context), int(encoder.dim))
    caches.append(made)
    return made


def iter_fill_tiles(
    encoder: TimmEncoder,
    tiles: TokenTiles,
    keys: Sequence[tuple[int, int]],
    *,
    batch_size: int = 8,
    message: str = "ViT tiles",
) -> Generator[Progress, None, int]:
    """Embed the tiles among ``keys`` that ``tiles`` lacks, ``batch_size`` at a time.

    Returns
    -------
    The number of tiles embedded.
    """
    from napari_histosge.images import image_levels, level_scales

    from .patches import read_regions

    todo = tiles.missing(keys)
    g, ctx, inner, tok = tiles.grid, tiles.context, tiles.inner, tiles.token_px
    size = int(encoder.input_size)
    patch = size // g
    scales = level_scales(tiles.image)
    want = tok / patch  # scale-0 pixels per model pixel
    ok = [i for i, s in enumerate(scales) if s <= want * 1.001]
    li = max(ok) if ok else 0
    level, ds = image_levels(tiles.image)[li], scales[li]
    batch_size = max(1, int(batch_size))
    for b0 in range(0, len(todo), batch_size):
        batch = todo[b0 : b0 + batch_size]
        boxes = []
        for ty, tx in batch:
            bx0 = (tx * inner - ctx) * tok
            by0 = (ty * inner - ctx) * tok
            boxes.append(
                tuple(int(round(v / ds)) for v in (bx0, by0, bx0 + g * tok, by0 + g * tok))
            )
        regions = read_regions(level, boxes)
        arr = np.stack([_resize(r, size) for r in regions])
        out = _vit_tokens(encoder, arr)
        for key, t in zip(batch, out, strict=True):
            tiles.tokens[key] = np.ascontiguousarray(t[ctx : ctx + inner, ctx : ctx + inner])
        yield Progress("features", min(b0 + batch_size, len(todo)), len(todo), message)
    return len(todo)


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


def _resize(region: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 region to ``size`` x ``size`` (area averaging or bilinear)."""
    if region.shape[0] == size and region.shape[1] == size:
        return region
    import torch

    x = torch.from_numpy(np.ascontiguousarray(region)).permute(2, 0, 1)[None].float()
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
