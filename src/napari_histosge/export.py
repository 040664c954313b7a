"""Export predictions, positions and gene maps into a SpatialData store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._json import json_default
from .store import (
    EXPRESSION_KEY,
    OUTPUT_KEYS,
    POSITIONS_KEY,
    PREDICTIONS_KEY,
    check_target,
    foreign_entries,
    write_atomic,
)

_GROUPS = ("images", "shapes", "tables")

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from .maps import GeneMaps
    from .predict import Predictions

__all__ = ["build_output", "write_predictions"]


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

    Returns
    -------
    Element name to parsed SpatialData element.

    Examples
    --------
    >>> from napari_histosge.io import load_sample  # doctest: +SKIP
    """
    import anndata as ad
    import pandas as pd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale, Sequence, Translation

    image_tf = _image_transformations(sdata, image_key)
    elements: dict[str, Any] = {}
    if maps is not None:
        map_tf = {
            cs: Sequence(
                [
                    Scale([maps.pitch_px, maps.pitch_px], axes=("x", "y")),
                    Translation([maps.origin_px[0], maps.origin_px[1]], axes=("x", "y")),
                    tf,
                ]
            )
            for cs, tf in image_tf.items()
        }
        h, w = maps.data.shape[1:]
        extra = {"scale_factors": list(maps.scale_factors)} if maps.scale_factors else {}
        lazy = hasattr(maps.data, "dask")
        elements[EXPRESSION_KEY] = Image2DModel.parse(
            maps.data if lazy else np.ascontiguousarray(maps.data, dtype=np.float32),
            dims=("c", "y", "x"),
            c_coords=list(maps.genes),
            transformations=map_tf,
            chunks=(1, min(h, 1024), min(w, 1024)),
            **extra,
        )

    m = len(predictions.positions_px)
    radius = np.where(
        predictions.is_spot, predictions.spot_diameter_px / 2.0, predictions.spot_diameter_px / 4.0
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
        var=pd.DataFrame(index=pd.Index([str(g) for g in predictions.genes])),
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
    return elements


def write_predictions(
    sdata: SpatialData,
    out: str | Path,
    *,
    image_key: str,
    predictions: Predictions,
    maps: GeneMaps | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the input elements plus the ``histosge_*`` outputs into the store ``out``.

    The input elements are copied unchanged; the outputs are the image ``histosge_expression``
    (channels = genes, placed on the H&E), the circles ``histosge_positions`` and the table
    ``histosge_predictions`` annotating them (config and metrics in ``uns["histosge"]``).
    The write is atomic: on failure the store at ``out`` is left as it was.

    Parameters
    ----------
    sdata
        The input slide; not modified.
    out
        Output ``.zarr`` path. It may be the store ``sdata`` was read from.
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

    Returns
    -------
    The path written.

    Examples
    --------
    >>> write_predictions(sdata, "out.zarr", image_key="he", predictions=p)  # doctest: +SKIP
    """
    from spatialdata import SpatialData

    source = Path(sdata.path).resolve() if getattr(sdata, "path", None) else None
    out_path = check_target(
        out, overwrite=overwrite, kind="store", inputs=[source], allow_input=True
    )
    if source is not None and out_path == source:
        loaded = [f"{kind}/{name}" for kind, name, _ in sdata.gen_elements()]
        lost = foreign_entries(
            source, [*loaded, *(f"{k}/{n}" for k in _GROUPS for n in OUTPUT_KEYS)]
        )
        if lost:
            raise ValueError(
                f"Expected every element of the input `{source}` to be loaded before it is "
                f"rewritten with the outputs, found `{lost[0]}` not loaded; choose another --out."
            )
    existing_outputs = [k for k in OUTPUT_KEYS if k in sdata]
    if existing_outputs and not overwrite:
        raise FileExistsError(
            f"Expected no earlier outputs in the store, found `{existing_outputs}`; "
            "pass overwrite=True (--overwrite) to replace them."
        )
    if image_key not in sdata.images:
        raise KeyError(f"Expected `image_key` in `{list(sdata.images)}`, found `{image_key}`.")

    new = build_output(sdata, image_key=image_key, predictions=predictions, maps=maps, meta=meta)
    images = {k: v for k, v in sdata.images.items() if k not in OUTPUT_KEYS}
    shapes = {k: v for k, v in sdata.shapes.items() if k not in OUTPUT_KEYS}
    tables = {k: v for k, v in sdata.tables.items() if k not in OUTPUT_KEYS}
    if EXPRESSION_KEY in new:
        images[EXPRESSION_KEY] = new[EXPRESSION_KEY]
    shapes[POSITIONS_KEY] = new[POSITIONS_KEY]
    tables[PREDICTIONS_KEY] = new[PREDICTIONS_KEY]
    combined = SpatialData(
        images=images,
        labels=dict(sdata.labels.items()),
        points=dict(sdata.points.items()),
        shapes=shapes,
        tables=tables,
    )
    return write_atomic(combined, out_path)
