"""The bundled real sample: a 10x Visium adult mouse brain crop (see sample_data/ATTRIBUTION.md)."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["SAMPLE_ID", "load_sample"]

SAMPLE_ID = "V1_Adult_Mouse_Brain"


def load_sample() -> SpatialData:
    """Build the sample SpatialData from the bundled JPEG and AnnData.

    Examples
    --------
    >>> sorted(load_sample().images)
    ['V1_Adult_Mouse_Brain_image']
    """
    import anndata as ad
    import scipy.sparse as sp
    from spatialdata import SpatialData

    from .io import SLIDE_META_KEY, _circles, _parse_image, _read_image_file, _table

    root = files("napari_histosge") / "sample_data"
    rgb = _read_image_file(root / "mouse_brain_crop.jpg")  # type: ignore[arg-type]
    src = ad.read_h5ad(str(root / "mouse_brain_crop.h5ad"))
    scalefactors = src.uns["spatial"][SAMPLE_ID]["scalefactors"]
    diameter_px = float(scalefactors["spot_diameter_fullres"])
    xy = np.asarray(src.obsm["spatial"], dtype=float)
    spots_key = f"{SAMPLE_ID}_spots"
    meta = {
        "technology": "Visium",
        "spot_diameter_um": 55.0,
        "spot_pitch_um": 100.0,
        "um_per_px": 55.0 / diameter_px,
        "source": "10x Genomics V1_Adult_Mouse_Brain crop (CC BY 4.0), via squidpy test data",
        "values": "log1p-normalised",
    }
    x = src.X.toarray() if sp.issparse(src.X) else np.asarray(src.X)
    table = _table(
        sp.csr_matrix(x.astype(np.float32)),
        [str(s) for s in src.obs_names],
        [str(g) for g in src.var_names],
        spots_key,
        xy,
        meta,
        {"leiden": src.obs["leiden"].to_numpy(), "in_tissue": src.obs["in_tissue"].to_numpy()},
    )
    return SpatialData(
        images={f"{SAMPLE_ID}_image": _parse_image(rgb)},
        shapes={spots_key: _circles(xy, diameter_px / 2.0)},
        tables={"table": table},
    )
