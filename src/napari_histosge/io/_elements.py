"""Building blocks of slide elements: the spot table, spot circles and count checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_histosge.store import SLIDE_META_KEY

__all__ = [
    "check_counts",
    "find_one",
    "make_circles",
    "make_table",
    "MIN_SPOTS",
    "SlideKeys",
    "SPACERANGER_SPOT_UM",
]


MIN_SPOTS = 10


#: Space Ranger's ``spot_diameter_fullres`` spans a theoretical 65 µm spot; Visium spots are 55 µm.
SPACERANGER_SPOT_UM = 65.0


@dataclass(frozen=True)
class SlideKeys:
    """Names of the H&E image, the spot circles and the table annotating them."""

    image_key: str
    spots_key: str
    table_key: str


def find_one(folder: Path, pattern: str, what: str) -> Path:
    hits = sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))
    if len(hits) != 1:
        raise ValueError(
            f"Expected exactly one {what} (`{pattern}`) in `{folder}`, found {len(hits)}: "
            f"{[h.name for h in hits]}."
        )
    return hits[0]


def make_table(
    counts: Any,
    spot_ids: list[str],
    genes: list[str],
    spots_key: str,
    xy: np.ndarray,
    meta: dict[str, Any],
    obs_extra: dict[str, Any] | None = None,
) -> Any:
    """Build a ``TableModel`` table annotating ``spots_key`` (instances ``0..n-1`` in row order)."""
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    obs = pd.DataFrame(
        {
            "region": pd.Categorical([spots_key] * len(spot_ids)),
            "instance_id": np.arange(len(spot_ids)),
        },
        index=pd.Index(spot_ids),
    )
    for k, v in (obs_extra or {}).items():
        obs[k] = v
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    adata.obsm["spatial"] = np.asarray(xy, dtype=float)
    adata.uns[SLIDE_META_KEY] = meta
    return TableModel.parse(
        adata, region=spots_key, region_key="region", instance_key="instance_id"
    )


def make_circles(xy: np.ndarray, radius: float) -> Any:
    """Build a circles ``ShapesModel`` element indexed ``0..n-1`` (the table's ``instance_id``)."""
    import pandas as pd
    from spatialdata.models import ShapesModel

    return ShapesModel.parse(
        np.asarray(xy, dtype=float),
        geometry=0,
        radius=np.full(len(xy), float(radius)),
        index=pd.RangeIndex(len(xy), name="instance_id"),
    )


def check_counts(matrix: Any, what: str) -> None:
    import scipy.sparse as sp

    data = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"Expected numeric counts in {what}, found dtype {data.dtype}.")
    n_nan = int(np.isnan(data).sum()) if np.issubdtype(data.dtype, np.floating) else 0
    if n_nan:
        raise ValueError(f"Expected counts without NaN in {what}, found {n_nan} NaN values.")
    n_inf = int(np.isinf(data).sum()) if np.issubdtype(data.dtype, np.floating) else 0
    if n_inf:
        raise ValueError(
            f"Expected finite counts in {what}, found {n_inf} infinite values; fix those entries."
        )
    n_neg = int((data < 0).sum())
    if n_neg:
        raise ValueError(f"Expected non-negative counts in {what}, found {n_neg} negative values.")
    if data.size == 0 or not np.any(data):
        raise ValueError(
            f"Expected some non-zero counts in {what}, found only zeros; check that the right "
            "table (or layer) holds the counts."
        )
