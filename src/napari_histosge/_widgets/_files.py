"""Arrays the worker hands to the viewer: files the viewer maps or reads lazily, never pickles.

Runs in the worker process (numpy and zarr only).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["image_level_paths", "save_pyramid"]

#: Largest side of a map level the viewer gets without a coarser level next to it.
MAX_SIDE = 2048


def save_pyramid(data: Any, path_of: Callable[[int], Path], max_side: int = MAX_SIDE) -> list[str]:
    """Save a ``(channels, y, x)`` stack as ``.npy`` levels, halving until it fits ``max_side``.

    Coarser levels average 2 x 2 blocks, ignoring NaN (off tissue).

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> paths = save_pyramid(np.ones((1, 8, 8), "float32"), lambda i: folder / f"{i}.npy", 4)
    >>> [np.load(p).shape for p in paths]
    [(1, 8, 8), (1, 4, 4)]
    """
    import numpy as np

    level = np.ascontiguousarray(data, dtype=np.float32)
    paths: list[str] = []
    while True:
        path = path_of(len(paths))
        np.save(path, level)
        paths.append(str(path))
        g, h, w = level.shape
        if max(h, w) <= max_side or min(h, w) < 2:
            return paths
        blocks = level[:, : h // 2 * 2, : w // 2 * 2].reshape(g, h // 2, 2, w // 2, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # blocks off tissue are all NaN
            level = np.nanmean(blocks, axis=(2, 4)).astype(np.float32)


def image_level_paths(store: Path, key: str) -> list[str]:
    """Paths of an image element's zarr arrays, finest first (read lazily by the viewer).

    Empty when the stored array is not ``(3, y, x)`` uint8 (the core converts such images while
    reading; the viewer cannot show the stored array as it is).
    """
    import zarr

    group = zarr.open_group(str(store / "images" / key), mode="r")
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return []
    paths = [str(store / "images" / key / d["path"]) for d in multiscales[0]["datasets"]]
    first = zarr.open_array(paths[0], mode="r")
    if first.ndim != 3 or first.shape[0] != 3 or str(first.dtype) != "uint8":
        return []
    return paths
