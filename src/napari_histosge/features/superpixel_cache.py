"""Dense image features of a superpixel grid, computed once and cached in the store.

The histology encoder's dense maps pooled over boxes around every superpixel, or a ViT's patch
tokens of tissue tiles (UNI, UNI2-h, any timm ViT) pooled the same way; the cache entry is keyed
by the encoder, the box sizes, the positions and (for a ViT) its tiling.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from napari_histosge.base.progress import Progress

#: A :class:`~napari_histosge.workflows.pipeline.Slide` and
#: :class:`~napari_histosge.workflows.superres.SuperResOptions` (workflow types, above this layer).
Slide = SuperResOptions = Any

__all__ = ["cached_features"]


def cached_features(
    slide: Slide,
    opts: SuperResOptions,
    pos: np.ndarray,
    step: float,
    box: tuple[Any, Any],
    res_um: float,
) -> Generator[Progress, None, tuple[np.ndarray, dict[str, Any]]]:
    """Return superpixel features from the store's cache, or computed once and cached there.

    ``box`` is the ``(lo, hi)`` corners of the grid (scale-0 pixels), as given by
    :func:`units_superpixel_grid`.
    """
    from . import get_encoder
    from .cache import cache_element_name, cache_key, lookup, positions_digest, store
    from .dense import histology_dense_maps, superpixel_features
    from .histology import HistologyEncoder

    um = slide.geometry.um_per_px
    lo, hi = box
    enc: Any = None
    tiling: dict[str, Any] = {}  # the ViT tiling the features depend on, checked on lookup
    if opts.encoder == "histology":
        encoder_id = HistologyEncoder().id
        sizes_um = [float(v) for v in opts.scales_um]
    else:
        from .vit_tiles import tiles_provenance, token_tiles

        enc = get_encoder(opts.encoder, weights=opts.weights, device=opts.device, bf16=opts.bf16)
        encoder_id = enc.id
        own = max(step * um, 0.5 * int(enc.model.patch_embed.patch_size[0]))
        sizes_um = [own, 3 * own]
        tiling = tiles_provenance(token_tiles(enc, slide.sdata.images[slide.keys.image_key], um))
    sizes_px = [v / um for v in sizes_um]
    name = cache_element_name(f"superpixels_{res_um:g}um".replace(".", "p"))
    key = cache_key(encoder_id, sizes_um)
    digest = positions_digest(pos)
    hit = lookup(slide.sdata, name, key, digest, sizes_px, require=tiling) if opts.cache else None
    if hit is not None:
        return hit[0], {**hit[1], "from_cache": True}
    if enc is None:
        ctx = max(sizes_um) / um
        extent = (lo[0] - ctx, lo[1] - ctx, hi[0] + ctx, hi[1] + ctx)
        maps = yield from histology_dense_maps(slide.sdata.images[slide.keys.image_key], um, extent)
        feats = superpixel_features(maps, pos, scales_um=sizes_um)
    else:
        feats = yield from _vit_features(slide, enc, pos, sizes_px, box, opts.batch_size)
    meta = {
        "encoder": opts.encoder,
        "encoder_id": encoder_id,
        "dim": int(feats.shape[1]),
        "positions_digest": digest,
        "patch_sizes_px": sizes_px,
        "patch_sizes_um": sizes_um,
        "resolution_um": res_um,
        "positions": "superpixels",
        **tiling,
    }
    if opts.cache:
        store(slide.sdata, name, key, pos, feats, meta)
    return feats, {**meta, "from_cache": False}


def _vit_features(
    slide: Slide,
    enc: Any,
    pos: np.ndarray,
    sizes_px: Sequence[float],
    box: tuple[Any, Any],
    batch_size: int,
) -> Generator[Progress, None, np.ndarray]:
    """Patch-token features of a ViT: means over boxes of ``sizes_px`` around each superpixel."""
    from .dense import iter_vit_token_maps, pool_maps

    lo, hi = box
    maps = yield from iter_vit_token_maps(
        enc,
        slide.sdata.images[slide.keys.image_key],
        slide.geometry.um_per_px,
        (lo[0], lo[1], hi[0], hi[1]),
        batch_size=batch_size,
    )
    return np.concatenate([pool_maps(maps, pos, s) for s in sizes_px], axis=1)
