"""Reader of Space Ranger Visium folders (through spatialdata-io)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.geometry.lattice import VISIUM_DIAMETER_UM, VISIUM_PITCH_UM
from napari_histosge.store import SLIDE_META_KEY

from ._elements import SPACERANGER_SPOT_UM, find_one

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["is_visium_folder", "read_visium"]


def is_visium_folder(path: Path) -> bool:
    """Whether ``path`` looks like a Space Ranger output folder."""
    return (
        path.is_dir()
        and (path / "spatial").is_dir()
        and any(path.glob("*filtered_feature_bc_matrix.h5"))
    )


def _visium_dataset_id(folder: Path, counts_file: str) -> str | None:
    """Name the elements after the folder when the counts file has no ``<id>_`` prefix."""
    if counts_file != "filtered_feature_bc_matrix.h5":
        return None
    name = folder.resolve().name
    return folder.resolve().parent.name if name == "outs" else name


def read_visium(folder: str | Path) -> SpatialData:
    """Read a Space Ranger Visium output folder through ``spatialdata_io.visium``.

    A full-resolution image in the folder itself (one ``.tif``/``.tiff``/``.btf``/``.jpg``/
    ``.png`` next to ``spatial/``) is used when present; otherwise the hires and lowres images
    come with their scale transformations. Spot ids are the barcodes. Space Ranger's
    ``spot_diameter_fullres`` spans a theoretical 65 µm spot, so the circles are rescaled to
    the true 55 µm Visium spot.

    Parameters
    ----------
    folder
        The Space Ranger output folder (``outs/``).

    Returns
    -------
    SpatialData as built by spatialdata-io, with ``table.uns["histosge_slide"]`` added.

    Examples
    --------
    >>> sdata = read_visium("visium_out/")  # doctest: +SKIP
    """
    from spatialdata_io import visium

    folder = Path(folder)
    fullres = sorted(
        p
        for ext in ("*.tif", "*.tiff", "*.btf", "*.jpg", "*.jpeg", "*.png")
        for p in folder.glob(ext)
        if not p.name.startswith(".")
    )
    if len(fullres) > 1:
        raise ValueError(
            f"Expected at most one full-resolution image next to `spatial/` in `{folder}`, found "
            f"{[p.name for p in fullres]}."
        )
    counts = find_one(folder, "*filtered_feature_bc_matrix.h5", "Visium counts file")
    kwargs: dict[str, Any] = {"dataset_id": _visium_dataset_id(folder, counts.name)}
    if fullres:
        kwargs["fullres_image_file"] = fullres[0].name
    try:
        sdata = visium(folder, **kwargs)
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"Expected a readable Space Ranger folder at `{folder}`: {err}") from err
    for key, table in sdata.tables.items():
        spatial = np.asarray(table.obsm.get("spatial", np.zeros((0, 2))), dtype=float)
        if np.isnan(spatial).any():
            bad = table.obs_names[np.isnan(spatial).any(axis=1)]
            raise ValueError(
                f"Expected every barcode of `{counts.name}` in the tissue positions file, found "
                f"{len(bad)} without a position, e.g. {list(bad[:3])}."
            )
        table.uns[SLIDE_META_KEY] = {
            **dict(table.uns.get(SLIDE_META_KEY, {})),
            "technology": "Visium",
            "spot_diameter_um": VISIUM_DIAMETER_UM,
            "spot_pitch_um": VISIUM_PITCH_UM,
            "image": fullres[0].name if fullres else "spatial/tissue_hires_image.png",
            "source": folder.name,
        }
        sdata.tables[key] = table
    for key in list(sdata.shapes):
        shapes = sdata.shapes[key]
        if "radius" in shapes.columns:
            shapes["radius"] = shapes["radius"] * (VISIUM_DIAMETER_UM / SPACERANGER_SPOT_UM)
    return sdata
