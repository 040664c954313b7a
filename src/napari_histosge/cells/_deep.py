"""Deep nucleus segmenters from local weights (optional packages, never downloaded).

StarDist (Schmidt et al. 2018; ``pip install stardist tensorflow``): a model folder as
StarDist saves it (``config.json``, ``thresholds.json``, ``weights_best.h5``), for example the
``2D_versatile_he`` model unpacked by the user. Each window is resampled to the model's pixel
size, normalised as in StarDist's H&E examples (percentiles 1 and 99.8 over all channels),
segmented with ``predict_instances`` and resampled back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["stardist_segmenter"]

#: Pixel size (µm) of the H&E images StarDist's ``2D_versatile_he`` was trained on (40x).
STARDIST_HE_UM_PER_PX = 0.25


def stardist_segmenter(
    weights: str | Path, model_um_per_px: float = STARDIST_HE_UM_PER_PX
) -> Callable[[np.ndarray, float], np.ndarray]:
    """Load a StarDist 2D model from a local folder; return ``segment(rgb, um_per_px)``.

    ``segment`` takes an ``(h, w, 3)`` uint8 window and its pixel size and returns ``(h, w)``
    int32 labels (0: background).

    Examples
    --------
    >>> segment = stardist_segmenter("models/2D_versatile_he")  # doctest: +SKIP
    """
    folder = Path(weights).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"Expected a StarDist model folder holding config.json and weights_best.h5, found "
            f"`{folder}`; unpack the model (for example 2D_versatile_he) there."
        )
    if not (np.isfinite(model_um_per_px) and model_um_per_px > 0):
        raise ValueError(f"Expected a positive model pixel size, found `{model_um_per_px}`.")
    try:
        from csbdeep.utils import normalize
        from stardist.models import StarDist2D
    except ImportError as err:
        raise ImportError(
            "Expected the optional package `stardist` (with tensorflow) for --nuclei-weights, "
            "found it missing; `pip install stardist tensorflow`, or leave the weights out for "
            "the classical segmentation."
        ) from err
    model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))

    def segment(rgb: np.ndarray, um_per_px: float) -> np.ndarray:
        from skimage.transform import resize

        h, w = rgb.shape[:2]
        zoom = float(um_per_px) / model_um_per_px
        img = rgb
        if abs(zoom - 1.0) > 0.05:
            size = (max(1, round(h * zoom)), max(1, round(w * zoom)))
            img = resize(rgb, size, order=1, preserve_range=True, anti_aliasing=zoom < 1)
        labels, _ = model.predict_instances(normalize(img, 1, 99.8, axis=(0, 1, 2)))
        if labels.shape != (h, w):
            labels = resize(labels, (h, w), order=0, preserve_range=True, anti_aliasing=False)
        return np.asarray(labels, dtype=np.int32)

    return segment
