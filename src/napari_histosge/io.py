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
    "resolve_keys",
    "validate_slide",
]

SLIDE_META_KEY = "histosge_slide"
MIN_SPOTS = 10
_PYRAMID_MIN = 4096


@dataclass(frozen=True)
class SlideKeys:
    """Names of the H&E image, the spot circles and the table annotating them."""

    image_key: str
    spots_key: str
    table_key: str


# --------------------------------------------------------------------------------------------
# Images


def _rgb_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    """Return ``(y, x, 3)`` uint8, converting grayscale, RGBA and 16-bit images with a warning."""
    if arr.ndim == 2:
        warnings.warn(f"{what} is grayscale; converted to RGB.", UserWarning, stacklevel=3)
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"Expected {what} to be an RGB image (y, x, 3), found shape {arr.shape}.")
    if arr.shape[2] == 1:
        warnings.warn(f"{what} is grayscale; converted to RGB.", UserWarning, stacklevel=3)
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        warnings.warn(f"{what} is RGBA; the alpha channel was dropped.", UserWarning, stacklevel=3)
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
            hi = float(np.nanmax(arr)) if arr.size else 1.0
            scale = 255.0 / (65535.0 if hi > 255 else (1.0 if hi <= 1.0 else 255.0))
            warnings.warn(
                f"{what} has dtype {arr.dtype}; rescaled to uint8.", UserWarning, stacklevel=3
            )
            arr = np.clip(np.nan_to_num(arr.astype(np.float32)) * scale, 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"Expected {what} to hold numbers, found dtype {arr.dtype}.")
    return np.ascontiguousarray(arr)


def _read_image_file(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None
    if not path.is_file():
        raise FileNotFoundError(f"Expected an image file at `{path}`, found nothing.")
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(
            f"Expected a readable image at `{path}`, found an unreadable or truncated file ({err})."
        ) from err
    return _rgb_uint8(arr, f"image `{path.name}`")


def _parse_image(rgb: np.ndarray, transformations: dict[str, Any] | None = None) -> Any:
    from spatialdata.models import Image2DModel

    data = np.moveaxis(rgb, 2, 0)
    h, w = data.shape[1:]
    scale_factors = []
    size = max(h, w)
    while size > _PYRAMID_MIN and len(scale_factors) < 5:
        scale_factors.append(2)
        size //= 2
    return Image2DModel.parse(
        data,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        transformations=transformations,
        scale_factors=scale_factors or None,
        chunks=(3, 1024, 1024),
    )


def image_levels(image: Any) -> list[Any]:
    """The levels of an image element, finest first, as ``(c, y, x)`` DataArrays.

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
    return path.is_dir() and (
        (path / "spatial").is_dir()
        and any(path.glob("*filtered_feature_bc_matrix.h5"))
    )


def _spot_pitch(xy: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


def _table(
    counts: Any,
    spot_ids: list[str],
    genes: list[str],
    spots_key: str,
    xy: np.ndarray,
    meta: dict[str, Any],
    obs_extra: dict[str, Any] | None = None,
) -> Any:
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    obs = pd.DataFrame(
        {"region": pd.Categorical([spots_key] * len(spot_ids)), "instance_id": np.arange(len(spot_ids))},
        index=pd.Index(spot_ids),
    )
    for k, v in (obs_extra or {}).items():
        obs[k] = v
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    adata.obsm["spatial"] = np.asarray(xy, dtype=float)
    adata.uns[SLIDE_META_KEY] = meta
    return TableModel.parse(adata, region=spots_key, region_key="region", instance_key="instance_id")


def _circles(xy: np.ndarray, radius: float) -> Any:
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
    if np.isnan(data).any():
        raise ValueError(f"Expected counts without NaN in {what}, found {int(np.isnan(data).sum())} NaN.")
    if (data < 0).any():
        raise ValueError(
            f"Expected non-negative counts in {what}, found {int((data < 0).sum())} negative values."
        )


def read_her2st(folder: str | Path) -> SpatialData:
    """Read one legacy Spatial Transcriptomics section laid out as in the her2st repository.

    The folder holds the counts (``*.tsv.gz``, rows named ``"{x}x{y}"``), the spot file
    (``*_selection.tsv`` with ``x y new_x new_y pixel_x pixel_y``) and one H&E ``.jpg``.
    Spots are 100 µm across, 200 µm apart on a square array; µm per pixel is fitted from the
    spot spacing in pixels.

    Parameters
    ----------
    folder
        The section's folder.

    Returns
    -------
    SpatialData with ``{section}_image``, ``{section}_spots`` and ``table``.

    Examples
    --------
    >>> sdata = read_her2st("C2/")  # doctest: +SKIP
    """
    import pandas as pd
    import scipy.sparse as sp
    from spatialdata import SpatialData

    folder = Path(folder)
    counts_path = _find_one(folder, "*.tsv.gz", "counts file")
    spots_path = _find_one(folder, "*_selection.tsv", "spot file")
    image_path = _find_one(folder, "*.jpg", "H&E image")
    section = spots_path.name.replace("_selection.tsv", "")

    counts = pd.read_csv(counts_path, sep="\t", index_col=0)
    spots = pd.read_csv(spots_path, sep="\t")
    need = {"x", "y", "pixel_x", "pixel_y"}
    if not need.issubset(spots.columns):
        raise ValueError(
            f"Expected columns {sorted(need)} in `{spots_path.name}`, found {list(spots.columns)}."
        )
    spots.index = [f"{int(x)}x{int(y)}" for x, y in zip(spots["x"], spots["y"], strict=True)]
    counts.index = counts.index.astype(str)
    missing = [s for s in counts.index if s not in spots.index]
    if missing:
        raise ValueError(
            f"Expected every counts row of `{counts_path.name}` in `{spots_path.name}`; "
            f"{len(missing)} spot ids have no position, e.g. {missing[:5]}."
        )
    if len(counts) < MIN_SPOTS:
        raise ValueError(f"Expected at least {MIN_SPOTS} spots, found {len(counts)}.")
    values = counts.to_numpy()
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"Expected numeric counts in `{counts_path.name}`, found {values.dtype}.")
    _check_counts(values.astype(float), f"`{counts_path.name}`")
    spots = spots.loc[counts.index]
    xy = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=float)

    rgb = _read_image_file(image_path)
    h, w = rgb.shape[:2]
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= w) | (xy[:, 1] < 0) | (xy[:, 1] >= h)
    if outside.any():
        raise ValueError(
            f"Expected spot centres inside the {w} x {h} image, found {int(outside.sum())} outside "
            f"(e.g. {list(spots.index[outside][:3])})."
        )
    pitch_px = _spot_pitch(xy)
    um_per_px = 200.0 / pitch_px
    diameter_px = 100.0 / um_per_px
    spots_key = f"{section}_spots"
    meta = {
        "technology": "ST",
        "spot_diameter_um": 100.0,
        "spot_pitch_um": 200.0,
        "um_per_px": um_per_px,
        "source": str(folder.name),
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
    return SpatialData(
        images={f"{section}_image": _parse_image(rgb)},
        shapes={spots_key: _circles(xy, diameter_px / 2.0)},
        tables={"table": table},
    )


def read_visium(folder: str | Path) -> SpatialData:
    """Read a Space Ranger Visium output folder through spatialdata-io.

    A full-resolution image in the folder (a ``.tif``/``.tiff``/``.btf``/``.jpg`` next to
    ``spatial/``) is used when present, otherwise the hires image with its scale.

    Examples
    --------
    >>> sdata = read_visium("visium_out/")  # doctest: +SKIP
    """
    from spatialdata_io import visium

    folder = Path(folder)
    fullres = [
        p
        for ext in ("*.tif", "*.tiff", "*.btf", "*.jpg", "*.jpeg", "*.png")
        for p in folder.glob(ext)
    ]
    kwargs: dict[str, Any] = {}
    if len(fullres) == 1:
        kwargs["fullres_image_file"] = fullres[0]
    counts = sorted(folder.glob("*filtered_feature_bc_matrix.h5"))
    if counts:
        kwargs["counts_file"] = counts[0].name
    try:
        sdata = visium(folder, **kwargs)
    except ValueError as err:
        if "dataset_id" not in str(err):
            raise
        sdata = visium(folder, dataset_id=folder.name, **kwargs)
    for key, table in sdata.tables.items():
        meta = dict(table.uns.get(SLIDE_META_KEY, {}))
        meta.update({"technology": "Visium", "spot_diameter_um": 55.0, "spot_pitch_um": 100.0})
        table.uns[SLIDE_META_KEY] = meta
        sdata.tables[key] = table
    return sdata


def read_slide(
    path: str | Path,
    *,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
) -> SpatialData:
    """Read a slide: a SpatialData ``.zarr``, a Space Ranger Visium folder or an ST section folder.

    The result has an RGB image, the spot circles with their true radius and a table annotating
    them; ``resolve_keys`` finds them. Images that are not 8-bit RGB are converted in memory (the
    store on disk is not changed) with a warning.

    Parameters
    ----------
    path
        The store or folder.
    image_key, spots_key, table_key
        Elements to use; checked when given.

    Returns
    -------
    The slide as SpatialData.

    Examples
    --------
    >>> sdata = read_slide("section.zarr")  # doctest: +SKIP
    """
    import spatialdata as sd

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"Expected a .zarr store or a slide folder at `{p}`, found nothing.")
    if (p / "zarr.json").exists() or (p / ".zgroup").exists() or p.suffix == ".zarr":
        try:
            sdata = sd.read_zarr(p)
        except Exception as err:  # noqa: BLE001 - re-raised with the path and the cause
            raise ValueError(f"Expected a SpatialData store at `{p}`, could not read it: {err}") from err
    elif _is_her2st_folder(p):
        sdata = read_her2st(p)
    elif _is_visium_folder(p):
        sdata = read_visium(p)
    else:
        raise ValueError(
            f"Expected a SpatialData .zarr, a Space Ranger Visium folder (spatial/ and "
            f"*filtered_feature_bc_matrix.h5) or an ST section folder (*.tsv.gz, *_selection.tsv, "
            f"*.jpg) at `{p}`, found none of these."
        )
    keys = resolve_keys(sdata, image_key=image_key, spots_key=spots_key, table_key=table_key)
    _ensure_rgb_element(sdata, keys.image_key)
    return sdata


def _ensure_rgb_element(sdata: SpatialData, image_key: str) -> None:
    """Replace, in memory, an image that is not 8-bit RGB by a converted copy."""
    from spatialdata.transformations import get_transformation

    levels = image_levels(sdata.images[image_key])
    first = levels[0]
    if first.sizes.get("c") == 3 and first.dtype == np.uint8:
        return
    rgb = _rgb_uint8(np.moveaxis(np.asarray(first.values), 0, 2).squeeze(), f"image `{image_key}`")
    tf = get_transformation(sdata.images[image_key], get_all=True)
    del sdata.images[image_key]
    sdata.images[image_key] = _parse_image(rgb, dict(tf))


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
    never picked automatically.

    Examples
    --------
    >>> resolve_keys(load_sample())
    SlideKeys(image_key='V1_Adult_Mouse_Brain_image', spots_key='V1_Adult_Mouse_Brain_spots', table_key='table')
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
            raise KeyError(f"Expected `table_key` to be one of {list(sdata.tables)}, found `{table_key}`.")
        tables = [table_key]
    else:
        tables = [k for k in sdata.tables if not own(k)]
    candidates = [
        (t, r) for t in tables for r in _table_regions(sdata.tables[t]) if _is_circles(sdata, r)
    ]
    if spots_key is not None:
        if spots_key not in sdata.shapes:
            raise KeyError(f"Expected `spots_key` to be one of {list(sdata.shapes)}, found `{spots_key}`.")
        if not _is_circles(sdata, spots_key):
            raise ValueError(f"Expected `{spots_key}` to be circles (a `radius` column), found other shapes.")
        candidates = [(t, r) for t, r in candidates if r == spots_key]
    if not candidates:
        which = f"`{table_key}`" if table_key else f"any of {tables}"
        target = f"`{spots_key}`" if spots_key else f"circles {circles}"
        raise ValueError(f"Expected {which} to annotate {target}, found no table annotating them.")
    candidates.sort(key=lambda tr: (tr[0] != "table", own(tr[1])))
    t_key, s_key = candidates[0]

    spot_cs = _coordinate_systems(sdata.shapes[s_key])
    if image_key is not None:
        if image_key not in sdata.images:
            raise KeyError(f"Expected `image_key` to be one of {list(sdata.images)}, found `{image_key}`.")
        if not (_coordinate_systems(sdata.images[image_key]) & spot_cs):
            raise ValueError(
                f"Expected image `{image_key}` to share a coordinate system with `{s_key}` "
                f"({sorted(spot_cs)}), found none."
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
    """Whether the table holds already log-normalised values rather than raw counts.

    Raw counts are non-negative integers; any non-integer value means the matrix was
    normalised (for example ``log1p`` after ``normalize_total``).

    Examples
    --------
    >>> import anndata as ad
    >>> is_log_normalized(ad.AnnData(np.array([[0.0, 1.5], [2.0, 0.3]])))
    True
    """
    x, _ = _count_matrix(adata)
    import scipy.sparse as sp

    data = x.data if sp.issparse(x) else np.asarray(x).ravel()
    if data.size == 0:
        return False
    sample = data[:: max(1, data.size // 200_000)]
    return bool(np.any(np.abs(sample - np.round(sample)) > 1e-6))


def _count_matrix(adata: AnnData) -> tuple[Any, str]:
    if "counts" in adata.layers:
        return adata.layers["counts"], "layers['counts']"
    return adata.X, "X"


def counts_or_lognorm(adata: AnnData) -> tuple[Any, bool]:
    """Return the expression matrix and whether it is already log-normalised (with a warning).

    Examples
    --------
    >>> import anndata as ad
    >>> _, lognorm = counts_or_lognorm(ad.AnnData(np.ones((3, 2))))
    >>> lognorm
    False
    """
    x, where = _count_matrix(adata)
    _check_counts(x, f"the table's {where}")
    lognorm = is_log_normalized(adata)
    if lognorm:
        warnings.warn(
            f"The table's {where} holds non-integer values: treated as already log-normalised "
            "expression and used as is (no second normalisation).",
            UserWarning,
            stacklevel=2,
        )
    return x, lognorm


def validate_slide(sdata: SpatialData, keys: SlideKeys) -> None:
    """Check that the slide can be processed; raise ``ValueError`` saying what is wrong.

    Checks: an RGB image, a table annotating every spot, enough spots, spot centres on the
    image, and counts without NaN or negative values.

    Examples
    --------
    >>> sdata = load_sample()
    >>> validate_slide(sdata, resolve_keys(sdata))
    """
    from .geometry import spot_geometry

    first = image_levels(sdata.images[keys.image_key])[0]
    if first.sizes.get("c") != 3 or first.dtype != np.uint8:
        raise ValueError(
            f"Expected image `{keys.image_key}` to be 8-bit RGB (3 channels, uint8), found "
            f"{first.sizes.get('c')} channels of {first.dtype}; open it with read_slide to convert it."
        )
    table = sdata.tables[keys.table_key]
    if keys.spots_key not in _table_regions(table):
        raise ValueError(f"Expected table `{keys.table_key}` to annotate `{keys.spots_key}`, it does not.")
    if table.n_obs < MIN_SPOTS:
        raise ValueError(f"Expected at least {MIN_SPOTS} spots, found {table.n_obs}.")
    x, where = _count_matrix(table)
    _check_counts(x, f"table `{keys.table_key}` {where}")
    geom = spot_geometry(
        sdata, image_key=keys.image_key, spots_key=keys.spots_key, table_key=keys.table_key
    )
    h, w = first.sizes["y"], first.sizes["x"]
    c = geom.centers_px
    outside = (c[:, 0] < 0) | (c[:, 0] > w) | (c[:, 1] < 0) | (c[:, 1] > h)
    if outside.any():
        raise ValueError(
            f"Expected spot centres inside image `{keys.image_key}` ({w} x {h} px), found "
            f"{int(outside.sum())} of {len(c)} outside, e.g. {list(geom.spot_ids[outside][:3])}."
        )


# --------------------------------------------------------------------------------------------
# Conversion and the sample


def convert(src: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a slide (``.zarr``, Visium folder or ST section folder) to a SpatialData ``.zarr``.

    The write goes to a temporary sibling first and is moved into place when complete.

    Examples
    --------
    >>> convert("C2/", "C2.zarr")  # doctest: +SKIP
    """
    from .export import write_atomic

    out_path = Path(out).resolve()
    if out_path.exists() and not overwrite:
        raise FileExistsError(
            f"Expected output `{out_path}` not to exist, found it; pass overwrite=True (--overwrite)."
        )
    if Path(src).resolve() == out_path:
        raise ValueError(f"Expected an output different from the input, found `{out_path}` for both.")
    sdata = read_slide(src)
    keys = resolve_keys(sdata)
    validate_slide(sdata, keys)
    return write_atomic(sdata, out_path)


def load_sample() -> SpatialData:
    """The bundled real sample: a Visium adult mouse brain crop (49 spots, 1,999 genes).

    10x Genomics V1_Adult_Mouse_Brain (CC BY 4.0), as distributed in squidpy's test data
    (BSD-3-Clause). Its table holds log1p-normalised values, not raw counts.

    Examples
    --------
    >>> load_sample().tables["table"].n_obs
    49
    """
    from ._sample_data import load_sample as _load

    return _load()
