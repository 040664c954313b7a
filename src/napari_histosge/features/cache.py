"""The feature cache in the store: one table per position set, keyed by encoder and patch sizes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["cache_element_name", "cache_key", "lookup", "positions_digest", "store"]


_UNS_KEY = "histosge_features"


def cache_element_name(cache_name: str) -> str:
    """Name of the table element caching the features of a position set.

    Examples
    --------
    >>> cache_element_name("spots")
    'histosge_features_spots'
    """
    return f"histosge_features_{cache_name}"


def cache_key(encoder_id: str, sizes_spot: Sequence[float]) -> str:
    """``obsm`` key of the features of an encoder at the given patch sizes (spot diameters).

    Examples
    --------
    >>> cache_key("uni@0123456789abcdef", [2.0])
    'X_uni_0123456789ab_p2'
    >>> cache_key("histology@v2", [1, 2, 4])
    'X_histology_v2_p1-2-4'
    """
    name, _, version = encoder_id.partition("@")
    slug = f"{name}_{version[:12]}" if version else name
    slug = slug.replace(":", "-").replace("/", "-")
    sizes = "-".join(f"{float(s):g}" for s in sizes_spot).replace(".", "p")
    return f"X_{slug}_p{sizes}"


def positions_digest(xy: np.ndarray) -> str:
    """Checksum of positions rounded to 0.01 px: the cache is valid for these positions only."""
    return hashlib.sha256(np.round(np.asarray(xy, dtype=np.float64), 2).tobytes()).hexdigest()[:16]


def lookup(
    sdata: SpatialData,
    name: str,
    key: str,
    digest: str,
    sizes_px: Sequence[float],
    *,
    require: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Return cached features and provenance for ``key`` at these positions, or ``None``.

    ``require`` lists provenance the features depend on beyond the key (for example the
    tiling of ViT token features, :func:`~.vit_tiles.tiles_provenance`): an entry that lacks
    one of these fields, as entries written before it was recorded do, or holds another value
    is a miss, so that its features are computed again.
    """
    root = Path(sdata.path) if sdata.is_backed() and sdata.path is not None else None
    if root is not None and root.is_dir() and os.access(root, os.W_OK):
        from napari_histosge.store import clean_store_leftovers

        clean_store_leftovers(root)  # what an interrupted cache write left, with a notice
    if name not in sdata.tables:
        return None
    table = sdata.tables[name]
    if key not in table.obsm or table.uns.get("positions_digest") != digest:
        return None
    raw = table.uns.get(_UNS_KEY, {}).get(key)
    if raw is None:
        return None
    meta = json.loads(raw) if isinstance(raw, str) else dict(raw)
    if meta.get("positions_digest") != digest or not np.allclose(
        meta.get("patch_sizes_px", []), list(sizes_px), rtol=1e-4
    ):
        return None
    if not all(k in meta and _same(meta[k], v) for k, v in (require or {}).items()):
        return None
    feats = np.asarray(table.obsm[key], dtype=np.float32)
    if feats.shape != (table.n_obs, int(meta.get("dim", -1))) or not np.isfinite(feats).all():
        return None
    return feats, meta


def _same(found: Any, wanted: Any) -> bool:
    """Provenance values equal, floats to a relative 1e-9 (they went through JSON)."""
    if isinstance(wanted, float) and isinstance(found, int | float):
        return bool(np.isclose(float(found), wanted, rtol=1e-9, atol=0.0))
    return bool(found == wanted)


def store(
    sdata: SpatialData, name: str, key: str, xy: np.ndarray, feats: np.ndarray, meta: dict[str, Any]
) -> None:
    """Write features into the cache table ``name`` (in memory, and on disk when backed)."""
    import anndata as ad
    import pandas as pd

    digest = meta["positions_digest"]
    old = sdata.tables.get(name)
    if old is not None and old.uns.get("positions_digest") == digest and old.n_obs == len(xy):
        table = old.copy()
    else:
        table = ad.AnnData(
            obs=pd.DataFrame(index=pd.Index([f"{name}_{i}" for i in range(len(xy))])),
        )
        table.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
        table.uns["positions_digest"] = digest
    entries = {str(k): str(v) for k, v in dict(table.uns.get(_UNS_KEY, {})).items()}
    entries[key] = json.dumps(meta, sort_keys=True)
    table.obsm[key] = np.asarray(feats, dtype=np.float32)
    table.uns[_UNS_KEY] = entries
    sdata.tables[name] = table
    if sdata.is_backed() and sdata.path is not None and sdata.path.exists():
        write_cache_table(Path(sdata.path), name, table)


def write_cache_table(root: Path, name: str, table: Any) -> bool:
    """Write a cache table into the store ``root`` crash-safely; warn and skip when impossible.

    The cache can always be recomputed, so a read-only store, an unsupported store format or a
    failed write only costs a warning (the store is left as it was).
    """
    import warnings

    from napari_histosge.store import write_table_atomic

    tables = root / "tables"
    read_only = not os.access(root, os.W_OK) or (tables.exists() and not os.access(tables, os.W_OK))
    reason = "the store is read-only" if read_only else None
    if reason is None:
        try:
            write_table_atomic(root, name, table)
            return True
        except (OSError, ValueError) as err:
            reason = getattr(err, "strerror", None) or str(err)
    warnings.warn(
        f"features not cached in `{root}` ({reason}); they will be computed again next time "
        "(pass --no-cache to skip the cache).",
        UserWarning,
        stacklevel=3,
    )
    return False
