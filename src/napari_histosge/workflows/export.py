"""Export predictions, positions and gene maps into a SpatialData store."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge._store_elements import TWIN_IMAGES, consolidate_store
from napari_histosge.base.interrupts import fault_point
from napari_histosge.base.json_io import json_default
from napari_histosge.store import (
    ELEMENT_KINDS,
    EXPRESSION_KEY,
    POSITIONS_KEY,
    PREDICTIONS_KEY,
    check_target,
    write_element_atomic,
    write_folder_atomic,
    write_sdata,
)

_GROUPS = ("images", "labels", "shapes", "tables")
_GROUPS_ALL = ("images", "labels", "points", "shapes", "tables")
_METADATA_FILES = frozenset({"zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata"})

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from napari_histosge.maps import GeneMaps
    from napari_histosge.models.domains import Domains
    from napari_histosge.predict import Predictions

__all__ = [
    "build_output",
    "domain_elements",
    "map_transformations",
    "parse_maps",
    "write_predictions",
]


#: Target size of one chunk of the maps: small maps keep several genes per chunk (one file),
#: so that a slide's maps are a few files rather than one per gene.
MAP_CHUNK_BYTES = 4 * 1024**2


def _genes_per_chunk(n_genes: int, tile: tuple[int, int]) -> int:
    """Genes per chunk of the maps: one per 1024 px tile, more when the map is small."""
    return max(1, min(n_genes, MAP_CHUNK_BYTES // (4 * tile[0] * tile[1])))


def _image_transformations(sdata: SpatialData, image_key: str) -> dict[str, Any]:
    from spatialdata.transformations import get_transformation

    return dict(get_transformation(sdata.images[image_key], get_all=True))


def build_output(
    sdata: SpatialData,
    *,
    image_key: str,
    predictions: Predictions,
    maps: GeneMaps | None,
    meta: dict[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the ``histosge_*`` elements: gene-map image, position circles and predictions table.

    Parameters
    ----------
    sdata
        The input store (read only).
    image_key
        The H&E image the positions are given in (scale-0 pixels).
    predictions
        Predictions at the measured spots and the new positions.
    maps
        Rasterised maps, or ``None`` to skip the image element.
    meta
        Training configuration, metrics and provenance for the table's ``uns``.
    extra
        Further parsed elements named in :data:`~napari_histosge.store.ELEMENT_KINDS`
        (uncertainty maps, domains, nuclei, cells), added as they are.

    Returns
    -------
    Element name to parsed SpatialData element.

    Examples
    --------
    >>> from napari_histosge.io import load_sample  # doctest: +SKIP
    """
    import anndata as ad
    import pandas as pd
    from spatialdata.models import ShapesModel, TableModel

    image_tf = _image_transformations(sdata, image_key)
    elements: dict[str, Any] = {}
    if maps is not None:
        elements[EXPRESSION_KEY] = parse_maps(sdata, image_key, maps)

    m = len(predictions.positions_px)
    radius = np.where(
        predictions.is_full_size,
        predictions.spot_diameter_px / 2.0,
        predictions.spot_diameter_px / 4.0,
    )
    elements[POSITIONS_KEY] = ShapesModel.parse(
        np.asarray(predictions.positions_px, dtype=float),
        geometry=0,
        radius=radius.astype(float),
        index=pd.RangeIndex(m, name="instance_id"),
        transformations=dict(image_tf),
    )
    obs = pd.DataFrame(
        {
            "position_id": np.asarray(predictions.ids, dtype=str),
            "kind": pd.Categorical(np.asarray(predictions.kind, dtype=str)),
            "region": pd.Categorical([POSITIONS_KEY] * m),
            "instance_id": np.arange(m),
        },
        index=pd.Index(np.asarray(predictions.ids, dtype=str), name=None),
    )
    adata = ad.AnnData(
        X=np.asarray(predictions.values, dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(
            dict(predictions.gene_info), index=pd.Index([str(g) for g in predictions.genes])
        ),
    )
    adata.obsm["spatial"] = np.asarray(predictions.positions_px, dtype=float)
    info = dict(meta or predictions.meta)
    adata.uns["histosge"] = {
        "meta_json": json.dumps(info, default=json_default, sort_keys=True),
        "values": "log1p of counts normalised to 1e4 per spot",
        "image_key": image_key,
    }
    elements[PREDICTIONS_KEY] = TableModel.parse(
        adata, region=POSITIONS_KEY, region_key="region", instance_key="instance_id"
    )
    for name, element in (extra or {}).items():
        if name not in ELEMENT_KINDS or name in elements:
            raise ValueError(
                f"Expected extra elements among `{list(ELEMENT_KINDS)[3:]}`, found `{name}`."
            )
        elements[name] = element
    return elements


def map_transformations(
    sdata: SpatialData, image_key: str, maps: GeneMaps | Domains
) -> dict[str, Any]:
    """Return the transformations placing a map grid (``pitch_px``, ``origin_px``) on the H&E.

    Any object with ``pitch_px`` and ``origin_px`` (gene maps, domains) is placed the same way.
    """
    from spatialdata.transformations import Scale, Sequence, Translation

    return {
        cs: Sequence(
            [
                Scale([maps.pitch_px, maps.pitch_px], axes=("x", "y")),
                Translation([maps.origin_px[0], maps.origin_px[1]], axes=("x", "y")),
                tf,
            ]
        )
        for cs, tf in _image_transformations(sdata, image_key).items()
    }


def parse_maps(sdata: SpatialData, image_key: str, maps: GeneMaps) -> Any:
    """Parse gene maps into a multiscale, chunked image element placed on the H&E.

    Each coarser scale is computed from the scale before, block by block
    (:func:`~napari_histosge.workflows._pyramid.rebuild_pyramid`), keeping
    ``maps.mantissa_bits``; such maps (the sd) keep several genes per chunk of a coarser scale.
    """
    from spatialdata.models import Image2DModel

    h, w = maps.data.shape[1:]
    extra = {"scale_factors": list(maps.scale_factors)} if maps.scale_factors else {}
    lazy = hasattr(maps.data, "dask")
    tile = (min(h, 1024), min(w, 1024))
    image = Image2DModel.parse(
        maps.data if lazy else np.ascontiguousarray(maps.data, dtype=np.float32),
        dims=("c", "y", "x"),
        c_coords=list(maps.genes),
        transformations=map_transformations(sdata, image_key, maps),
        chunks=(_genes_per_chunk(len(maps.genes), tile), *tile),
        **extra,
    )
    if not maps.scale_factors:
        return image
    from ._pyramid import rebuild_pyramid

    # Maps rounded to fewer mantissa bits (the sd) keep several genes per chunk below the
    # finest scale: a tenth of the small files to write.
    fewer = MAP_CHUNK_BYTES if maps.mantissa_bits is not None else None
    return rebuild_pyramid(
        image, maps.mantissa_bits, source=maps.data if lazy else None, chunk_bytes=fewer
    )


def domain_elements(sdata: SpatialData, image_key: str, domains: Domains) -> dict[str, Any]:
    """Parse tissue domains into a labels element and the table of their top genes.

    ``histosge_domains`` is a multiscale labels element on the map's grid (0 off the grid);
    ``histosge_domain_genes`` annotates it with one row per domain: ``label``,
    ``n_superpixels``, ``area_mm2``, ``top_genes`` (comma-separated) and, in ``X``, the
    domain's mean log expression of every gene.
    """
    import anndata as ad
    import pandas as pd
    from spatialdata.models import Labels2DModel, TableModel

    from napari_histosge.store import DOMAIN_GENES_KEY, DOMAINS_KEY

    h, w = domains.labels.shape
    extra = {"scale_factors": list(domains.scale_factors)} if domains.scale_factors else {}
    labels = Labels2DModel.parse(
        np.ascontiguousarray(domains.labels, dtype=np.int32),
        dims=("y", "x"),
        transformations=map_transformations(sdata, image_key, domains),
        chunks=(min(h, 1024), min(w, 1024)),
        **extra,
    )
    k = len(domains.sizes)
    ids = np.arange(1, k + 1)
    obs = pd.DataFrame(
        {
            "label": ids,
            "region": pd.Categorical([DOMAINS_KEY] * k),
            "n_superpixels": np.asarray(domains.sizes, dtype=np.int64),
            "area_mm2": np.asarray(domains.sizes, dtype=float) * domains.area_um2 / 1e6,
            "top_genes": [", ".join(domains.top_genes[int(i)]) for i in ids],
        },
        index=pd.Index([f"domain_{i}" for i in ids]),
    )
    table = ad.AnnData(
        X=np.asarray(domains.means, dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index([str(g) for g in domains.genes])),
    )
    table.uns["histosge"] = {"values": "mean log1p of counts normalised to 1e4 per domain"}
    return {
        DOMAINS_KEY: labels,
        DOMAIN_GENES_KEY: TableModel.parse(
            table, region=DOMAINS_KEY, region_key="region", instance_key="label"
        ),
    }


def write_predictions(
    sdata: SpatialData,
    out: str | Path | None,
    *,
    image_key: str,
    predictions: Predictions,
    maps: GeneMaps | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    in_place: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the ``histosge_*`` outputs into the input store, or into a new store ``out``.

    The outputs are the image ``histosge_expression`` (channels = genes, placed on the H&E),
    the circles ``histosge_positions`` and the table ``histosge_predictions`` annotating them
    (config and metrics in ``uns["histosge"]``).

    - Into the input store (``in_place``, or ``out`` is the store ``sdata`` was read from):
      only the three elements are written, one at a time and crash-safely
      (:func:`~napari_histosge.store.write_element_atomic`); nothing else in the store is
      read, copied or changed except its root metadata.
    - Into another store: the new store is assembled in a hidden temporary folder and moved
      into place (:func:`~napari_histosge.store.write_folder_atomic`). Image and label
      elements read unchanged from the input store are hard-linked file by file (copied where
      the two paths are on different file systems; metadata files are always copied); every
      other element is written from memory.

    Parameters
    ----------
    sdata
        The input slide; not modified.
    out
        Output ``.zarr`` path; ``None`` with ``in_place``.
    image_key
        The H&E image the predictions are placed on.
    predictions
        Predictions to write.
    maps
        Rasterised maps to write.
    meta
        Extra provenance for ``uns``.
    overwrite
        Replace an earlier output or another SpatialData store (never a folder this package
        did not write, nor one holding the input; see
        :func:`~napari_histosge.store.check_target`), or earlier ``histosge_*`` outputs in the
        input store. Without it such a write is refused.
    in_place
        Write into the store ``sdata`` was read from.
    extra
        Further parsed ``histosge_*`` elements (see :func:`build_output`).

    Returns
    -------
    The path written.

    Examples
    --------
    >>> write_predictions(sdata, "out.zarr", image_key="he", predictions=p)  # doctest: +SKIP
    """
    source = Path(sdata.path).resolve() if getattr(sdata, "path", None) else None
    if in_place:
        if source is None:
            raise ValueError(
                "Expected a slide read from a .zarr store for an in-place export, found one "
                "held only in memory; give an output path instead."
            )
        if out is not None and Path(out).expanduser().resolve() != source:
            raise ValueError(
                f"Expected no output path besides the input with --in-place, found `{out}`."
            )
        out = source
    if out is None:
        raise ValueError("Expected an output path (or --in-place), found none.")
    out_path = check_target(
        out, overwrite=overwrite, kind="store", inputs=[source], allow_input=True
    )
    if image_key not in sdata.images:
        raise KeyError(f"Expected `image_key` in `{list(sdata.images)}`, found `{image_key}`.")
    if source is not None and out_path == source:
        return _write_into(sdata, source, image_key, predictions, maps, meta, overwrite, extra)
    existing_outputs = [k for k in ELEMENT_KINDS if k in sdata]
    if existing_outputs and not overwrite:
        raise FileExistsError(
            f"Expected no earlier outputs in the store, found `{existing_outputs}`; "
            "pass overwrite=True (--overwrite) to replace them."
        )
    new = build_output(
        sdata, image_key=image_key, predictions=predictions, maps=maps, meta=meta, extra=extra
    )
    return write_folder_atomic(
        out_path, lambda tmp: _assemble(sdata, source, new, tmp), kind="store"
    )


def _element_type(name: str) -> str:
    return ELEMENT_KINDS.get(name, "tables")


def _write_into(
    sdata: SpatialData,
    root: Path,
    image_key: str,
    predictions: Predictions,
    maps: GeneMaps | None,
    meta: dict[str, Any] | None,
    overwrite: bool,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Add (or replace) the ``histosge_*`` elements of the store ``root`` one by one."""
    on_disk = [k for k in ELEMENT_KINDS if (root / _element_type(k) / k).exists()]
    earlier = sorted({*on_disk, *(k for k in ELEMENT_KINDS if k in sdata)})
    if earlier and not overwrite:
        raise FileExistsError(
            f"Expected no earlier outputs in the store, found `{earlier}`; "
            "pass overwrite=True (--overwrite) to replace them."
        )
    clashes = [
        f"{kind}/{name}"
        for kind in _GROUPS
        for name in ELEMENT_KINDS
        if kind != _element_type(name) and (root / kind / name).exists()
    ]
    if clashes:
        raise ValueError(
            f"Expected the `histosge_*` names free in `{root}`, found `{clashes[0]}`; "
            "choose another --out."
        )
    new = build_output(
        sdata, image_key=image_key, predictions=predictions, maps=maps, meta=meta, extra=extra
    )
    # Tables last: a store holding a table holds the element it annotates. An earlier output
    # that this export does not produce is removed (it would describe another run).
    order = {"images": 0, "labels": 1, "shapes": 2, "tables": 3}
    for name in sorted(ELEMENT_KINDS, key=lambda k: order[_element_type(k)]):
        element = new.get(name)
        if element is None and name not in on_disk:
            continue
        write_element_atomic(root, _element_type(name), name, element)
        fault_point(f"export-wrote-{name}")
    return root


def _linkable(sdata: SpatialData, source: Path | None, kind: str, name: str) -> bool:
    """Whether the raster element is the input store's on-disk element, unchanged in memory."""
    if source is None or kind not in ("images", "labels"):
        return False
    from spatialdata._io._utils import get_dask_backing_files

    folder = source / kind / name
    element = sdata[name]
    try:
        files = [Path(f).resolve() for f in get_dask_backing_files(element)]
        scales = [element] if hasattr(element, "data") else [n["image"] for n in element.values()]
        layers = [k for s in scales for k in s.data.dask.layers]
    except (AttributeError, KeyError, TypeError, ValueError):
        return False
    plain = all(k.startswith(("original-from-zarr-", "from-zarr-")) for k in layers)
    return folder.is_dir() and plain and bool(files) and all(f == folder for f in files)


def _link_tree(src: Path, dst: Path) -> None:
    """Recreate ``src`` at ``dst``: data hard-linked (copied across devices), metadata copied."""
    for dirpath, _dirs, files in os.walk(src):
        here = Path(dirpath)
        target = dst / here.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            if f in _METADATA_FILES:
                shutil.copy2(here / f, target / f)
                continue
            try:
                os.link(here / f, target / f)
            except OSError:
                shutil.copy2(here / f, target / f)


def _assemble(sdata: SpatialData, source: Path | None, new: dict[str, Any], tmp: Path) -> None:
    """Write a new store at ``tmp``: the input's elements (rasters linked) plus ``new``."""
    from spatialdata import SpatialData

    groups: dict[str, dict[str, Any]] = {k: {} for k in _GROUPS_ALL}
    linked: list[tuple[str, str]] = []
    for kind, name, element in sdata.gen_elements():
        if name in ELEMENT_KINDS:
            continue
        if _linkable(sdata, source, kind, name):
            linked.append((kind, name))
        else:
            groups[kind][name] = element
    for name, element in new.items():
        groups[_element_type(name)][name] = element
    with warnings.catch_warnings():  # a table may annotate a raster linked below
        warnings.filterwarnings("ignore", message=".*which is not present in the SpatialData")
        out_sdata = SpatialData(**groups, attrs=dict(sdata.attrs))
        write_sdata(out_sdata, tmp, twins=TWIN_IMAGES, overwrite=False, update_sdata_path=False)
    if not linked:
        return
    assert source is not None
    for kind, name in linked:
        group = tmp / kind
        if not (group / "zarr.json").is_file():
            group.mkdir(exist_ok=True)
            shutil.copy2(source / kind / "zarr.json", group / "zarr.json")
        _link_tree(source / kind / name, group / name)
    consolidate_store(tmp)
