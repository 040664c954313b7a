"""Names of the elements this package writes, the overwrite rules, and atomic writes.

Every folder this package writes (exported stores, converted stores, checkpoints) goes through
:func:`write_folder_atomic`: it is written to a hidden temporary sibling, marked as a histosge
output and moved into place only when complete, so a failure or an interrupt leaves whatever
was at the target untouched. :func:`check_target` is the one rule deciding whether a path may
be written or replaced; elements written into an existing store (the feature cache, an in-place
export) go through :func:`write_element_atomic` (see :mod:`napari_histosge._store_elements`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ._store_elements import (
    STORE_LEFTOVER,
    _exchange,
    clean_store_leftovers,
    write_element_atomic,
    write_sdata,
    write_table_atomic,
)
from .base.interrupts import deferred_interrupt, fault_point

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = [
    "CELLS_KEY",
    "DOMAINS_KEY",
    "DOMAIN_GENES_KEY",
    "ELEMENT_KINDS",
    "EXPRESSION_KEY",
    "MARKER_NAME",
    "NUCLEI_KEY",
    "OUTPUT_KEYS",
    "POSITIONS_KEY",
    "PREDICTIONS_KEY",
    "SLIDE_META_KEY",
    "UNCERTAINTY_KEY",
    "check_target",
    "clean_store_leftovers",
    "is_histosge_output",
    "write_atomic",
    "write_element_atomic",
    "write_folder_atomic",
    "write_sdata",
    "write_table_atomic",
]

#: ``uns`` key of the table holding the slide's provenance (technology, µm per pixel, ...).
SLIDE_META_KEY = "histosge_slide"
#: The gene maps (image element, one channel per gene).
EXPRESSION_KEY = "histosge_expression"
#: The super-resolution positions (circles element).
POSITIONS_KEY = "histosge_positions"
#: The predictions at the spots and positions (table annotating ``POSITIONS_KEY``).
PREDICTIONS_KEY = "histosge_predictions"
#: Standard deviation of the gene maps (image element, same channels and placement).
UNCERTAINTY_KEY = "histosge_uncertainty"
#: Tissue domains of the super-resolved expression (labels element on the map's grid).
DOMAINS_KEY = "histosge_domains"
#: One row per domain: mean expression, size and top genes (table annotating ``DOMAINS_KEY``).
DOMAIN_GENES_KEY = "histosge_domain_genes"
#: Nuclei segmented on the H&E (labels element).
NUCLEI_KEY = "histosge_nuclei"
#: Expression per cell (table annotating ``NUCLEI_KEY``).
CELLS_KEY = "histosge_cells"
#: Every element an export may write, by SpatialData element kind. The three first are
#: always written; the others when asked for.
ELEMENT_KINDS = {
    EXPRESSION_KEY: "images",
    POSITIONS_KEY: "shapes",
    PREDICTIONS_KEY: "tables",
    UNCERTAINTY_KEY: "images",
    DOMAINS_KEY: "labels",
    DOMAIN_GENES_KEY: "tables",
    NUCLEI_KEY: "labels",
    CELLS_KEY: "tables",
}
#: The elements every export writes.
OUTPUT_KEYS = (EXPRESSION_KEY, POSITIONS_KEY, PREDICTIONS_KEY)
#: The file marking a folder written by this package (stores and checkpoints).
MARKER_NAME = ".histosge-output.json"

_CHECKPOINT_FILES = {"weights.safetensors", "model.json", "config.yaml", MARKER_NAME}


def _sibling_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-[0-9a-f]{{8}}$")


def _notice(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def recover_siblings(out: Path) -> None:
    """Clean the hidden ``.NAME.tmp-*``/``.NAME.old-*`` siblings an interrupted write left.

    An ``.old-*`` sibling with nothing at ``out`` is the previous output, caught between the two
    renames of a swap: it is moved back. Only names of this package's own pattern are touched.
    """
    parent = out.parent
    if not parent.is_dir():
        return
    pattern = _sibling_pattern(out.name)
    stale = sorted(p for p in parent.iterdir() if pattern.match(p.name))
    if not stale:
        return
    olds = [p for p in stale if p.name.split(".")[-1].startswith("old-")]
    try:
        if not out.exists() and len(olds) == 1:
            os.replace(olds[0], out)
            stale.remove(olds[0])
            _notice(f"restored `{out}` from a write that was interrupted before it finished.")
        for p in stale:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        if stale:
            _notice(
                f"removed {len(stale)} leftover temporary copies of `{out.name}` in `{parent}`."
            )
    except OSError:
        return


def is_histosge_output(path: str | Path) -> bool:
    """Whether ``path`` is a folder this package wrote (it holds the marker file).

    Checkpoint folders saved before the marker existed (only weights, ``model.json`` and
    ``config.yaml``) count as well.

    Examples
    --------
    >>> is_histosge_output("/nonexistent")
    False
    """
    p = Path(path)
    if not p.is_dir() or p.is_symlink():
        return False
    if (p / MARKER_NAME).is_file():
        return True
    names = {c.name for c in p.iterdir()}
    if names and names <= _CHECKPOINT_FILES and "model.json" in names:
        try:
            return str(json.loads((p / "model.json").read_text()).get("format", "")).startswith(
                "napari-histosge-checkpoint/"
            )
        except (OSError, ValueError, AttributeError):
            return False
    return False


def is_spatialdata_store(path: str | Path) -> bool:
    """Whether ``path`` is a SpatialData zarr store (root group with ``spatialdata_attrs``)."""
    p = Path(path)
    for meta, key in (("zarr.json", "attributes"), (".zattrs", None)):
        f = p / meta
        if f.is_file():
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError):
                return False
            attrs = doc.get(key, {}) if key else doc
            return isinstance(attrs, dict) and "spatialdata_attrs" in attrs
    return False


def _writable_parent(p: Path) -> Path | None:
    """Return the nearest existing ancestor of ``p`` unless it is a writable folder."""
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK):
        return anc
    return None


_STORE_ROOT = {"zarr.json", ".zattrs", ".zgroup", ".zmetadata", MARKER_NAME}
_ELEMENT_GROUPS = ("images", "labels", "points", "shapes", "tables")


def foreign_entries(root: str | Path, loaded: Iterable[str] | None = None) -> list[str]:
    """Entries of the store ``root`` that a rewrite from its elements would lose.

    Files besides the store's metadata and element groups and, given ``loaded`` (paths like
    ``"tables/table"``), elements on disk not loaded; hidden names and caches do not count.

    Examples
    --------
    >>> foreign_entries("slide.zarr")  # doctest: +SKIP
    []
    """
    root = Path(root)
    out = []
    for child in sorted(root.iterdir()):
        if child.name in _STORE_ROOT or STORE_LEFTOVER.match(child.name):
            continue
        if child.name not in _ELEMENT_GROUPS or not child.is_dir():
            out.append(child.name)
            continue
        if loaded is None:
            continue
        keep = set(loaded)
        for elem in sorted(child.iterdir()):
            rel = f"{child.name}/{elem.name}"
            if elem.name.startswith(".") or elem.name in ("zarr.json", ".zgroup", ".zattrs"):
                continue
            if rel not in keep and not elem.name.startswith("histosge_features_"):
                out.append(rel)
    return out


def check_target(
    out: str | Path,
    *,
    overwrite: bool,
    kind: Literal["store", "folder", "file"] = "store",
    inputs: Iterable[str | Path | None] = (),
    allow_input: bool = False,
    option: str = "--out",
) -> Path:
    """Decide whether ``out`` may be written; raise a one-line error when not.

    The one overwrite rule of every writer (export, convert, checkpoints, batch): a new path is
    written when its folder is writable; an existing path is replaced only with ``overwrite``
    and only when it is an empty folder, a histosge output (it holds the marker file), for
    ``kind="store"`` a SpatialData store, or for ``kind="file"`` a file. Paths that are, hold
    or lie inside an input are refused (``allow_input`` lets an export add its ``histosge_*``
    elements to the input store itself, one by one). Leftover temporary siblings of ``out``
    from an interrupted write are cleaned first.

    Parameters
    ----------
    out
        The path to write.
    overwrite
        Whether the user asked to replace an existing output.
    kind
        ``"store"`` (zarr store), ``"folder"`` (checkpoint) or ``"file"`` (a plain file).
    inputs
        Paths the command reads; ``None`` entries are ignored.
    allow_input
        Allow ``out`` to be exactly the first input (an export into the input store).
    option
        The command-line option naming ``out``, for the message.

    Returns
    -------
    The resolved path.

    Examples
    --------
    >>> check_target("/tmp/new-output.zarr", overwrite=False)  # doctest: +SKIP
    PosixPath('/tmp/new-output.zarr')
    """
    p = Path(out).expanduser().resolve()
    ins = [Path(i).expanduser().resolve() for i in inputs if i is not None]
    for i, src in enumerate(ins):
        if allow_input and i == 0 and p == src:
            continue
        if p == src or p in src.parents or src in p.parents:
            where = "is" if p == src else ("holds" if src in p.parents else "lies inside")
            raise ValueError(
                f"Expected {option} `{p}` apart from the input, found it {where} `{src}`; "
                "choose another path (inputs are never replaced)."
            )
    if kind == "file" and not p.parent.is_dir():
        raise ValueError(
            f"Expected the folder of {option} `{p}` to exist, found none; create it first or "
            "choose another path."
        )
    blocked = _writable_parent(p)
    if blocked is not None:
        raise ValueError(
            f"Expected {option} `{p}` in a writable folder, found `{blocked}` "
            f"{'read-only' if blocked.is_dir() else 'is not a folder'}; choose another path."
        )
    recover_siblings(p)
    if not p.exists() and not p.is_symlink():
        return p
    if allow_input and ins and p == ins[0]:
        if not (p / "zarr.json").is_file() or not is_spatialdata_store(p):
            raise ValueError(
                f"Expected the input `{p}` to be a zarr v3 SpatialData store to add the outputs "
                f"to, found another format; choose another {option}."
            )
        return p
    if kind == "file":
        if p.is_dir():
            raise ValueError(
                f"Expected {option} `{p}` to be a file, found a folder; choose another path."
            )
        if not overwrite:
            raise FileExistsError(
                f"Expected {option} `{p}` not to exist, found a file there; pass --overwrite "
                "(overwrite=True) to replace it, or choose another path."
            )
        return p
    if p.is_symlink() or not p.is_dir():
        raise ValueError(
            f"Expected {option} `{p}` to be a new path, found an existing file; choose another "
            "path (only earlier outputs of this tool are ever replaced)."
        )
    ours = not any(p.iterdir()) or is_histosge_output(p)
    if kind == "store" and not ours:
        ours = is_spatialdata_store(p)
    if not ours:
        raise ValueError(
            f"Expected {option} `{p}` to be a new path or an earlier histosge output, found a "
            "folder this tool did not write; choose another path or move that folder yourself."
        )
    if not overwrite:
        raise FileExistsError(
            f"Expected {option} `{p}` not to exist, found an earlier output there; pass "
            "--overwrite (overwrite=True) to replace it."
        )
    return p


def write_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` as written by this package (see :func:`is_histosge_output`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("napari-histosge")
    except PackageNotFoundError:
        ver = "unknown"
    (folder / MARKER_NAME).write_text(
        json.dumps({"written_by": "napari-histosge", "version": ver, "kind": kind}) + "\n"
    )


def write_folder_atomic(
    out: str | Path, write: Callable[[Path], None], *, kind: str = "folder"
) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``out``, then move it into place.

    ``write`` must create ``tmp`` (a folder); the marker file is added to it. A failure or an
    interrupt while writing removes the partial copy and leaves whatever was at ``out``
    untouched; an existing ``out`` is swapped out by renames (with Ctrl-C deferred) and
    removed only once the new folder is in place. The caller checks with :func:`check_target`
    that replacing ``out`` is allowed.

    Examples
    --------
    >>> write_folder_atomic("model", lambda tmp: tmp.mkdir())  # doctest: +SKIP
    PosixPath('/data/model')
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_siblings(out)
    token = uuid.uuid4().hex[:8]
    tmp = out.parent / f".{out.name}.tmp-{token}"
    try:
        write(tmp)
        write_marker(tmp, kind)
        fault_point("folder-written")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with deferred_interrupt():
        if out.exists() and _exchange(tmp, out):
            fault_point("folder-swapped")
            shutil.rmtree(tmp, ignore_errors=True)  # now the previous output
        elif out.exists():
            backup = out.parent / f".{out.name}.old-{token}"
            os.replace(out, backup)
            fault_point("folder-swap")
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(backup, out)
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fault_point("folder-swapped")
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out)
    return out


def write_atomic(sdata: SpatialData, out: str | Path) -> Path:
    """Write ``sdata`` as a zarr store at ``out`` with :func:`write_folder_atomic`.

    Examples
    --------
    >>> write_atomic(sdata, "slide.zarr")  # doctest: +SKIP
    """
    return write_folder_atomic(
        out,
        lambda tmp: write_sdata(sdata, tmp, overwrite=False, update_sdata_path=False),
        kind="store",
    )
