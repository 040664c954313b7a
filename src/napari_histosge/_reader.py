"""npe2 reader and sample-data contributions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["napari_get_reader", "sample_layers"]


def _looks_like_slide(path: Path) -> bool:
    if not path.is_dir():
        from .io.wsi import is_slide_file

        return is_slide_file(path)  # pyramidal or vendor slides; napari opens plain TIFFs
    if path.suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zgroup").exists():
        return True
    visium = (path / "spatial").is_dir() and any(path.glob("*filtered_feature_bc_matrix.h5"))
    st = any(path.glob("*_selection.tsv")) and any(path.glob("*.tsv.gz"))
    return visium or st


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[Any]] | None:
    """Return a reader for SpatialData stores, Visium and ST folders, and whole-slide files."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_layers if _looks_like_slide(Path(path)) else None


def read_layers(path: str | list[str]) -> list[Any]:
    """Read a slide and return its H&E and spots layers."""
    from ._layers import slide_layers
    from .workflows.pipeline import Slide

    p = Path(path[0] if isinstance(path, list) else path)
    if not p.is_dir():
        return _slide_file_layers(p)
    return slide_layers(Slide.open(p))


def _slide_file_layers(path: Path) -> list[Any]:
    """Return the H&E of a whole-slide file as a lazy multiscale RGB layer (its own pyramid)."""
    from .images import image_levels
    from .io.wsi import read_wsi

    sdata = read_wsi(path)
    key = next(iter(sdata.images))
    data = [lv.data.transpose(1, 2, 0) for lv in image_levels(sdata.images[key])]
    kwargs = {
        "name": key,
        "rgb": True,
        "multiscale": len(data) > 1,
        "contrast_limits": (0, 255),
        "metadata": {"sdata": sdata, "name": key, "store": str(path)},  # the dock opens it
    }
    return [(data if len(data) > 1 else data[0], kwargs, "image")]


def sample_layers() -> list[Any]:
    """Open the bundled Visium mouse-brain crop as H&E and spots layers.

    napari calls this on its own thread, so it reads only the pixels and the spot positions
    (tens of milliseconds); the dock's "Use sample" builds the SpatialData in its worker.
    """
    from .io.sample import sample_preview

    preview = sample_preview()
    meta = {"sample": "mouse_brain"}
    image = {
        "name": preview.image_key,
        "rgb": True,
        # Known for 8-bit RGB: napari would otherwise import scipy and scan the pixels on its
        # own thread (0.3 s).
        "contrast_limits": (0, 255),
        "metadata": {**meta, "name": preview.image_key},
    }
    spots = {
        "name": preview.spots_key,
        "size": float(preview.diameter_px),
        "face_color": "transparent",
        "border_color": "white",
        "border_width": 0.05,
        "opacity": 0.8,
        "features": {"spot_id": np.asarray(preview.spot_ids, dtype=str)},
        "metadata": {**meta, "name": preview.spots_key},
    }
    return [
        (preview.rgb, image, "image"),
        (preview.centers_px[:, ::-1].copy(), spots, "points"),
    ]
