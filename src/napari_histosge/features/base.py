"""The encoder protocol and what every encoder shares: weight sources, checksums, extents."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Encoder", "file_sha256", "HUB_WEIGHTS", "patches_extent", "RANDOM_WEIGHTS"]


@runtime_checkable
class Encoder(Protocol):
    """What feature extraction needs of an encoder.

    ``id`` names the encoder and its weights (e.g. ``"uni@3f2a9c01b2de"``, ``"histology@v2"``,
    ``"timm:vit_small_patch16_224@random"``); ``embed`` maps uint8 ``(n, h, w, 3)`` patches to
    float32 ``(n, dim)`` features.
    """

    name: str
    id: str
    weights_sha256: str | None
    dim: int
    input_size: int

    def embed(self, patches: np.ndarray) -> np.ndarray:
        """Embed uint8 RGB patches ``(n, h, w, 3)`` into ``(n, dim)`` float32 features."""
        ...


#: ``weights`` values that are not files.
RANDOM_WEIGHTS = "random"

HUB_WEIGHTS = "hub"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in chunks.

    Examples
    --------
    >>> len(file_sha256(__file__))
    64
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def patches_extent(
    centers_px: np.ndarray, sizes_px: Sequence[float], margin_px: float = 0.0
) -> tuple[float, float, float, float]:
    """Scale-0 box ``(x0, y0, x1, y1)`` covering every patch (plus ``margin_px``).

    Examples
    --------
    >>> patches_extent(np.array([[10.0, 20.0]]), [4.0])
    (8.0, 18.0, 12.0, 22.0)
    """
    c = np.asarray(centers_px, dtype=float).reshape(-1, 2)
    half = max(float(s) for s in sizes_px) / 2.0 + margin_px
    return (
        float(c[:, 0].min() - half),
        float(c[:, 1].min() - half),
        float(c[:, 0].max() + half),
        float(c[:, 1].max() + half),
    )
