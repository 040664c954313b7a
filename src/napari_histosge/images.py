"""H&E image elements: RGB uint8 normalisation, parsing as (multiscale) images, pyramid levels."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from xarray import DataArray, DataTree

    #: An image element: a ``(c, y, x)`` DataArray or a multiscale DataTree.
    ImageElement = DataArray | DataTree

__all__ = [
    "choose_level",
    "cyx_view",
    "image_levels",
    "level_scales",
    "level_xy_scales",
    "parse_image",
    "read_image_file",
    "rgb_uint8",
    "rgb_uint8_lazy",
]


_PYRAMID_MIN = 4096


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


def rgb_uint8(arr: np.ndarray, what: str) -> np.ndarray:
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


def rgb_uint8_lazy(data: Any, what: str) -> Any:
    """Convert ``(c, y, x)`` data to RGB uint8 lazily (dask), like :func:`rgb_uint8`."""
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


def read_image_file(path: Path) -> np.ndarray:
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
    return rgb_uint8(arr, f"image `{path.name}`")


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


def cyx_view(rgb: np.ndarray) -> Any:
    """Wrap a decoded ``(y, x, 3)`` image as a chunked ``(c, y, x)`` dask view (no copy made)."""
    import dask.array as da

    return da.from_array(rgb, chunks=(1024, 1024, 3)).transpose(2, 0, 1)


def parse_image(data: Any, transformations: dict[str, Any] | None = None) -> Any:
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


def image_levels(image: ImageElement) -> list[DataArray]:
    """Return the levels of an image element, finest first, as ``(c, y, x)`` DataArrays.

    Parameters
    ----------
    image
        A ``(c, y, x)`` ``xarray.DataArray`` or a multiscale ``DataTree``
        (``scale0``, ``scale1``, ...).

    Returns
    -------
    The levels, finest first.

    Examples
    --------
    >>> import xarray as xr
    >>> image_levels(xr.DataArray(np.zeros((3, 8, 8)), dims=("c", "y", "x")))[0].dims
    ('c', 'y', 'x')
    """
    children = getattr(image, "children", None)
    if children:
        names = sorted(children, key=lambda s: int("".join(ch for ch in s if ch.isdigit()) or 0))
        out = []
        for name in names:
            node = image[name]
            ds = node.ds if hasattr(node, "ds") else node
            out.append(next(iter(ds.data_vars.values())))
        return out
    if not hasattr(image, "sizes") or not {"c", "y", "x"} <= set(image.sizes):
        raise ValueError(
            "Expected a (c, y, x) DataArray or a multiscale DataTree image, "
            f"found {type(image).__name__}."
        )
    return [image]


def level_scales(image: ImageElement) -> list[float]:
    """Downsampling factor of each pyramid level relative to scale 0 (along x).

    Examples
    --------
    >>> import xarray as xr
    >>> level_scales(xr.DataArray(np.zeros((3, 8, 8)), dims=("c", "y", "x")))
    [1.0]
    """
    levels = image_levels(image)
    w0 = levels[0].sizes["x"]
    return [w0 / lv.sizes["x"] for lv in levels]


def level_xy_scales(image: ImageElement) -> list[tuple[float, float]]:
    """Downsampling factors ``(x, y)`` of each level relative to scale 0."""
    levels = image_levels(image)
    w0, h0 = levels[0].sizes["x"], levels[0].sizes["y"]
    return [(w0 / lv.sizes["x"], h0 / lv.sizes["y"]) for lv in levels]


def choose_level(image: ImageElement, downsample: float) -> int:
    """Index of the coarsest level whose downsampling does not exceed ``downsample``.

    Examples
    --------
    >>> import xarray as xr
    >>> choose_level(xr.DataArray(np.zeros((3, 8, 8)), dims=("c", "y", "x")), 4.0)
    0
    """
    scales = level_scales(image)
    ok = [i for i, s in enumerate(scales) if s <= downsample * 1.001]
    return max(ok) if ok else 0
