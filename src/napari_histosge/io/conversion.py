"""Convert a slide to a SpatialData zarr store, atomically."""

from __future__ import annotations

from pathlib import Path

from napari_histosge.store import check_target, write_atomic

from .keys import resolve_keys
from .read import read_slide
from .validate import validate_slide
from .wsi import is_wsi_path, read_wsi

__all__ = ["convert"]


def convert(
    src: str | Path, out: str | Path, *, overwrite: bool = False, um_per_px: float | None = None
) -> Path:
    """Write a slide (``.zarr``, Visium folder or ST section folder) to a SpatialData ``.zarr``.

    A whole-slide file (``.svs``, ``.ndpi``, pyramidal ``.tif``, ...) gives a store with its
    H&E image only (the file's pyramid, streamed tile by tile) and its µm per pixel.

    The slide is read with :func:`read_slide` and checked with :func:`validate_slide`; the
    store goes to a temporary sibling first and is moved into place when complete, so a failed
    write leaves nothing half-written and an existing output untouched.

    Parameters
    ----------
    src
        The slide to convert.
    out
        The ``.zarr`` to write.
    um_per_px
        µm per pixel of a whole-slide file, instead of its metadata's.
    overwrite
        Replace ``out`` when it is an earlier output or a SpatialData store (see
        :func:`~napari_histosge.store.check_target`); otherwise an existing ``out`` is refused.

    Returns
    -------
    The absolute path of the written store.

    Examples
    --------
    >>> convert("her2st/C2/", "C2.zarr")  # doctest: +SKIP
    PosixPath('/data/C2.zarr')
    """
    src_path = Path(src).resolve()
    out_path = check_target(
        out, overwrite=overwrite, kind="store", inputs=[src_path], option="output"
    )
    if is_wsi_path(src_path):
        return write_atomic(read_wsi(src_path, um_per_px=um_per_px), out_path)
    sdata = read_slide(src_path)
    keys = resolve_keys(sdata)
    validate_slide(sdata, keys)
    return write_atomic(sdata, out_path)
