"""Crash-safe writes of one element into an existing SpatialData store (the feature cache).

Part of :mod:`napari_histosge.store`, which re-exports :func:`write_table_atomic` and
:func:`clean_store_leftovers`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path

from ._interrupt import deferred_interrupt, fault_point

__all__ = ["STORE_LEFTOVER", "clean_store_leftovers", "write_table_atomic"]


def _notice(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


STORE_LEFTOVER = re.compile(r"^\.histosge-(tmp|old)-[0-9a-f]{8}$")


def _root_meta(root: Path) -> dict | None:
    f = root / "zarr.json"
    if not f.is_file():
        return None
    doc = json.loads(f.read_text())
    return doc if isinstance(doc, dict) else None


def _write_json_atomic(path: Path, doc: dict) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


def _listed(doc: dict) -> dict | None:
    cm = doc.get("consolidated_metadata")
    return cm.get("metadata") if isinstance(cm, dict) else None


def _relist(root: Path, prefix: str, entries: dict | None) -> None:
    """Drop the consolidated entries under ``prefix`` and add ``entries`` (atomic rewrite)."""
    doc = _root_meta(root)
    listed = _listed(doc) if doc is not None else None
    if doc is None or listed is None:
        return
    kept = {k: v for k, v in listed.items() if k != prefix and not k.startswith(prefix + "/")}
    for k, v in (entries or {}).items():
        kept.setdefault(k, v)
    doc["consolidated_metadata"]["metadata"] = kept
    _write_json_atomic(root / "zarr.json", doc)


def clean_store_leftovers(root: str | Path, *, element_prefix: str = "histosge_features_") -> int:
    """Remove what an interrupted :func:`write_table_atomic` left in the store ``root``.

    That is hidden ``.histosge-tmp-*``/``.histosge-old-*`` folders at the store's root and
    ``tables/<element_prefix>*`` folders the store's metadata does not list (an element caught
    half-written). Prints one notice; returns how many were removed. Only this package's own
    names are touched.

    Examples
    --------
    >>> clean_store_leftovers("slide.zarr")  # doctest: +SKIP
    0
    """
    root = Path(root)
    victims = [p for p in root.iterdir() if STORE_LEFTOVER.match(p.name)] if root.is_dir() else []
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
            shutil.rmtree(p)
            removed += 1
        except OSError:
            continue
    if removed:
        _notice(f"removed {removed} partial cache copies left in `{root}` by an interrupted run.")
    return removed


def write_table_atomic(root: str | Path, name: str, table: object) -> None:
    """Write the table ``name`` into the existing zarr v3 store ``root``; a kill is harmless.

    Staged in full under a hidden name inside the store, then swapped in: the metadata stops
    listing ``name``, the old folder moves aside, the new one moves in, the metadata lists it
    again. A kill anywhere leaves the store readable with the old table or none. ``OSError``:
    the store cannot be written (nothing changed); ``ValueError``: not a zarr v3 store.

    Examples
    --------
    >>> write_table_atomic("slide.zarr", "histosge_features_spots", adata)  # doctest: +SKIP
    """
    from spatialdata import SpatialData

    root = Path(root)
    if _root_meta(root) is None:
        raise ValueError(f"Expected a zarr v3 store at `{root}`, found another format.")
    clean_store_leftovers(root)
    token = uuid.uuid4().hex[:8]
    stage = root / f".histosge-tmp-{token}"
    try:
        SpatialData(tables={name: table}).write(stage, overwrite=False)  # type: ignore[dict-item]
        fault_point("element-staged")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    staged = _listed(_root_meta(stage) or {}) or {}
    prefix = f"tables/{name}"
    entries = {k: v for k, v in staged.items() if k == prefix or k.startswith(prefix + "/")}
    target = root / "tables" / name
    old = root / f".histosge-old-{token}"
    with deferred_interrupt():
        _relist(root, prefix, None)
        fault_point("element-unlisted")
        if not (root / "tables" / "zarr.json").is_file():
            (root / "tables").mkdir(exist_ok=True)
            shutil.copyfile(stage / "tables" / "zarr.json", root / "tables" / "zarr.json")
            entries.setdefault("tables", staged.get("tables"))
        if target.exists():
            os.replace(target, old)
        fault_point("element-moved-aside")
        os.replace(stage / "tables" / name, target)
        fault_point("element-moved-in")
        _relist(root, prefix, entries)
        fault_point("element-listed")
    shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
