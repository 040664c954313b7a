"""The nuclei cache in the store: labels and their table, keyed by method, parameters and image.

Segmenting a slide's nuclei costs about a minute per 100 mm² of tissue; like the features
(:mod:`napari_histosge.features.cache`), the nuclei are kept in the input store so that a
second ``histosge run --cells``, or the dock's Cells section on a slide segmented before,
reads them back. Each cached segmentation is two elements of the store, named like the
feature cache so that the store's rules for caches apply (never an output, ignored by the
overwrite checks), with the first characters of its key (:func:`cache_names`):

- ``histosge_features_nuclei_<key>``: the labels, the same multiscale element placed on the
  H&E as ``histosge_nuclei``;
- ``histosge_features_nuclei_<key>_table``: a table annotating them, one row per nucleus
  (centroid, area, shape, haematoxylin) with the segmentation's record and its key in ``uns``.

A store keeps the ``MAX_ENTRIES`` segmentations used last (the spots' area for
``--cell-features``, the map's grid at one or two resolutions); the one unused longest is
removed when a new one is written.

The key is a digest of the method and every parameter that changes the nuclei (not the number
of worker processes), of the image (name, pyramid shapes, µm per pixel and the pixels of its
coarsest level), of the area segmented and of the nuclei kept (the superpixel grid's
positions). Writes go through :func:`~napari_histosge.store.write_element_atomic`: the table
is removed before the labels change and written after them, so an interrupted write leaves a miss,
never labels that disagree with their table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Generator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from napari_histosge.base.progress import Progress

from .segment import Nuclei, NucleiOptions, iter_segment_nuclei

__all__ = [
    "MAX_ENTRIES",
    "NUCLEI_CACHE_KEY",
    "cache_names",
    "image_digest",
    "iter_cached_nuclei",
    "labels_element",
    "lookup_nuclei",
    "nuclei_key",
    "store_nuclei",
]

#: Start of the names of the cached nuclei's elements (labels, and their table).
NUCLEI_CACHE_KEY = "histosge_features_nuclei"
#: Segmentations a store keeps (the ones written last).
MAX_ENTRIES = 3
#: Characters of the key in the elements' names.
_NAME_KEY = 12
_UNS = "histosge_nuclei"
_COLUMNS = ("x", "y", "area_um2", "eccentricity", "ellipse_fill", "haematoxylin")
#: Most values of the coarsest level read into the image's digest (a strided sample beyond).
_DIGEST_VALUES = 4 * 1024**2


def image_digest(image: Any) -> str:
    """Checksum of an image element: its pyramid's shapes and its coarsest level's pixels.

    Examples
    --------
    >>> import xarray as xr
    >>> a = xr.DataArray(np.zeros((3, 8, 8), np.uint8), dims=("c", "y", "x"))
    >>> b = a.copy(data=np.ones((3, 8, 8), np.uint8))
    >>> image_digest(a) == image_digest(a.copy()), image_digest(a) == image_digest(b)
    (True, False)
    """
    from napari_histosge.images import image_levels

    levels = image_levels(image)
    h = hashlib.sha256(json.dumps([list(map(int, lv.shape)) for lv in levels]).encode())
    coarse = levels[-1].data
    stride = max(1, int(np.ceil(np.sqrt(coarse.size / _DIGEST_VALUES))))
    h.update(np.ascontiguousarray(np.asarray(coarse[..., ::stride, ::stride])).tobytes())
    return h.hexdigest()[:16]


def nuclei_key(
    image: Any,
    image_key: str,
    um_per_px: float,
    options: NucleiOptions,
    extent: tuple[float, ...] | None,
    kept: str | None,
) -> tuple[str, dict[str, Any]]:
    """Return the cache key of a segmentation and what it was computed from.

    ``kept`` names the rule choosing the nuclei kept (for example a digest of the superpixel
    grid); ``None``: all nuclei of ``extent``.

    Examples
    --------
    >>> import xarray as xr
    >>> im = xr.DataArray(np.zeros((3, 8, 8), np.uint8), dims=("c", "y", "x"))
    >>> k1, _ = nuclei_key(im, "he", 0.5, NucleiOptions(), None, None)
    >>> k2, _ = nuclei_key(im, "he", 0.5, NucleiOptions(sigma_um=1.0), None, None)
    >>> k3, _ = nuclei_key(im, "he", 0.5, NucleiOptions(workers=2), None, None)
    >>> k1 == k2, k1 == k3
    (False, True)
    """
    params = {k: v for k, v in asdict(options).items() if k != "workers"}
    provenance = {
        "options": params,
        "image_key": str(image_key),
        "image_digest": image_digest(image),
        "um_per_px": round(float(um_per_px), 9),
        "extent_px": None if extent is None else [round(float(v), 2) for v in extent],
        "kept": kept,
    }
    text = json.dumps(provenance, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16], provenance


def labels_element(nuc: Nuclei, image_tf: dict[str, Any]) -> Any:
    """Parse the nuclei's labels into a multiscale labels element placed on the H&E."""
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import Scale, Sequence, Translation

    f = float(nuc.factor)
    shift = Translation(list(nuc.offset_px), axes=("x", "y"))
    tf = {cs: Sequence([Scale([f, f], axes=("x", "y")), shift, t]) for cs, t in image_tf.items()}
    factors = []  # always multiscale: at least one level, more down to about 512 px
    side = max(nuc.labels.shape)
    while side >= 2 and len(factors) < 5 and (not factors or side >= 512):
        factors.append(2)
        side //= 2
    extra = {"scale_factors": factors} if factors else {}
    return Labels2DModel.parse(nuc.labels, dims=("y", "x"), transformations=tf, **extra)


def _root(sdata: Any) -> Path | None:
    path = getattr(sdata, "path", None)
    if path is None or not sdata.is_backed():
        return None
    root = Path(path)
    return root if root.is_dir() else None


def cache_names(key: str) -> tuple[str, str]:
    """Names of the labels and the table of the segmentation cached under ``key``.

    Examples
    --------
    >>> cache_names("0123456789abcdef")
    ('histosge_features_nuclei_0123456789ab', 'histosge_features_nuclei_0123456789ab_table')
    """
    labels = f"{NUCLEI_CACHE_KEY}_{key[:_NAME_KEY]}"
    return labels, _table_name(labels)


def _table_name(labels: str) -> str:
    """Name of the table annotating the cached labels ``labels``."""
    return f"{labels}_table"


def _entries(root: Path) -> list[str]:
    """Names of the cached segmentations' labels in ``root``, least recently used first."""
    folder = root / "labels"
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir() and (p.name == NUCLEI_CACHE_KEY or p.name.startswith(NUCLEI_CACHE_KEY + "_"))
    ]
    return [p.name for p in sorted(found, key=lambda p: (p.stat().st_mtime, p.name))]


def _remove_entry(sdata: Any, root: Path, labels: str) -> None:
    """Remove one cached segmentation: its table first, then its labels."""
    from napari_histosge.store import write_element_atomic

    table = _table_name(labels)
    if (root / "tables" / table).exists():
        write_element_atomic(root, "tables", table, None)
    sdata.tables.pop(table, None)
    if (root / "labels" / labels).exists():
        write_element_atomic(root, "labels", labels, None)
    sdata.labels.pop(labels, None)


def lookup_nuclei(sdata: Any, key: str) -> Nuclei | None:
    """Return the nuclei cached in ``sdata`` under ``key``, or ``None`` (a miss).

    The labels stay on disk (a dask array of the store's element); the table is in memory.
    """
    import pandas as pd

    labels_name, table_name = cache_names(key)
    table = sdata.tables.get(table_name)
    labels = sdata.labels.get(labels_name)
    if table is None or labels is None:
        return None
    try:
        meta = json.loads(table.uns[_UNS]["meta_json"])
    except (KeyError, TypeError, ValueError):
        return None
    if meta.get("cache_key") != key:
        return None
    data = labels["scale0"]["image"].data if getattr(labels, "children", None) else labels.data
    if list(data.shape) != list(meta.get("labels_shape", [])) or table.n_obs != meta["n_nuclei"]:
        return None
    obs = table.obs
    if not set(_COLUMNS) <= set(obs.columns):
        return None
    frame = pd.DataFrame({c: obs[c].to_numpy(dtype=np.float64) for c in _COLUMNS})
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="nucleus_id")
    offset = (int(meta["extent_px"][0]), int(meta["extent_px"][1]))
    root = _root(sdata)
    if root is not None:  # last used: the entries removed first are those unused longest
        with contextlib.suppress(OSError):
            os.utime(root / "labels" / labels_name)
    return Nuclei(
        data.astype(np.int32, copy=False),
        int(meta["level_factor"]),
        offset,
        float(meta["um_per_px"]),
        frame,
        {**meta, "from_cache": True},
    )


def _table(nuc: Nuclei, meta: dict[str, Any], region: str) -> Any:
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    n = nuc.n
    obs = pd.DataFrame(
        {
            "region": pd.Categorical([region] * n, categories=[region]),
            "nucleus_id": np.arange(1, n + 1),
            **{c: nuc.table[c].to_numpy(dtype=np.float64) for c in _COLUMNS},
        },
        index=pd.Index([str(i) for i in range(1, n + 1)]),
    )
    adata = ad.AnnData(obs=obs)
    adata.uns[_UNS] = {"meta_json": json.dumps(meta, sort_keys=True)}
    return TableModel.parse(adata, region=region, region_key="region", instance_key="nucleus_id")


def store_nuclei(
    sdata: Any, nuc: Nuclei, key: str, provenance: dict[str, Any], image_tf: dict[str, Any]
) -> Nuclei | None:
    """Write ``nuc`` into the store ``sdata`` was read from; return them read back from it.

    ``None`` when the slide is not read from a store or no nucleus was found (the nuclei are
    not cached), or with a warning when the store cannot be written (read-only, another
    format): the cache can always be computed again. The caller may close ``nuc`` once the
    returned nuclei replace it. The oldest segmentations beyond ``MAX_ENTRIES`` are removed.
    """
    import spatialdata as sd

    from napari_histosge.store import write_element_atomic

    root = _root(sdata)
    if root is None or nuc.n == 0:  # a table annotating no label is not a valid element
        return None
    meta = {
        **{k: v for k, v in nuc.meta.items() if k != "from_cache"},
        "cache_key": key,
        "provenance": provenance,
        "labels_shape": [int(s) for s in nuc.labels.shape],
    }
    labels_name, table_name = cache_names(key)
    reason = None
    if not os.access(root, os.W_OK):
        reason = "the store is read-only"
    else:
        try:
            _remove_entry(sdata, root, labels_name)
            older = _entries(root)
            for old in older[: max(0, len(older) - (MAX_ENTRIES - 1))]:  # room for this one
                _remove_entry(sdata, root, old)
            write_element_atomic(root, "labels", labels_name, labels_element(nuc, image_tf))
            table = _table(nuc, meta, labels_name)
            write_element_atomic(root, "tables", table_name, table)
        except (OSError, ValueError) as err:
            reason = getattr(err, "strerror", None) or str(err)
    if reason is not None:
        warnings.warn(
            f"nuclei not cached in `{root}` ({reason}); they will be segmented again next time.",
            UserWarning,
            stacklevel=3,
        )
        return None
    with warnings.catch_warnings():  # the labels read alone: other elements are not needed
        warnings.simplefilter("ignore", UserWarning)
        back = sd.read_zarr(root, selection=("labels",)).labels[labels_name]
    sdata.labels[labels_name] = back
    sdata.tables[table_name] = table
    return lookup_nuclei(sdata, key)


def iter_cached_nuclei(
    slide: Any,
    extent: tuple[float, float, float, float],
    *,
    keep: Callable[[np.ndarray], np.ndarray] | None = None,
    kept: str | None = None,
    options: NucleiOptions | None = None,
    cache: bool = True,
) -> Generator[Progress, None, Nuclei]:
    """Return the nuclei of an area of a slide: from the store's cache, or segmented.

    Parameters
    ----------
    slide
        A :class:`~napari_histosge.workflows.pipeline.Slide`.
    extent
        ``(x0, y0, x1, y1)`` in scale-0 pixels.
    keep
        Which nuclei to keep (see :func:`.segment.iter_segment_nuclei`).
    kept
        Name of the rule ``keep`` applies, part of the cache key (``None`` with no ``keep``).
    options
        Segmentation settings.
    cache
        Read the store's cache, and write it when segmented (``meta["from_cache"]`` says
        which). Close the nuclei once used.

    Examples
    --------
    >>> nuc = run_generator(iter_cached_nuclei(slide, (0, 0, 2000, 2000)))  # doctest: +SKIP
    """
    from spatialdata.transformations import get_transformation

    if keep is not None and kept is None:
        raise ValueError("Expected `kept` naming the nuclei `keep` keeps, found none.")
    opts = options or NucleiOptions()
    image_key = slide.keys.image_key
    image = slide.sdata.images[image_key]
    um = float(slide.geometry.um_per_px)
    key, provenance = nuclei_key(image, image_key, um, opts, extent, kept)
    if cache:
        hit = lookup_nuclei(slide.sdata, key)
        if hit is not None:
            yield Progress("nuclei", 1, 1, f"{hit.n} nuclei read from the store's cache")
            return hit
    nuc = yield from iter_segment_nuclei(image, um, extent=extent, keep=keep, options=opts)
    nuc.meta["from_cache"] = False
    if not cache:
        return nuc
    try:
        image_tf = dict(get_transformation(image, get_all=True))
        stored = store_nuclei(slide.sdata, nuc, key, provenance, image_tf)
    except BaseException:
        nuc.close()
        raise
    if stored is None:
        return nuc
    nuc.close()
    stored.meta["from_cache"] = False
    return stored
