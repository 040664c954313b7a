"""The bundled real sample: a 10x Visium adult mouse brain crop (see sample_data/ATTRIBUTION.md)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_histosge.geometry.lattice import VISIUM_DIAMETER_UM, VISIUM_PITCH_UM
from napari_histosge.images import cyx_view, parse_image, read_image_file

from ._elements import SPACERANGER_SPOT_UM, make_circles, make_table

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["load_sample", "SAMPLE_ID"]


SAMPLE_ID = "V1_Adult_Mouse_Brain"


def load_sample() -> SpatialData:
    """Build the sample SpatialData from the bundled JPEG and AnnData.

    The image is the full-resolution H&E crop (identity transformation); the circles sit at
    ``obsm["spatial"]`` (x = column, y = row in the JPEG's pixels) with the true 55 µm Visium
    spot radius (``spot_diameter_fullres`` spans a theoretical 65 µm spot, so the radius is
    ``55 / 65 * spot_diameter_fullres / 2``); the table keeps the AnnData's log1p-normalised
    values in ``X`` (sparse), its ``obs`` and barcodes.

    Returns
    -------
    SpatialData with ``V1_Adult_Mouse_Brain_image``, ``V1_Adult_Mouse_Brain_spots`` and
    ``table``.

    Examples
    --------
    >>> sorted(load_sample().images)
    ['V1_Adult_Mouse_Brain_image']
    """
    import anndata as ad
    import scipy.sparse as sp
    from spatialdata import SpatialData

    root = Path(str(files("napari_histosge") / "sample_data"))
    rgb = read_image_file(root / "mouse_brain_crop.jpg")
    src = ad.read_h5ad(root / "mouse_brain_crop.h5ad")
    scalefactors = src.uns["spatial"][SAMPLE_ID]["scalefactors"]
    fullres_px = float(scalefactors["spot_diameter_fullres"])
    um_per_px = SPACERANGER_SPOT_UM / fullres_px
    xy = np.asarray(src.obsm["spatial"], dtype=float)
    spots_key = f"{SAMPLE_ID}_spots"
    meta = {
        "technology": "Visium",
        "spot_diameter_um": VISIUM_DIAMETER_UM,
        "spot_pitch_um": VISIUM_PITCH_UM,
        "um_per_px": um_per_px,
        "image": "mouse_brain_crop.jpg",
        "source": "10x Genomics V1_Adult_Mouse_Brain crop (CC BY 4.0), via squidpy test data",
        "values": "log1p-normalised",
    }
    x = src.X if sp.issparse(src.X) else np.asarray(src.X)
    table = make_table(
        sp.csr_matrix(x, dtype=np.float32),
        [str(s) for s in src.obs_names],
        [str(g) for g in src.var_names],
        spots_key,
        xy,
        meta,
        {"leiden": src.obs["leiden"].to_numpy(), "in_tissue": src.obs["in_tissue"].to_numpy()},
    )
    return SpatialData(
        images={f"{SAMPLE_ID}_image": parse_image(cyx_view(rgb))},
        shapes={spots_key: make_circles(xy, VISIUM_DIAMETER_UM / um_per_px / 2.0)},
        tables={"table": table},
    )


@dataclass(frozen=True)
class SamplePreview:
    """What a viewer shows of the sample: the H&E pixels and the spot circles."""

    rgb: np.ndarray
    centers_px: np.ndarray
    diameter_px: float
    spot_ids: list[str]
    image_key: str = f"{SAMPLE_ID}_image"
    spots_key: str = f"{SAMPLE_ID}_spots"


def sample_preview() -> SamplePreview:
    """Read the sample's image and spots only, fast and without SpatialData or AnnData.

    A viewer opening the sample calls this on its own thread: it reads the JPEG and, with
    h5py, the spot positions and the Space Ranger scale factor of the bundled AnnData, the
    same values :func:`load_sample` uses.

    Examples
    --------
    >>> sample_preview().centers_px.shape
    (49, 2)
    """
    import h5py

    root = Path(str(files("napari_histosge") / "sample_data"))
    rgb = read_image_file(root / "mouse_brain_crop.jpg")
    with h5py.File(root / "mouse_brain_crop.h5ad", "r") as f:
        xy = np.asarray(f["obsm"]["spatial"][()], dtype=float)
        obs = f["obs"]
        index = obs[str(obs.attrs.get("_index", "_index"))][()]
        fullres = f["uns"]["spatial"][SAMPLE_ID]["scalefactors"]["spot_diameter_fullres"][()]
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in index]
    um_per_px = SPACERANGER_SPOT_UM / float(fullres)
    return SamplePreview(rgb, xy, VISIUM_DIAMETER_UM / um_per_px, ids)
