"""Whole-slide image files (pyramidal TIFF, ``.svs``, ``.ndpi``, ``.scn``, ``.bif``) as SpatialData.

The file is read with `tiffslide <https://github.com/Bayer-Group/tiffslide>`_ (pure Python, on
tifffile and zarr): each pyramid level the file holds becomes one scale of a multiscale
``Image2DModel`` element backed by dask, reading the file's own tiles on demand, so nothing is
decoded until a region is asked for and no full-resolution copy is ever made. A file with a
single large level gets a lazily downsampled pyramid instead.

The scale (µm per pixel) comes from the file: Aperio's ``MPP``, the NDPI and SCN metadata or the
TIFF resolution tags (``ResolutionUnit`` of inch, centimetre, millimetre or micrometre). It is
kept in the SpatialData's ``attrs`` under :data:`UM_PER_PX_ATTR` (``{image_key: µm per px}``),
which a converted store and every output store carry, so that ``histosge predict`` needs no
``--um-per-px`` for them.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = [
    "UM_PER_PX_ATTR",
    "WSI_SUFFIXES",
    "is_slide_file",
    "is_wsi_path",
    "read_wsi",
    "stored_um_per_px",
    "wsi_um_per_px",
]

#: File name endings read as whole-slide images (TIFF-based formats tiffslide reads).
WSI_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif")
#: Formats that need OpenSlide's C library, which this package does not use.
_OPENSLIDE_ONLY = (".mrxs", ".vms", ".vmu", ".svslide")
#: Key of ``SpatialData.attrs`` holding ``{image_key: µm per pixel}``.
UM_PER_PX_ATTR = "histosge_um_per_px"
#: µm per pixel accepted from a file's metadata: 72 dpi (353 µm) defaults are not a scan.
_PLAUSIBLE_UM = (0.02, 50.0)
_UNITS = ("INCH", "CENTIMETER", "MILLIMETER", "MICROMETER")
_CHUNK = 1024
#: A tiled single-level RGB TIFF larger than this on a side is read as a slide.
_LARGE_PX = 8192


def is_wsi_path(path: str | Path) -> bool:
    """Whether ``path`` names a whole-slide file by its ending (an existing file).

    Examples
    --------
    >>> is_wsi_path("/nonexistent/slide.svs")
    False
    """
    p = Path(path)
    return p.suffix.lower() in WSI_SUFFIXES and p.is_file()


def is_slide_file(path: str | Path) -> bool:
    """Whether ``path`` is an RGB whole-slide image: a vendor format or a tiled pyramidal TIFF.

    A tiled RGB TIFF of a single level counts when it is large (over :data:`_LARGE_PX` px on a
    side: napari's own reader would decode it whole). A plain TIFF (strips, a small single
    level, or not RGB) is not: napari's own reader opens it.

    Examples
    --------
    >>> is_slide_file("/nonexistent/photo.tif")
    False
    """
    if not is_wsi_path(path):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_svs or tif.is_ndpi or tif.is_scn or tif.is_bif:
                return True
            series = tif.series[0]
            page = series.pages[0]
            rgb = series.shape[-1] in (3, 4) and "S" in series.axes
            big = max(series.shape[:2]) > _LARGE_PX
            return bool(
                rgb and getattr(page, "is_tiled", False) and (len(series.levels) > 1 or big)
            )
    except (OSError, ValueError, IndexError, tifffile.TiffFileError):
        return False


def _open(path: Path) -> Any:
    import tiffslide

    if path.suffix.lower() in _OPENSLIDE_ONLY:
        raise ValueError(
            f"Expected a TIFF-based slide (.svs, .tif, .ndpi, .scn, .bif), found `{path.name}`; "
            "convert it to a pyramidal TIFF first (e.g. `vips tiffsave in.mrxs out.tif --tile "
            "--pyramid --compression jpeg`)."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Expected a whole-slide file at `{path}`, found nothing.")
    try:
        return tiffslide.TiffSlide(path)
    except Exception as err:  # noqa: BLE001 - tiffslide raises many kinds; re-raised with the path
        raise ValueError(f"Expected a readable whole-slide file at `{path}`: {err}") from err


def wsi_um_per_px(slide: Any) -> float | None:
    """µm per pixel of an open ``tiffslide.TiffSlide``; ``None`` when its metadata has none.

    Vendor values (Aperio ``MPP``, NDPI, SCN) are taken as they are; TIFF resolution tags only
    with a physical ``ResolutionUnit``. A value outside 0.02-50 µm (such as a 72 dpi default)
    counts as none.
    """
    props = slide.properties
    mpp = [props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y")]
    vendor = props.get("tiffslide.vendor")
    unit = str(props.get("tiff.ResolutionUnit") or "").upper()
    if vendor is None and unit not in _UNITS:
        return None
    values = [float(v) for v in mpp if v is not None and np.isfinite(float(v)) and float(v) > 0]
    if not values:
        return None
    um = float(np.mean(values))
    return um if _PLAUSIBLE_UM[0] <= um <= _PLAUSIBLE_UM[1] else None


def _key_for(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem) or "slide"
    return f"{stem}_image"


def _levels(slide: Any, name: str) -> list[Any]:
    """Return the file's levels as ``(c, y, x)`` uint8 dask arrays, finest first (same aspect)."""
    import dask.array as da

    from napari_histosge.images import rgb_uint8_lazy

    group = slide.zarr_group
    out = []
    w0, h0 = slide.level_dimensions[0]
    for i, (w, h) in enumerate(slide.level_dimensions):
        if i and (w < 16 or h < 16 or abs(w0 / w - h0 / h) > 0.02 * (w0 / w)):
            break  # thumbnails and odd levels end the pyramid
        arr = group[str(i)]
        if arr.ndim == 2:
            arr_da = da.from_zarr(arr, chunks=(_CHUNK, _CHUNK))[None]
        else:
            arr_da = da.from_zarr(arr, chunks=(_CHUNK, _CHUNK, arr.shape[-1])).transpose(2, 0, 1)
        with warnings.catch_warnings():
            if i:
                warnings.simplefilter("ignore", UserWarning)  # warned once, for level 0
            out.append(rgb_uint8_lazy(arr_da, f"slide `{name}`"))
    return out


def _multiscale(levels: list[Any]) -> Any:
    """Build a multiscale ``Image2DModel`` element (DataTree) from levels, finest first."""
    import xarray as xr
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, set_transformation
    from spatialdata.transformations._utils import compute_coordinates

    from napari_histosge.images import parse_image

    if len(levels) == 1:
        return parse_image(levels[0])  # a lazily computed pyramid when large
    scales = {}
    for i, data in enumerate(levels):
        arr = Image2DModel.parse(data, dims=("c", "y", "x"), c_coords=["r", "g", "b"])
        arr.attrs.pop("transform", None)
        scales[f"scale{i}"] = xr.Dataset({"image": arr})
    tree = xr.DataTree.from_dict(scales)
    set_transformation(tree, {"global": Identity()}, set_all=True)
    tree = compute_coordinates(tree)
    Image2DModel().validate(tree)
    return tree


def read_wsi(
    path: str | Path, *, um_per_px: float | None = None, image_key: str | None = None
) -> SpatialData:
    """Read a whole-slide file as a SpatialData with one lazy, multiscale H&E image.

    Parameters
    ----------
    path
        A ``.svs``, ``.ndpi``, ``.scn``, ``.bif`` or (pyramidal) ``.tif`` file.
    um_per_px
        µm per scale-0 pixel; overrides the file's metadata. When neither gives one, the
        image is read without it and a prediction asks for ``--um-per-px``.
    image_key
        Name of the image element; ``<file stem>_image`` by default.

    Returns
    -------
    The slide: ``images[image_key]`` (the file's pyramid as a ``DataTree``, ``(c, y, x)`` uint8
    RGB, dask-backed) and ``attrs[UM_PER_PX_ATTR] = {image_key: µm per px}`` when known.

    Examples
    --------
    >>> sdata = read_wsi("slide.svs")  # doctest: +SKIP
    >>> stored_um_per_px(sdata, "slide_image")  # doctest: +SKIP
    0.2527
    """
    from spatialdata import SpatialData

    p = Path(path)
    if um_per_px is not None and not (np.isfinite(um_per_px) and um_per_px > 0):
        raise ValueError(f"Expected a positive µm per pixel, found `{um_per_px}`.")
    slide = _open(p)
    key = image_key or _key_for(p)
    element = _multiscale(_levels(slide, p.name))
    um = float(um_per_px) if um_per_px is not None else wsi_um_per_px(slide)
    attrs = {UM_PER_PX_ATTR: {key: um}} if um is not None else {}
    return SpatialData(images={key: element}, attrs=attrs)


def stored_um_per_px(sdata: SpatialData, image_key: str) -> float | None:
    """µm per pixel of ``image_key`` recorded by :func:`read_wsi` (kept in stores), or ``None``.

    Examples
    --------
    >>> from spatialdata import SpatialData
    >>> stored_um_per_px(SpatialData(attrs={UM_PER_PX_ATTR: {"he": 0.5}}), "he")
    0.5
    """
    table = dict(getattr(sdata, "attrs", {}) or {}).get(UM_PER_PX_ATTR) or {}
    value = table.get(image_key) if isinstance(table, dict) else None
    try:
        um = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return um if um is not None and np.isfinite(um) and um > 0 else None


def missing_um_message(source: Path | None) -> str:
    """Return the one-line error for an image whose scale is unknown."""
    where = f"`{source.name}`" if source is not None else "the image"
    return (
        f"Expected µm per pixel in {where}'s metadata (TIFF resolution tags or the scanner's "
        "MPP), found none; pass --um-per-px (e.g. 0.25 for a 40x scan, 0.5 for 20x)."
    )
