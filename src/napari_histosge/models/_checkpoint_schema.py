"""The schema of a checkpoint's ``model.json``: keys, types and bounds, checked before use.

A checkpoint is data from outside: nothing it says may size an allocation or a patch before it
has been checked here. Every failure is one ``ValueError`` line naming the file, the field and
the fix.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["check_checkpoint_doc"]

#: Most ensemble members a checkpoint may hold.
MAX_MEMBERS = 32
#: Largest patch, in spot diameters (the encoders use 1 to 4).
MAX_PATCH_SPOTS = 16.0
#: Largest patch in image pixels.
MAX_PATCH_PX = 8192.0
#: Bound of the model's widths (features, genes, rank, positions).
MAX_WIDTH = 100_000
MAX_PATCH_SIZES = 8

_FIX = "use a checkpoint saved by `histosge run --checkpoint-out` (or save it again)"

#: config key -> (allowed types, lower bound, upper bound or None)
_CONFIG: dict[str, tuple[tuple[type, ...], float | None, float | None]] = {
    "epochs": ((int,), 1, 1_000_000),
    "ensemble": ((int,), 1, MAX_MEMBERS),
    "heads": ((int,), 1, 64),
    "n_neighbors": ((int,), 1, 10_000),
    "feature_dims": ((int,), 1, MAX_WIDTH),
    "group_size": ((int,), 1, 100_000),
    "rank": ((int, type(None)), 1, MAX_WIDTH),
    "seed": ((int,), None, None),
    "patience": ((int,), 0, None),
    "lr": ((int, float, type(None)), 0, None),
    "weight_decay": ((int, float), 0, None),
    "val_fraction": ((int, float), 0, 1),
    "image_loss_weight": ((int, float), 0, None),
    "mode": ((str,), None, None),
    "device": ((str, type(None)), None, None),
    "cpu_threads": ((int, type(None)), 1, 1024),
}
_INFO_WIDTHS = ("feat_dim", "n_genes", "rank", "n_pos")


def _fail(path: Path, field: str, want: str, found: Any) -> ValueError:
    text = repr(found)
    if len(text) > 60:
        text = text[:57] + "..."
    return ValueError(f"Expected `{field}` in `{path}` to be {want}, found `{text}`; {_FIX}.")


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_value(path: Path, field: str, value: Any, spec: tuple) -> None:
    types, lo, hi = spec
    ok = isinstance(value, types) and not isinstance(value, bool)
    if ok and isinstance(value, int | float):
        ok = math.isfinite(value) and (lo is None or value >= lo) and (hi is None or value <= hi)
    if not ok:
        names = "/".join(t.__name__.replace("NoneType", "null") for t in types)
        bounds = f" in [{lo}, {hi if hi is not None else 'inf'}]" if lo is not None else ""
        raise _fail(path, field, f"{names}{bounds}", value)


def _check_sizes(path: Path, field: str, value: Any, hi: float) -> None:
    if value is None:
        return
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_PATCH_SIZES
        or not all(_number(v) and 0 < v <= hi for v in value)
    ):
        raise _fail(path, field, f"a list of 1 to {MAX_PATCH_SIZES} numbers in (0, {hi:g}]", value)


def check_checkpoint_doc(doc: Any, path: str | Path, fmt: str) -> None:
    """Raise ``ValueError`` unless ``doc`` (a parsed ``model.json``) fits the schema.

    Examples
    --------
    >>> check_checkpoint_doc({}, "model.json", "napari-histosge-checkpoint/1")
    Traceback (most recent call last):
    ...
    ValueError: Expected `format` in `model.json` to be `napari-histosge-checkpoint/1`, found `None`; use a checkpoint saved by `histosge run --checkpoint-out` (or save it again).
    """  # noqa: E501
    path = Path(path)
    if not isinstance(doc, dict):
        raise _fail(path, "(top level)", "a JSON object", type(doc).__name__)
    if doc.get("format") != fmt:
        raise _fail(path, "format", f"`{fmt}`", doc.get("format"))
    for key, kind in (
        ("config", dict),
        ("genes", list),
        ("feature_meta", dict),
        ("info", dict),
        ("n_members", int),
    ):
        if key not in doc:
            raise ValueError(f"Expected key `{key}` in `{path}`, found it missing; {_FIX}.")
        if not isinstance(doc[key], kind) or isinstance(doc[key], bool):
            raise _fail(path, key, f"a JSON {kind.__name__}", doc[key])
    _check_value(path, "n_members", doc["n_members"], ((int,), 1, MAX_MEMBERS))
    genes = doc["genes"]
    if not 1 <= len(genes) <= MAX_WIDTH or not all(isinstance(g, str) for g in genes):
        raise _fail(path, "genes", f"a list of 1 to {MAX_WIDTH} gene names", genes[:3])
    if len(set(genes)) != len(genes):
        raise _fail(path, "genes", "gene names without repeats", "repeats")
    if "history" in doc and not isinstance(doc["history"], list):
        raise _fail(path, "history", "a JSON list", doc["history"])
    for key, spec in _CONFIG.items():
        if key in doc["config"]:
            _check_value(path, f"config.{key}", doc["config"][key], spec)
    meta = doc["feature_meta"]
    _check_sizes(
        path, "feature_meta.patch_sizes_spot", meta.get("patch_sizes_spot"), MAX_PATCH_SPOTS
    )
    _check_sizes(path, "feature_meta.patch_sizes", meta.get("patch_sizes"), MAX_PATCH_SPOTS)
    _check_sizes(path, "feature_meta.patch_sizes_px", meta.get("patch_sizes_px"), MAX_PATCH_PX)
    if "dim" in meta:
        _check_value(path, "feature_meta.dim", meta["dim"], ((int,), 1, MAX_WIDTH))
    if "encoder" in meta and not isinstance(meta["encoder"], str):
        raise _fail(path, "feature_meta.encoder", "an encoder name", meta["encoder"])
    for key in _INFO_WIDTHS:
        if key in doc["info"]:
            spec = ((int, type(None)), 1, MAX_WIDTH)
            _check_value(path, f"info.{key}", doc["info"][key], spec)
    if "n_genes" in doc["info"] and doc["info"]["n_genes"] != len(genes):
        raise _fail(
            path, "info.n_genes", f"the number of genes ({len(genes)})", doc["info"]["n_genes"]
        )
