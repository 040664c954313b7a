"""Held-out evaluation: metrics, no-image baselines and protocols.

* :mod:`.metrics`: per-gene Pearson r, MSE, MAE;
* :mod:`.baselines`: kNN interpolation, spatial shuffle (the smoother is
  :func:`napari_histosge.models.smoothing.smooth_lowrank`);
* :mod:`.protocols`: splits, :func:`recovery`, :func:`superresolution` (arrays);
* :mod:`.holdout`: :func:`evaluate_holdout` (a slide, end to end).
"""

from __future__ import annotations

from napari_histosge.metrics import metrics, pearson_per_gene
from napari_histosge.models.smoothing import SmoothLowRank, smooth_lowrank

from .baselines import knn_interpolate, ridge_image, spatial_shuffle
from .holdout import HoldoutResult, evaluate_holdout
from .protocols import checkerboard_mask, pool_pseudospots, random_mask, recovery, superresolution

__all__ = [
    "HoldoutResult",
    "SmoothLowRank",
    "checkerboard_mask",
    "evaluate_holdout",
    "knn_interpolate",
    "metrics",
    "pearson_per_gene",
    "pool_pseudospots",
    "random_mask",
    "recovery",
    "ridge_image",
    "smooth_lowrank",
    "spatial_shuffle",
    "superresolution",
]
