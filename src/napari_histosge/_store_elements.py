"""Crash-safe writes of one element into an existing SpatialData store.

The feature cache and the in-place export write their ``histosge_*`` elements here, one at a
time, never touching the store's other elements. Each element is first written in full under a
hidden folder inside the store, then swapped in:

1. a marker ``.histosge-pending`` is written, then the store's consolidated metadata is
   dropped from its root ``zarr.json`` (readers then list the store from its folders);
2. the staged folder replaces the element's folder in one atomic rename (an exchange with the
   old folder where the platform has one);
3. the consolidated metadata is written again, listing the new element, and the marker removed.

A kill at any point leaves the store readable with the old element or the new one (never a
mix); the next write, or :func:`clean_store_leftovers`, removes the staged copies and restores
the consolidated metadata. Part of :mod:`napari_histosge.store`, which re-exports these.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base.interrupts import deferred_interrupt, fault_point

__all__ = [
    "PENDING_NAME",
    "STORE_LEFTOVER",
    "TWIN_IMAGES",
    "clean_store_leftovers",
    "consolidate_store",
    "write_element_atomic",
    "write_table_atomic",
    "write_sdata",
    "write_text_atomic",
]


def _notice(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


#: Images written with a faster codec beside a twin image whose grid, channels, scales and
#: transformations they share (name -> the twin's name): the maps' standard deviations, kept
#: at 7 mantissa bits, beside the maps. Blosc lz4 with byte shuffle takes about half the CPU
#: time of zarr's default (zstd) on them, for 1.3x the bytes (measured on a whole slide).
TWIN_IMAGES = {"histosge_uncertainty": "histosge_expression"}


def write_sdata(
    sdata: object,
    path: Path | str,
    *,
    twins: Mapping[str, str | Path] | None = None,
    **kwargs: object,
) -> None:
    """``sdata.write(path, **kwargs)`` with tables written unsharded, without anndata's notice.

    anndata 0.12 warns on every table written to zarr v3 unless its ``auto_shard_zarr_v3``
    setting is chosen ("autosharding will be the default in the next minor release"). Tables
    are small: they stay unsharded (anndata's present behaviour, which every spatialdata
    reader opens). A setting the user chose is left as it is.

    ``twins`` maps images of ``sdata`` to their twin: another image of ``sdata`` (by name) or
    the folder of one already written. Such an image is written after the others by
    :func:`_write_twin`, with the twin's metadata and Blosc lz4 (byte shuffle) chunks.
    """
    import contextlib

    import anndata as ad

    images = getattr(sdata, "images", {})
    later = {
        n: t
        for n, t in (twins or {}).items()
        if n in images and (t in images if isinstance(t, str) else Path(t).is_dir())
    }
    if later:
        from spatialdata import SpatialData

        rest = {k: v for k, v in images.items() if k not in later}
        groups = {g: dict(getattr(sdata, g)) for g in ("labels", "points", "shapes", "tables")}
        full, sdata = sdata, SpatialData(images=rest, **groups, attrs=dict(sdata.attrs))
    settings = getattr(ad, "settings", None)
    choose = getattr(settings, "auto_shard_zarr_v3", True) is None and hasattr(settings, "override")
    with settings.override(auto_shard_zarr_v3=False) if choose else contextlib.nullcontext():
        sdata.write(path, **kwargs)  # type: ignore[attr-defined]
    if later:
        root = Path(path)
        for name, twin in later.items():
            folder = root / "images" / twin if isinstance(twin, str) else Path(twin)
            _write_twin(root, name, full.images[name], folder)
        consolidate_store(root)


def _write_twin(root: Path, name: str, element: Any, twin: Path) -> None:
    """Write the image ``element`` as ``images/name`` of ``root`` with the metadata of ``twin``.

    ``twin`` is the folder of a written image with the same shapes at every scale and the same
    channels (checked). Its group metadata (multiscales, channels, transformations) is copied,
    with its name replaced; each scale keeps the element's own chunks, in Blosc lz4 with byte
    shuffle.
    """
    import dask.array as da
    import zarr
    from xarray import DataTree
    from zarr.codecs import BloscCodec

    doc = json.loads((twin / "zarr.json").read_text())
    attrs = doc.get("attributes", {})
    ome = attrs.get("ome", {})
    paths = [d["path"] for m in ome.get("multiscales", []) for d in m.get("datasets", [])]
    if isinstance(element, DataTree):
        scales = sorted(element.children, key=lambda k: int(k.removeprefix("scale")))
        levels = [element[k]["image"].data for k in scales]
        channels = element[scales[0]]["image"].coords["c"].values
    else:
        levels, channels = [element.data], element.coords["c"].values
    labels = [c.get("label") for c in ome.get("omero", {}).get("channels", [])]
    arrays = [json.loads((twin / p / "zarr.json").read_text()) for p in paths]
    found = [tuple(a["shape"]) for a in arrays]
    if [tuple(x.shape) for x in levels] != found or [str(c) for c in channels] != labels:
        raise ValueError(
            f"Expected `{name}` on the grid and channels of `{twin.name}` (shapes {found}, "
            f"{len(labels)} channels), found shapes {[tuple(x.shape) for x in levels]} and "
            f"{len(channels)} channels."
        )
    for m in ome.get("multiscales", []):  # named by the element's path in the store
        if str(m.get("name", "")).endswith(twin.name):
            m["name"] = m["name"][: -len(twin.name)] + name
    group = zarr.open_group(root, mode="a").require_group("images")
    element_group = group.create_group(name, attributes=attrs)
    targets, sources = [], []
    codec = BloscCodec(cname="lz4", clevel=9, shuffle="shuffle")  # 9: a quarter smaller, as fast
    for path, level, meta in zip(paths, levels, arrays, strict=True):
        level = da.asarray(level)
        chunks = tuple(c[0] for c in level.chunks)
        if any(len(set(c[:-1])) > 1 or c[-1] > c[0] for c in level.chunks):
            level = level.rechunk(chunks)  # zarr needs a regular grid
        sources.append(level)
        targets.append(
            element_group.create_array(
                path,
                shape=level.shape,
                chunks=chunks,
                dtype=level.dtype,
                compressors=[codec],
                fill_value=meta.get("fill_value", 0.0),
                dimension_names=meta.get("dimension_names"),
            )
        )
    da.store(sources, targets, lock=False)  # all scales in one pass: each block rendered once


#: Hidden names an interrupted element write leaves at a store's root.
STORE_LEFTOVER = re.compile(r"^\.histosge-((tmp|old)-[0-9a-f]{8}|pending)$")
#: Marker of a swap in progress: the consolidated metadata is to be written again.
PENDING_NAME = ".histosge-pending"
_GROUPS = ("images", "labels", "points", "shapes", "tables")


def _root_meta(root: Path) -> dict | None:
    f = root / "zarr.json"
    if not f.is_file():
        return None
    doc = json.loads(f.read_text())
    return doc if isinstance(doc, dict) else None


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary sibling and a rename."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json_atomic(path: Path, doc: dict) -> None:
    write_text_atomic(path, json.dumps(doc, indent=2))


def _listed(doc: dict) -> dict | None:
    cm = doc.get("consolidated_metadata")
    return cm.get("metadata") if isinstance(cm, dict) else None


def consolidate_store(root: Path) -> None:
    """Write the consolidated metadata of the whole store ``root`` again (spatialdata's way)."""
    from spatialdata._io.io_zarr import _write_consolidated_metadata

    _write_consolidated_metadata(root)


def clean_store_leftovers(root: str | Path, *, element_prefix: str = "histosge_features_") -> int:
    """Remove what an interrupted element write left in the store ``root``; restore its metadata.

    That is hidden ``.histosge-tmp-*``/``.histosge-old-*`` folders at the store's root,
    ``tables/<element_prefix>*`` folders the store's metadata does not list (an element caught
    half-written by an earlier version of this module) and, when a swap was interrupted
    (``.histosge-pending``), the consolidated metadata, written again from the folders. Warns
    once; returns how many leftovers were removed. Only this package's own names are touched.

    Examples
    --------
    >>> clean_store_leftovers("slide.zarr")  # doctest: +SKIP
    0
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    found = [p for p in root.iterdir() if STORE_LEFTOVER.match(p.name)]
    pending = root / PENDING_NAME
    victims = [p for p in found if p != pending]
    doc = _root_meta(root)
    listed = _listed(doc) if doc is not None else None
    tables = root / "tables"
    if listed is not None and tables.is_dir():
        victims += [
            p
            for p in tables.iterdir()
            if p.is_dir() and p.name.startswith(element_prefix) and f"tables/{p.name}" not in listed
        ]
    removed = 0
    for p in victims:
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed += 1
        except OSError:
            continue
    if pending.exists():
        with deferred_interrupt():
            consolidate_store(root)
            pending.unlink()
    if removed:
        what = "copy" if removed == 1 else "copies"
        _notice(f"removed {removed} partial {what} left in `{root}` by an interrupted write.")
    return removed


def _stage(element_type: str, name: str, element: object, stage: Path, root: Path) -> dict:
    """Write ``element`` alone into the new store ``stage``; return its consolidated entries.

    An image of :data:`TWIN_IMAGES` is written beside its twin in ``root`` when that is there.
    """
    from spatialdata import SpatialData

    twins = None
    if element_type == "images" and name in TWIN_IMAGES:
        twins = {name: root / "images" / TWIN_IMAGES[name]}
    with warnings.catch_warnings():  # a table staged alone annotates an element not beside it
        warnings.filterwarnings("ignore", message=".*which is not present in the SpatialData")
        sdata = SpatialData(**{element_type: {name: element}})
        write_sdata(sdata, stage, twins=twins, overwrite=False)
    staged = _listed(_root_meta(stage) or {}) or {}
    prefix = f"{element_type}/{name}"
    return {
        k: v for k, v in staged.items() if k in (prefix, element_type) or k.startswith(prefix + "/")
    }


def write_element_atomic(
    root: str | Path, element_type: str, name: str, element: object | None
) -> None:
    """Write (or, with ``element=None``, delete) one ``histosge_*`` element of the store ``root``.

    Only that element's folder and the store's root metadata change; a kill at any moment leaves
    a store that ``spatialdata.read_zarr`` opens, with the old element or the new one (see the
    module's description). ``OSError``: the store cannot be written (nothing changed);
    ``ValueError``: not a zarr v3 SpatialData store, or not an element name of this package.

    Parameters
    ----------
    root
        The store.
    element_type
        ``"images"``, ``"labels"``, ``"points"``, ``"shapes"`` or ``"tables"``.
    name
        The element's name; it must start with ``histosge_`` (the user's elements are never
        replaced).
    element
        A parsed SpatialData element, or ``None`` to remove the element.

    Examples
    --------
    >>> write_element_atomic("s.zarr", "tables", "histosge_predictions", t)  # doctest: +SKIP
    """
    root = Path(root)
    if element_type not in _GROUPS:
        raise ValueError(f"Expected an element type in {list(_GROUPS)}, found `{element_type}`.")
    if not name.startswith("histosge_"):
        raise ValueError(
            f"Expected a `histosge_*` element name, found `{name}`; the store's own elements "
            "are never replaced."
        )
    if _root_meta(root) is None:
        raise ValueError(f"Expected a zarr v3 SpatialData store at `{root}`, found another format.")
    clean_store_leftovers(root)
    token = uuid.uuid4().hex[:8]
    stage = root / f".histosge-tmp-{token}"
    entries: dict = {}
    try:
        if element is None:
            stage.mkdir()
        else:
            entries = _stage(element_type, name, element, stage, root)
        fault_point("element-staged")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    prefix = f"{element_type}/{name}"
    group, target, new = (
        root / element_type,
        root / element_type / name,
        stage / element_type / name,
    )
    before = _root_meta(root) or {}
    consolidated = _listed(before) is not None
    with deferred_interrupt():
        if consolidated:
            (root / PENDING_NAME).write_text(token)
            _write_json_atomic(
                root / "zarr.json",
                {k: v for k, v in before.items() if k != "consolidated_metadata"},
            )
        fault_point("element-unlisted")
        if element is not None and not (group / "zarr.json").is_file():
            group.mkdir(exist_ok=True)
            shutil.copyfile(stage / element_type / "zarr.json", group / "zarr.json")
        if element is None:
            if target.exists():
                os.replace(target, stage / name)
        elif not target.exists():
            os.replace(new, target)
        elif not _exchange(new, target):
            os.replace(target, stage / name)
            fault_point("element-moved-aside")
            os.replace(new, target)
        fault_point("element-moved-in")
        if consolidated:
            _relist(root, before, prefix, entries)
            fault_point("element-listed")
            (root / PENDING_NAME).unlink()
    shutil.rmtree(stage, ignore_errors=True)


def _relist(root: Path, doc: dict, prefix: str, entries: dict) -> None:
    """Write ``doc`` (the root metadata before the swap) back, with ``entries`` for ``prefix``."""
    listed = _listed(doc) or {}
    kept = {k: v for k, v in listed.items() if k != prefix and not k.startswith(prefix + "/")}
    for k, v in entries.items():
        kept.setdefault(k, v)
    # zarr rebuilds the tree level by level and needs the children of a node together.
    order = sorted(kept, key=lambda k: (k.count("/"), k.rsplit("/", 1)[0] if "/" in k else ""))
    doc["consolidated_metadata"]["metadata"] = {k: kept[k] for k in order}
    _write_json_atomic(root / "zarr.json", doc)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); ``False`` where unsupported."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    res = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return res == 0


def write_table_atomic(root: str | Path, name: str, table: object) -> None:
    """Write the table ``name`` into the store ``root`` with :func:`write_element_atomic`.

    Examples
    --------
    >>> write_table_atomic("slide.zarr", "histosge_features_spots", adata)  # doctest: +SKIP
    """
    write_element_atomic(root, "tables", name, table)
