"""Embed positions of a slide with an encoder, reusing and filling the store's feature cache."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from napari_histosge.base.progress import Progress, run_generator
from napari_histosge.base.validation import assert_at_least, assert_one_of

from .base import Encoder, patches_extent
from .cache import cache_element_name, cache_key, lookup, positions_digest, store
from .histology import HistologyEncoder
from .patches import patch_sizes_px, read_patches
from .registry import get_encoder

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = [
    "DEFAULT_PATCH_SIZES",
    "extract_features",
    "FeatureSet",
    "iter_extract_features",
    "POOLINGS",
    "resolve_pooling",
]


#: Patch sides in spot diameters. Several context sizes for the built-in encoder (held-out
#: accuracy on her2st rose from 1 to 2-4 spot diameters of context); one for ViT encoders.
DEFAULT_PATCH_SIZES: dict[str, tuple[float, ...]] = {"histology": (1.0, 2.0, 4.0), "vit": (2.0,)}


_STAGE = "features"

#: How a ViT embeds positions: ``"tiles"`` pools the patch tokens of tissue tiles embedded once
#: (the default for ViTs), ``"patch"`` runs one forward pass per position and patch size;
#: ``"auto"`` picks ``"tiles"`` for timm ViTs and ``"patch"`` for other encoders.
POOLINGS = ("auto", "patch", "tiles")


def resolve_pooling(encoder: Encoder, pooling: str) -> str:
    """``"tiles"``, ``"patch"`` or ``"maps"`` (the built-in encoder) for ``encoder``.

    Examples
    --------
    >>> resolve_pooling(HistologyEncoder(), "auto")
    'maps'
    """
    assert_one_of("pooling", pooling, list(POOLINGS))
    if isinstance(encoder, HistologyEncoder):
        return "maps"
    from .vit import TimmEncoder

    is_vit = isinstance(encoder, TimmEncoder) and hasattr(encoder.model, "patch_embed")
    if pooling == "tiles" and not is_vit:
        raise ValueError(
            f"Expected a timm ViT encoder for `pooling='tiles'`, found `{encoder.id}`."
        )
    if pooling == "auto":
        return "tiles" if is_vit else "patch"
    return pooling


class _Geometry(Protocol):
    diameter_px: float
    um_per_px: float


@dataclass(frozen=True)
class FeatureSet:
    """Features of a set of positions.

    Parameters
    ----------
    features
        ``(n, d)`` float32.
    key
        Cache key (encoder id, weights checksum, patch sizes).
    meta
        ``encoder``, ``encoder_id``, ``weights_sha256``, ``patch_sizes_px``, ``patch_sizes_um``,
        ``patch_sizes_spot``, ``dim``, ``dim_per_size``, ``positions_digest``.
    from_cache
        Whether the features were read from the cache (nothing was embedded).
    """

    features: np.ndarray
    key: str
    meta: dict[str, Any]
    from_cache: bool


def _resolve_sizes(
    patch_sizes: Sequence[float] | None,
    patch_unit: str,
    geometry: _Geometry,
    is_histology: bool,
) -> tuple[list[float], list[float]]:
    assert_one_of("patch_unit", patch_unit, ["spot", "um", "px"])
    diameter = float(geometry.diameter_px)
    um_per_px = float(geometry.um_per_px)
    if not (np.isfinite(diameter) and diameter > 0 and np.isfinite(um_per_px) and um_per_px > 0):
        raise ValueError(
            "Expected a geometry with positive `diameter_px` and `um_per_px`, "
            f"found {diameter} and {um_per_px}."
        )
    if patch_sizes is None:
        patch_sizes = DEFAULT_PATCH_SIZES["histology" if is_histology else "vit"]
        patch_unit = "spot"
    sizes_px = patch_sizes_px(patch_sizes, patch_unit, diameter_px=diameter, um_per_px=um_per_px)
    sizes_spot = [round(s / diameter, 4) for s in sizes_px]
    return sizes_px, sizes_spot


def iter_extract_features(
    sdata: SpatialData,
    positions_px: np.ndarray,
    *,
    image_key: str,
    geometry: _Geometry,
    encoder: str | Encoder = "histology",
    weights: str | None = None,
    patch_sizes: Sequence[float] | None = None,
    patch_unit: Literal["spot", "um", "px"] = "spot",
    batch_size: int = 32,
    device: str | None = None,
    bf16: bool = False,
    cache_name: str = "spots",
    cache: bool = True,
    pooling: str = "auto",
) -> Generator[Progress, None, FeatureSet]:
    """Embed ``positions_px`` with an encoder, reusing and filling the store's feature cache.

    The cache is the table ``histosge_features_<cache_name>`` (``obsm[key]`` = features,
    ``obsm["spatial"]`` = positions, ``uns["histosge_features"][key]`` = provenance), keyed by
    encoder id, weights checksum and patch sizes, and valid for the exact positions (and, for
    ``pooling="tiles"``, the tiling of :func:`.vit_tiles.tiles_provenance`). It is
    written only after the last batch, so a cancelled run (the generator closed between two
    yields) leaves no partial cache; a store on disk gets the element written through
    ``write_element``.

    The built-in ``histology`` encoder computes dense maps once over the region of the spots
    (yielding one step per tile) and pools every position and patch size from them; pass the
    same encoder instance for the spots and the super-resolution positions so that the maps
    are computed once. ViT encoders, by default (``pooling="tiles"``), embed the tissue tiles
    under the positions' patches once (:mod:`.vit_tiles`: tiles of the model's input size at
    8 µm per token for 16-pixel patches, one token of context on each side) and give each
    position the mean patch token under each patch box; tiles are kept on the encoder, so
    the next position set with the same encoder embeds only tiles not seen yet. With
    ``pooling="patch"`` they embed one patch per position and size, resized to the model's
    input, and take the model's pooled output (the class token for UNI).

    Parameters
    ----------
    sdata
        The slide.
    positions_px
        ``(n, 2)`` positions ``(x, y)`` in the image's scale-0 pixels.
    image_key
        The H&E image.
    geometry
        Spot geometry (:class:`napari_histosge.geometry.SpotGeometry`, or any object with
        ``diameter_px`` and ``um_per_px``; a ``centers_px`` attribute widens the map region to
        all spots so that later position sets reuse the maps).
    encoder
        Encoder name (see :func:`napari_histosge.features.get_encoder`) or instance.
    weights
        Weights for a named ViT encoder (file, ``"random"`` or ``"hub"``).
    patch_sizes
        Patch sides in ``patch_unit``; :data:`DEFAULT_PATCH_SIZES` (spot diameters) when ``None``.
    patch_unit
        ``"spot"`` diameters, ``"um"`` or ``"px"``.
    batch_size
        Positions per batch (one progress step and one cancellation point per batch).
    device
        Torch device for a named ViT encoder.
    bf16
        bf16 autocast for a named ViT encoder.
    cache_name
        Name of the position set (``"spots"``, ``"4x"``, ...).
    cache
        Read and write the cache.
    pooling
        ``"auto"``, ``"tiles"`` or ``"patch"`` for ViT encoders (see :data:`POOLINGS`); the
        built-in encoder always pools its dense maps.

    Returns
    -------
    The features: ``(n, len(patch_sizes) * encoder.dim)``, patch sizes in the given order.

    Examples
    --------
    >>> from napari_histosge.io import load_sample, resolve_keys
    >>> from napari_histosge.geometry import spot_geometry
    >>> sdata = load_sample()
    >>> keys = resolve_keys(sdata)
    >>> geom = spot_geometry(sdata, **keys.__dict__)
    >>> gen = iter_extract_features(sdata, geom.centers_px, image_key=keys.image_key, geometry=geom)
    >>> fs = run_generator(gen)
    >>> fs.features.shape
    (49, 66)
    """
    assert_one_of("image_key", image_key, sdata.images, error=KeyError)
    xy = np.asarray(positions_px, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0 or not np.isfinite(xy).all():
        raise ValueError(
            f"Expected finite positions of shape (n, 2) with n >= 1, found shape {xy.shape}."
        )
    assert_at_least("batch_size", int(batch_size), 1)
    if not cache_name or any(ch in cache_name for ch in "/\\ "):
        raise ValueError(f"Expected a cache name without spaces or slashes, found `{cache_name}`.")
    batch_size = int(batch_size)
    enc = (
        get_encoder(encoder, weights=weights, device=device, bf16=bf16)
        if isinstance(encoder, str)
        else encoder
    )
    is_hist = isinstance(enc, HistologyEncoder)
    sizes_px, sizes_spot = _resolve_sizes(patch_sizes, patch_unit, geometry, is_hist)
    how = resolve_pooling(enc, pooling)
    key = cache_key(enc.id, sizes_spot) + ("_tiles" if how == "tiles" else "")
    name = cache_element_name(cache_name)
    digest = positions_digest(xy)
    n = len(xy)
    image = sdata.images[image_key]
    tiling: dict[str, Any] = {}  # the ViT tiling the features depend on, checked on lookup
    if how == "tiles":
        from .vit_tiles import tiles_provenance, token_tiles

        tiling = tiles_provenance(token_tiles(enc, image, float(geometry.um_per_px)))
    if cache:
        hit = lookup(sdata, name, key, digest, sizes_px, require=tiling)
        if hit is not None:
            yield Progress(_STAGE, n, n, f"{cache_name}: reused cached features ({key})")
            return FeatureSet(hit[0], key, hit[1], from_cache=True)

    n_batches = -(-n // batch_size)
    parts: list[np.ndarray] = []
    yield Progress(_STAGE, 0, n_batches, f"{cache_name}: embedding {n} positions with {enc.id}")
    if is_hist:
        assert isinstance(enc, HistologyEncoder)
        spots = getattr(geometry, "centers_px", None)
        ref = (
            xy if spots is None else np.vstack([xy, np.asarray(spots, dtype=float).reshape(-1, 2)])
        )
        extent = patches_extent(ref, sizes_px, margin_px=float(geometry.diameter_px))
        maps_gen = enc.iter_dense_maps(image, float(geometry.um_per_px), extent)
        while True:
            try:
                tile, n_tiles = next(maps_gen)
            except StopIteration as stop:
                maps = stop.value
                break
            yield Progress(
                _STAGE,
                0,
                n_batches,
                f"{cache_name}: tissue maps, tile {tile}/{n_tiles}",
                info={"tile": tile, "tiles": n_tiles},
            )
        for b in range(n_batches):
            parts.append(enc.pool(maps, xy[b * batch_size : (b + 1) * batch_size], sizes_px))
            yield Progress(
                _STAGE, b + 1, n_batches, f"{cache_name}: {min(n, (b + 1) * batch_size)}/{n}"
            )
    elif how == "tiles":
        tiles = yield from _iter_tiles(enc, image, xy, sizes_px, geometry, batch_size, cache_name)
        parts.append(tiles.pool(xy, sizes_px))
        yield Progress(_STAGE, n_batches, n_batches, f"{cache_name}: {n}/{n} pooled from tiles")
    else:
        for b in range(n_batches):
            chunk = xy[b * batch_size : (b + 1) * batch_size]
            per_size = [
                enc.embed(read_patches(image, chunk, s, out_px=enc.input_size)) for s in sizes_px
            ]
            parts.append(np.concatenate(per_size, axis=1))
            yield Progress(
                _STAGE, b + 1, n_batches, f"{cache_name}: {min(n, (b + 1) * batch_size)}/{n}"
            )
    feats = np.concatenate(parts, axis=0).astype(np.float32)
    if not np.isfinite(feats).all():
        raise ValueError(f"Expected finite features from `{enc.id}`, found NaN or inf values.")
    meta = {
        "encoder": enc.name,
        "encoder_id": enc.id,
        "weights_sha256": enc.weights_sha256,
        "patch_sizes_spot": sizes_spot,
        "patch_sizes_px": [float(s) for s in sizes_px],
        "patch_sizes_um": [float(s * geometry.um_per_px) for s in sizes_px],
        "dim": int(feats.shape[1]),
        "dim_per_size": int(enc.dim),
        "positions_digest": digest,
    }
    if how != "maps":
        meta["pooling"] = how
    meta.update(tiling)
    if cache:
        store(sdata, name, key, xy, feats, meta)
    return FeatureSet(feats, key, meta, from_cache=False)


def _iter_tiles(
    enc: Any,
    image: Any,
    xy: np.ndarray,
    sizes_px: Sequence[float],
    geometry: _Geometry,
    batch_size: int,
    cache_name: str,
) -> Generator[Progress, None, Any]:
    """Embed the tissue tiles under the positions' largest patches (those not embedded yet)."""
    from .vit_tiles import iter_fill_tiles, token_tiles

    tiles = token_tiles(enc, image, float(geometry.um_per_px))
    keys = tiles.tiles_under(xy, max(sizes_px))
    todo = len(tiles.missing(keys))
    msg = f"{cache_name}: {todo} of {len(keys)} tiles to embed"
    yield from iter_fill_tiles(enc, tiles, keys, batch_size=batch_size, message=msg)
    return tiles


def extract_features(
    sdata: SpatialData,
    positions_px: np.ndarray,
    *,
    image_key: str,
    geometry: _Geometry,
    encoder: str | Encoder = "histology",
    weights: str | None = None,
    patch_sizes: Sequence[float] | None = None,
    patch_unit: Literal["spot", "um", "px"] = "spot",
    batch_size: int = 32,
    device: str | None = None,
    bf16: bool = False,
    cache_name: str = "spots",
    cache: bool = True,
    pooling: str = "auto",
) -> FeatureSet:
    """Run :func:`iter_extract_features` to the end (same arguments).

    Examples
    --------
    >>> from napari_histosge.io import load_sample, resolve_keys
    >>> from napari_histosge.geometry import spot_geometry
    >>> sdata = load_sample()
    >>> keys = resolve_keys(sdata)
    >>> geom = spot_geometry(sdata, **keys.__dict__)
    >>> extract_features(sdata, geom.centers_px, image_key=keys.image_key, geometry=geom).key
    'X_histology_v2_p1-2-4'
    """
    return run_generator(
        iter_extract_features(
            sdata,
            positions_px,
            image_key=image_key,
            geometry=geometry,
            encoder=encoder,
            weights=weights,
            patch_sizes=patch_sizes,
            patch_unit=patch_unit,
            batch_size=batch_size,
            device=device,
            bf16=bf16,
            cache_name=cache_name,
            cache=cache,
            pooling=pooling,
        )
    )
