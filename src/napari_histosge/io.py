"""Read slides into SpatialData, find their image, spots and table, and validate them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = [
    "SLIDE_META_KEY",
    "SlideKeys",
    "convert",
    "counts_or_lognorm",
    "image_levels",
    "is_log_normalized",
    "load_sample",
    "read_her2st",
    "read_slide",
    "read_visium",
    "resolve_keys",
    "validate_slide",
]

SLIDE_META_KEY = "histosge_slide"
MIN_SPOTS = 10
_PYRAMID_MIN = 4096
#: Space Ranger's ``spot_diameter_fullres`` spans a theoretical 65 µm spot; Visium spots are 55 µm.
SPACERANGER_SPOT_UM = 65.0


@dataclass(frozen=True)
class SlideKeys:
    """Names of the H&E image, the spot circles and the table annotating them."""

    image_key: str
    spots_key: str
    table_key: str


# --------------------------------------------------------------------------------------------
# Images


def _uint8_factor(dtype: np.dtype, hi: float) -> float:
    """Factor taking an image of ``dtype`` whose maximum is ``hi`` to the 0-255 range.

    Integers are scaled by their bit depth (an 8-, 10-, 12- or 16-bit range), floats up to 1
    by 255; values already within 0-255 are kept.
    """
    if np.issubdtype(dtype, np.floating):
        return 255.0 if hi <= 1.0 else 1.0
    if hi <= 255:
        return 1.0
    bits = int(np.ceil(np.log2(hi + 1.0)))
    return 255.0 / (2.0**bits - 1.0)


def _rgb_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    """Return ``(y, x, 3)`` uint8, converting grayscale, RGBA and 16-bit images with a warning."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        warnings.warn(f"{what} is grayscale; converted to RGB.", UserWarning, stacklevel=3)
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(
            f"Expected {what} to be an RGB image (rows, columns, 3), found shape {arr.shape}."
        )
    if arr.shape[2] == 4:
        warnings.warn(f"{what} is RGBA; the alpha channel was dropped.", UserWarning, stacklevel=3)
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError(f"Expected {what} to hold numbers, found dtype {arr.dtype}.")
        warnings.warn(
            f"{what} has dtype {arr.dtype}; rescaled to uint8.", UserWarning, stacklevel=3
        )
        hi = float(np.nanmax(arr)) if arr.size else 0.0
        scaled = np.nan_to_num(arr.astype(np.float32)) * _uint8_factor(arr.dtype, hi)
        arr = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _rgb_uint8_lazy(data: Any, what: str) -> Any:
    """Convert ``(c, y, x)`` data to RGB uint8 lazily (dask), like :func:`_rgb_uint8`."""
    import dask.array as da

    data = da.asarray(data)
    c = data.shape[0]
    if c in (1, 2):
        kind = "grayscale" if c == 1 else "grayscale with alpha"
        warnings.warn(f"{what} is {kind}; converted to RGB.", UserWarning, stacklevel=3)
        data = da.concatenate([data[:1]] * 3, axis=0)
    elif c == 4:
        warnings.warn(f"{what} is RGBA; the alpha channel was dropped.", UserWarning, stacklevel=3)
        data = data[:3]
    elif c != 3:
        raise ValueError(f"Expected {what} to have 3 (RGB) channels, found {c}.")
    if data.dtype != np.uint8:
        if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
            raise ValueError(f"Expected {what} to hold numbers, found dtype {data.dtype}.")
        warnings.warn(
            f"{what} has dtype {data.dtype}; rescaled to uint8.", UserWarning, stacklevel=3
        )
        hi = float(da.nanmax(data).compute())
        factor = _uint8_factor(data.dtype, hi)
        data = da.clip(da.round(da.nan_to_num(data.astype(np.float32)) * factor), 0, 255)
        data = data.astype(np.uint8)
    return data


def _read_image_file(path: Path) -> np.ndarray:
    """Decode an image file to ``(y, x, 3)`` uint8 (one decoded copy in memory)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"Expected an image file at `{path}`, found nothing.")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # whole-slide H&E images are legitimately huge
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(
            f"Expected a readable image at `{path}`, found an unreadable or truncated file ({err})."
        ) from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return _rgb_uint8(arr, f"image `{path.name}`")


def _scale_factors(height: int, width: int) -> list[int]:
    """Factors of 2 for a pyramid down to about 1024 px, for images larger than 4096 px."""
    size = max(height, width)
    if size <= _PYRAMID_MIN:
        return []
    factors: list[int] = []
    while size > 1024 and len(factors) < 6:
        factors.append(2)
        size //= 2
    return factors


def _cyx(rgb: np.ndarray) -> Any:
    """Wrap a decoded ``(y, x, 3)`` image as a chunked ``(c, y, x)`` dask view (no copy made)."""
    import dask.array as da

    return da.from_array(rgb, chunks=(1024, 1024, 3)).transpose(2, 0, 1)


def _parse_image(data: Any, transformations: dict[str, Any] | None = None) -> Any:
    """Parse ``(c, y, x)`` uint8 data as an image element; a chunked pyramid when large."""
    from spatialdata.models import Image2DModel

    h, w = data.shape[1:]
    factors = _scale_factors(h, w)
    return Image2DModel.parse(
        data,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        transformations=transformations,
        scale_factors=factors or None,
        chunks=(3, 1024, 1024),
    )


def image_levels(image: Any) -> list[Any]:
    """Return the levels of an image element, finest first, as ``(c, y, x)`` DataArrays.

    Examples
    --------
    >>> levels = image_levels(load_sample().images["V1_Adult_Mouse_Brain_image"])
    >>> levels[0].dims
    ('c', 'y', 'x')
    """
    if hasattr(image, "children") and len(getattr(image, "children", {})) > 0:
        out = []
        for name in sorted(image.children, key=lambda s: int(s.replace("scale", "") or 0)):
            node = image[name]
            out.append(next(iter(node.ds.data_vars.values())))
        return out
    return [image]


# --------------------------------------------------------------------------------------------
# Readers


def _find_one(folder: Path, pattern: str, what: str) -> Path:
    hits = sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))
    if len(hits) != 1:
        raise ValueError(
            f"Expected exactly one {what} (`{pattern}`) in `{folder}`, found {len(hits)}: "
            f"{[h.name for h in hits]}."
        )
    return hits[0]


def _is_her2st_folder(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*_selection.tsv")) and any(path.glob("*.tsv.gz"))


def _is_visium_folder(path: Path) -> bool:
    return (
        path.is_dir()
        and (path / "spatial").is_dir()
        and any(path.glob("*filtered_feature_bc_matrix.h5"))
    )


def _table(
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


def _circles(xy: np.ndarray, radius: float) -> Any:
    """Build a circles ``ShapesModel`` element indexed ``0..n-1`` (the table's ``instance_id``)."""
    import pandas as pd
    from spatialdata.models import ShapesModel

    return ShapesModel.parse(
        np.asarray(xy, dtype=float),
        geometry=0,
        radius=np.full(len(xy), float(radius)),
        index=pd.RangeIndex(len(xy), name="instance_id"),
    )


def _check_counts(matrix: Any, what: str) -> None:
    import scipy.sparse as sp

    data = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"Expected numeric counts in {what}, found dtype {data.dtype}.")
    n_nan = int(np.isnan(data).sum()) if np.issubdtype(data.dtype, np.floating) else 0
    if n_nan:
        raise ValueError(f"Expected counts without NaN in {what}, found {n_nan} NaN values.")
    n_neg = int((data < 0).sum())
    if n_neg:
        raise ValueError(f"Expected non-negative counts in {what}, found {n_neg} negative values.")


def _st_px_per_pitch(spots: Any) -> float | None:
    """Pixels per array step (200 µm) from a linear fit of pixel positions on array positions."""
    cols = ("new_x", "new_y") if {"new_x", "new_y"} <= set(spots.columns) else ("x", "y")
    slopes = []
    for array_col, pixel_col in zip(cols, ("pixel_x", "pixel_y"), strict=True):
        u = spots[array_col].to_numpy(dtype=float)
        v = spots[pixel_col].to_numpy(dtype=float)
        if np.ptp(u) >= 1:
            slopes.append(abs(float(np.polyfit(u, v, 1)[0])))
    return float(np.mean(slopes)) if slopes else None


def read_her2st(folder: str | Path) -> SpatialData:
    """Read one legacy Spatial Transcriptomics section laid out as in the her2st repository.

    The folder holds the counts (``*.tsv.gz``, spots x genes, rows named ``"{x}x{y}"``), the
    spot file (``*_selection.tsv`` with ``x y new_x new_y pixel_x pixel_y``) and one H&E
    ``.jpg``. ``pixel_x`` is the column and ``pixel_y`` the row of the spot centre in the JPEG
    and are used as they are (identity transformation). Spots are 100 µm across, 200 µm apart
    on a square array; µm per pixel comes from a linear fit of the pixel positions on the
    array positions (pixels per 200 µm step). Spots of the spot file without counts are
    dropped.

    Parameters
    ----------
    folder
        The section's folder.

    Returns
    -------
    SpatialData with ``{section}_image`` (RGB, a chunked pyramid), ``{section}_spots``
    (circles of 50 µm radius) and ``table`` (raw counts in ``X``, sparse; spot ids
    ``"{x}x{y}"`` as ``obs_names``).

    Examples
    --------
    >>> sdata = read_her2st("C2/")  # doctest: +SKIP
    >>> sorted(sdata.shapes)  # doctest: +SKIP
    ['C2_spots']
    """
    import pandas as pd
    import scipy.sparse as sp
    from spatialdata import SpatialData

    from .geometry import ST_DIAMETER_UM, ST_PITCH_UM, neighbour_pairs

    folder = Path(folder)
    counts_path = _find_one(folder, "*.tsv.gz", "counts file")
    spots_path = _find_one(folder, "*_selection.tsv", "spot file")
    image_path = _find_one(folder, "*.jpg", "H&E image")
    section = spots_path.name.replace("_selection.tsv", "")

    try:
        counts = pd.read_csv(counts_path, sep="\t", index_col=0)
        spots = pd.read_csv(spots_path, sep="\t")
    except (OSError, EOFError, ValueError, pd.errors.ParserError) as err:
        raise ValueError(
            f"Expected tab-separated counts and spot files in `{folder}`, could not parse them: "
            f"{err}"
        ) from err
    need = {"x", "y", "pixel_x", "pixel_y"}
    if not need.issubset(spots.columns):
        raise ValueError(
            f"Expected columns {sorted(need)} in `{spots_path.name}`, found {list(spots.columns)}."
        )
    spots.index = pd.Index(
        [f"{int(x)}x{int(y)}" for x, y in zip(spots["x"], spots["y"], strict=True)]
    )
    counts.index = counts.index.astype(str)
    if not counts.index.is_unique:
        dup = counts.index[counts.index.duplicated()].unique().tolist()
        raise ValueError(
            f"Expected unique spot ids in `{counts_path.name}`, found repeats {dup[:5]}."
        )
    missing = [s for s in counts.index if s not in spots.index]
    if missing:
        raise ValueError(
            f'Expected every counts row of `{counts_path.name}` (named "{{x}}x{{y}}") in '
            f"`{spots_path.name}`; {len(missing)} of {len(counts)} spot ids have no position, "
            f"e.g. {missing[:5]}."
        )
    if len(counts) < MIN_SPOTS:
        raise ValueError(f"Expected at least {MIN_SPOTS} spots with counts, found {len(counts)}.")
    values = counts.to_numpy()
    _check_counts(values, f"`{counts_path.name}`")
    spots_all = spots
    spots = spots.loc[~spots.index.duplicated()].loc[counts.index]
    xy = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    if not np.isfinite(xy).all():
        raise ValueError(f"Expected finite pixel_x and pixel_y in `{spots_path.name}`, found NaN.")

    rgb = _read_image_file(image_path)
    h, w = rgb.shape[:2]
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= w) | (xy[:, 1] < 0) | (xy[:, 1] >= h)
    if outside.any():
        raise ValueError(
            f"Expected spot centres inside the {w} x {h} image `{image_path.name}`, found "
            f"{int(outside.sum())} outside (e.g. {list(spots.index[outside][:3])})."
        )
    px_per_pitch = _st_px_per_pitch(spots_all) or neighbour_pairs(xy)[1]
    um_per_px = ST_PITCH_UM / px_per_pitch
    spots_key = f"{section}_spots"
    meta = {
        "technology": "ST",
        "spot_diameter_um": ST_DIAMETER_UM,
        "spot_pitch_um": ST_PITCH_UM,
        "um_per_px": um_per_px,
        "image": image_path.name,
        "source": folder.name,
    }
    table = _table(
        sp.csr_matrix(values.astype(np.float32)),
        list(counts.index),
        [str(g) for g in counts.columns],
        spots_key,
        xy,
        meta,
        {"array_x": spots["x"].to_numpy(int), "array_y": spots["y"].to_numpy(int)},
    )
    image = _parse_image(_cyx(rgb))
    return SpatialData(
        images={f"{section}_image": image},
        shapes={spots_key: _circles(xy, ST_DIAMETER_UM / um_per_px / 2.0)},
        tables={"table": table},
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

    from .geometry import VISIUM_DIAMETER_UM, VISIUM_PITCH_UM

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
    counts = _find_one(folder, "*filtered_feature_bc_matrix.h5", "Visium counts file")
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


def read_slide(
    path: str | Path,
    *,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
) -> SpatialData:
    """Read a slide: a SpatialData ``.zarr``, a Space Ranger Visium folder or an ST section folder.

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
    if (p / "zarr.json").exists() or (p / ".zgroup").exists() or p.suffix == ".zarr":
        try:
            sdata = sd.read_zarr(p)
        except Exception as err:  # noqa: BLE001 - re-raised with the path and the cause
            raise ValueError(
                f"Expected a SpatialData store at `{p}`, could not read it: {err}"
            ) from err
    elif _is_her2st_folder(p):
        sdata = read_her2st(p)
    elif _is_visium_folder(p):
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
    data = _rgb_uint8_lazy(first.transpose("c", "y", "x").data, f"image `{image_key}`")
    tf = get_transformation(element, get_all=True)
    del sdata.images[image_key]
    sdata.images[image_key] = _parse_image(data, dict(tf))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Element discovery and validation


def _is_circles(sdata: SpatialData, key: str) -> bool:
    return key in sdata.shapes and "radius" in sdata.shapes[key].columns


def _table_regions(table: AnnData) -> list[str]:
    attrs = table.uns.get("spatialdata_attrs", {})
    region = attrs.get("region", [])
    return [region] if isinstance(region, str) else list(region)


def _coordinate_systems(element: Any) -> set[str]:
    from spatialdata.transformations import get_transformation

    return set(get_transformation(element, get_all=True))


def _image_size(image: Any) -> int:
    first = image_levels(image)[0]
    return int(first.sizes["y"] * first.sizes["x"])


def resolve_keys(
    sdata: SpatialData,
    *,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
) -> SlideKeys:
    """Find the H&E image, the spot circles and the table; explicit keys override.

    The table is one that annotates a circles element; the image is the largest one sharing a
    coordinate system with the spots. Elements written by this package (``histosge_*``) are
    never picked automatically. Explicit keys are checked: an unknown key raises ``KeyError``
    listing the available ones, a wrong kind of element a ``ValueError``.

    Parameters
    ----------
    sdata
        The slide.
    image_key, spots_key, table_key
        Elements to use instead of the detected ones.

    Returns
    -------
    The chosen keys.

    Examples
    --------
    >>> keys = resolve_keys(load_sample())
    >>> keys.image_key, keys.spots_key, keys.table_key
    ('V1_Adult_Mouse_Brain_image', 'V1_Adult_Mouse_Brain_spots', 'table')
    """

    def own(k: str) -> bool:
        return k.startswith("histosge_")

    if len(sdata.images) == 0:
        raise ValueError("Expected an H&E image element in the store, found no image.")
    circles = [k for k in sdata.shapes if _is_circles(sdata, k)]
    if not circles:
        raise ValueError(
            f"Expected a circles shapes element for the spots, found shapes {list(sdata.shapes)}."
        )
    if len(sdata.tables) == 0:
        raise ValueError("Expected a table annotating the spots, found no table.")

    if table_key is not None:
        if table_key not in sdata.tables:
            raise KeyError(
                f"Expected `table_key` to be one of {list(sdata.tables)}, found `{table_key}`."
            )
        tables = [table_key]
    else:
        tables = [k for k in sdata.tables if not own(k)]
    candidates = [
        (t, r) for t in tables for r in _table_regions(sdata.tables[t]) if _is_circles(sdata, r)
    ]
    if spots_key is not None:
        if spots_key not in sdata.shapes:
            raise KeyError(
                f"Expected `spots_key` to be one of {list(sdata.shapes)}, found `{spots_key}`."
            )
        if not _is_circles(sdata, spots_key):
            raise ValueError(
                f"Expected `{spots_key}` to be circles (a `radius` column), found other shapes."
            )
        candidates = [(t, r) for t, r in candidates if r == spots_key]
    if not candidates:
        which = f"`{table_key}`" if table_key else f"any of {tables}"
        target = f"`{spots_key}`" if spots_key else f"circles {circles}"
        found = {t: _table_regions(sdata.tables[t]) for t in sdata.tables}
        raise ValueError(f"Expected {which} to annotate {target}, found tables annotating {found}.")
    candidates.sort(key=lambda tr: (tr[0] != "table", own(tr[1])))
    t_key, s_key = candidates[0]

    spot_cs = _coordinate_systems(sdata.shapes[s_key])
    if image_key is not None:
        if image_key not in sdata.images:
            raise KeyError(
                f"Expected `image_key` to be one of {list(sdata.images)}, found `{image_key}`."
            )
        if not (_coordinate_systems(sdata.images[image_key]) & spot_cs):
            raise ValueError(
                f"Expected image `{image_key}` to share a coordinate system with `{s_key}` "
                f"({sorted(spot_cs)}), found "
                f"{sorted(_coordinate_systems(sdata.images[image_key]))}."
            )
        i_key = image_key
    else:
        images = [
            k for k in sdata.images if not own(k) and _coordinate_systems(sdata.images[k]) & spot_cs
        ]
        if not images:
            raise ValueError(
                f"Expected an image in the coordinate systems of `{s_key}` ({sorted(spot_cs)}), "
                f"found images {list(sdata.images)} in other systems."
            )
        i_key = max(images, key=lambda k: _image_size(sdata.images[k]))
    return SlideKeys(image_key=i_key, spots_key=s_key, table_key=t_key)


def is_log_normalized(adata: AnnData) -> bool:
    """Whether the table holds already normalised (e.g. log1p) values rather than raw counts.

    Raw counts are non-negative integers: any non-integer or negative value means the matrix
    was transformed (for example ``log1p`` after ``normalize_total``). The counts are read from
    ``layers["counts"]`` when present, else from ``X``.

    Parameters
    ----------
    adata
        The spot table.

    Returns
    -------
    ``True`` when the values are not raw counts.

    Examples
    --------
    >>> import anndata as ad
    >>> is_log_normalized(ad.AnnData(np.array([[0.0, 1.5], [2.0, 0.3]])))
    True
    >>> is_log_normalized(ad.AnnData(np.array([[0.0, 1.0], [2.0, 7.0]])))
    False
    """
    import scipy.sparse as sp

    x, _ = _count_matrix(adata)
    data = x.data if sp.issparse(x) else np.asarray(x).ravel()
    if data.size == 0 or not np.issubdtype(data.dtype, np.number):
        return False
    if np.issubdtype(data.dtype, np.integer):
        return bool((data < 0).any())
    finite = data[np.isfinite(data)]
    return bool((finite < 0).any() or np.any(np.abs(finite - np.round(finite)) > 1e-6))


def _count_matrix(adata: AnnData) -> tuple[Any, str]:
    if "counts" in adata.layers:
        return adata.layers["counts"], "layers['counts']"
    return adata.X, "X"


def counts_or_lognorm(adata: AnnData) -> tuple[Any, bool]:
    """Return the expression matrix and whether it is already log-normalised.

    Raw counts (``layers["counts"]`` when present, else ``X``) are returned as they are with
    ``False``. Non-integer values are returned with ``True`` and a ``UserWarning``: they must
    be used as they are, never normalised a second time.

    Parameters
    ----------
    adata
        The spot table.

    Returns
    -------
    The matrix (dense or sparse, not copied) and ``is_lognorm``.

    Examples
    --------
    >>> import anndata as ad
    >>> _, lognorm = counts_or_lognorm(ad.AnnData(np.ones((3, 2))))
    >>> lognorm
    False
    """
    import scipy.sparse as sp

    x, where = _count_matrix(adata)
    data = x.data if sp.issparse(x) else np.asarray(x)
    if np.issubdtype(data.dtype, np.floating) and np.isnan(data).any():
        raise ValueError(
            f"Expected expression values without NaN in the table's {where}, found "
            f"{int(np.isnan(data).sum())} NaN values."
        )
    lognorm = is_log_normalized(adata)
    if lognorm and (data < 0).any():
        raise ValueError(
            "Expected raw counts or log-normalised values (never negative) in the table's "
            f"{where}, found {int((data < 0).sum())} negative values (scaled data?); store raw "
            "counts in X or layers['counts']."
        )
    if lognorm:
        warnings.warn(
            f"The table's {where} holds non-integer values: treated as already log-normalised "
            "expression and used as is (no second normalisation).",
            UserWarning,
            stacklevel=2,
        )
    return x, lognorm


def validate_slide(sdata: SpatialData, keys: SlideKeys) -> None:
    """Check that a slide can be processed; raise ``ValueError``/``KeyError`` saying what is wrong.

    Checks that the three elements exist, the image is 8-bit RGB ``(c, y, x)``, the table
    annotates the spots (every row names a circle), there are at least 10 spots, the counts
    hold no NaN or negative values, and every spot centre lies on the image. Nothing is
    modified.

    Parameters
    ----------
    sdata
        The slide.
    keys
        The image, spots and table to check, usually from :func:`resolve_keys`.

    Examples
    --------
    >>> sdata = load_sample()
    >>> validate_slide(sdata, resolve_keys(sdata))
    """
    from .geometry import spot_geometry

    for key, container, what in (
        (keys.image_key, sdata.images, "image_key"),
        (keys.spots_key, sdata.shapes, "spots_key"),
        (keys.table_key, sdata.tables, "table_key"),
    ):
        if key not in container:
            raise KeyError(f"Expected `{what}` to be one of {list(container)}, found `{key}`.")
    first = image_levels(sdata.images[keys.image_key])[0]
    if first.sizes.get("c") != 3 or first.dtype != np.uint8:
        raise ValueError(
            f"Expected image `{keys.image_key}` to be 8-bit RGB (3 channels, uint8), found "
            f"{first.sizes.get('c')} channels of {first.dtype}; open the slide with read_slide to "
            "convert it."
        )
    if not _is_circles(sdata, keys.spots_key):
        raise ValueError(
            f"Expected `{keys.spots_key}` to be circles (a `radius` column), found columns "
            f"{list(sdata.shapes[keys.spots_key].columns)}."
        )
    table = sdata.tables[keys.table_key]
    regions = _table_regions(table)
    if keys.spots_key not in regions:
        raise ValueError(
            f"Expected table `{keys.table_key}` to annotate `{keys.spots_key}`, found it "
            f"annotating {regions}."
        )
    if table.n_obs < MIN_SPOTS:
        raise ValueError(f"Expected at least {MIN_SPOTS} spots, found {table.n_obs}.")
    x, where = _count_matrix(table)
    _check_counts(x, f"table `{keys.table_key}` {where}")
    geom = spot_geometry(
        sdata, image_key=keys.image_key, spots_key=keys.spots_key, table_key=keys.table_key
    )
    h, w = first.sizes["y"], first.sizes["x"]
    c = geom.centers_px
    outside = ~np.isfinite(c).all(axis=1) | (c[:, 0] < 0) | (c[:, 0] > w) | (c[:, 1] < 0)
    outside |= c[:, 1] > h
    if outside.any():
        raise ValueError(
            f"Expected spot centres inside image `{keys.image_key}` ({w} x {h} px), found "
            f"{int(outside.sum())} of {len(c)} outside, e.g. {list(geom.spot_ids[outside][:3])}."
        )


# --------------------------------------------------------------------------------------------
# Conversion and the sample


def convert(src: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a slide (``.zarr``, Visium folder or ST section folder) to a SpatialData ``.zarr``.

    The slide is read with :func:`read_slide` and checked with :func:`validate_slide`; the
    store goes to a temporary sibling first and is moved into place when complete, so a failed
    write leaves nothing half-written and an existing output untouched.

    Parameters
    ----------
    src
        The slide to convert.
    out
        The ``.zarr`` to write.
    overwrite
        Replace ``out`` when it exists; otherwise an existing ``out`` is refused.

    Returns
    -------
    The absolute path of the written store.

    Examples
    --------
    >>> convert("her2st/C2/", "C2.zarr")  # doctest: +SKIP
    PosixPath('/data/C2.zarr')
    """
    out_path = Path(out).resolve()
    src_path = Path(src).resolve()
    if src_path == out_path or src_path in out_path.parents:
        raise ValueError(
            f"Expected an output outside the input, found `{out_path}` for input `{src_path}`."
        )
    if out_path.exists() and not overwrite:
        raise FileExistsError(
            f"Expected output `{out_path}` not to exist, found it; pass overwrite=True "
            "(--overwrite) to replace it."
        )
    sdata = read_slide(src_path)
    keys = resolve_keys(sdata)
    validate_slide(sdata, keys)
    from .export import write_atomic

    return write_atomic(sdata, out_path)


def load_sample() -> SpatialData:
    """Load the bundled real sample: a Visium adult mouse brain crop (49 spots, 1,999 genes).

    10x Genomics V1_Adult_Mouse_Brain (CC BY 4.0), as distributed in squidpy's test data
    (BSD-3-Clause). Its table holds log1p-normalised values, not raw counts. Elements:
    ``V1_Adult_Mouse_Brain_image``, ``V1_Adult_Mouse_Brain_spots``, ``table``.

    Returns
    -------
    The sample as in-memory SpatialData.

    Examples
    --------
    >>> load_sample().tables["table"].n_obs
    49
    """
    from ._sample_data import load_sample as _load

    return _load()
