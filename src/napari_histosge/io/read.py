"""Read a slide from a SpatialData store, a Visium folder or an ST section folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.images import image_levels, parse_image, rgb_uint8_lazy

from .her2st import is_her2st_folder, read_her2st
from .keys import resolve_keys
from .visium import is_visium_folder, read_visium
from .wsi import is_wsi_path, read_wsi

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["read_slide"]


def read_slide(
    path: str | Path,
    *,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
) -> SpatialData:
    """Read a slide: a SpatialData ``.zarr``, a Space Ranger Visium folder or an ST section folder.

    A whole-slide file (``.svs``, ``.ndpi``, pyramidal ``.tif``, ...) gives its H&E image only,
    lazily and with the file's pyramid (:func:`~napari_histosge.io.wsi.read_wsi`).

    The result has an RGB uint8 image, the spot circles with their true radius and a table
    annotating them; :func:`resolve_keys` finds them. An H&E image that is not 8-bit RGB
    (grayscale, RGBA, 16-bit) is converted lazily in memory, with a warning; the files on disk
    are never changed.

    Parameters
    ----------
    path
        The store or folder.
    image_key, spots_key, table_key
        Elements to use; checked when given, found automatically otherwise.

    Returns
    -------
    The slide as SpatialData (lazy, dask-backed images).

    Examples
    --------
    >>> sdata = read_slide("section.zarr")  # doctest: +SKIP
    >>> sdata = read_slide("her2st/C2/", image_key="C2_image")  # doctest: +SKIP
    """
    import spatialdata as sd

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"Expected a .zarr store or a slide folder at `{p}`, found nothing."
        )
    if is_wsi_path(p):  # a whole-slide file: the H&E image only, no spots or table
        return read_wsi(p, image_key=image_key)
    if (p / "zarr.json").exists() or (p / ".zgroup").exists() or p.suffix == ".zarr":
        try:
            sdata = sd.read_zarr(p)
        except Exception as err:  # noqa: BLE001 - re-raised with the path and the cause
            sdata = _read_without_damaged_cache(p, err)
            if sdata is None:
                raise ValueError(
                    f"Expected a SpatialData store at `{p}`, could not read it: {err}"
                ) from err
    elif is_her2st_folder(p):
        sdata = read_her2st(p)
    elif is_visium_folder(p):
        sdata = read_visium(p)
    else:
        found = sorted(c.name for c in p.iterdir())[:10] if p.is_dir() else [p.name]
        raise ValueError(
            f"Expected a SpatialData .zarr, a Space Ranger Visium folder (spatial/ and "
            f"*filtered_feature_bc_matrix.h5) or an ST section folder (*.tsv.gz, *_selection.tsv, "
            f"*.jpg) at `{p}`, found {found}."
        )
    keys = resolve_keys(sdata, image_key=image_key, spots_key=spots_key, table_key=table_key)
    _ensure_rgb_element(sdata, keys.image_key)
    return sdata


def _ensure_rgb_element(sdata: SpatialData, image_key: str) -> None:
    """Replace, in memory, an image that is not 8-bit RGB by a lazily converted copy."""
    from spatialdata.transformations import get_transformation

    element = sdata.images[image_key]
    first = image_levels(element)[0]
    if first.sizes.get("c") == 3 and first.dtype == np.uint8:
        return
    if "c" not in first.dims:
        raise ValueError(
            f"Expected image `{image_key}` to have a channel axis, found {first.dims}."
        )
    data = rgb_uint8_lazy(first.transpose("c", "y", "x").data, f"image `{image_key}`")
    tf = get_transformation(element, get_all=True)
    del sdata.images[image_key]
    sdata.images[image_key] = parse_image(data, dict(tf))  # type: ignore[arg-type]


def _read_without_damaged_cache(p: Path, err: Exception) -> Any:
    """Read a store whose only damage is a feature cache left half-written by an older version.

    The cache can be recomputed: it is skipped with one notice and rewritten by the next
    extraction. Returns ``None`` when the damage is elsewhere.
    """
    import warnings

    import spatialdata as sd

    if "histosge_features_" not in str(err):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sdata = sd.read_zarr(p, on_bad_files="warn")
        except Exception:  # noqa: BLE001 - the original error is the one to report
            return None
    warnings.warn(
        f"skipped a damaged feature cache in `{p}` (left by an interrupted run); it will be "
        "computed and written again.",
        UserWarning,
        stacklevel=3,
    )
    return sdata
