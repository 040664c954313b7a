"""Per-gene metrics of predictions against measurements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["metrics", "pearson_per_gene"]


def pearson_per_gene(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r of each gene (column) over spots; NaN where either side is constant.

    Examples
    --------
    >>> pearson_per_gene(np.array([[1.0, 0], [2, 0], [3, 0]]), np.array([[2.0, 1], [4, 2], [6, 3]]))
    array([ 1., nan])
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(
            f"Expected predictions and truth of one shape, found {p.shape} and {t.shape}."
        )
    pc = p - p.mean(0)
    tc = t - t.mean(0)
    den = np.sqrt((pc**2).sum(0) * (tc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(0) / den
    r[~np.isfinite(r) | (den < 1e-12)] = np.nan
    return r


def metrics(
    pred: np.ndarray, true: np.ndarray, genes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per-gene Pearson r, MSE and MAE and their summaries (NaN genes excluded from means).

    Examples
    --------
    >>> m = metrics(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.5], [3.0]]))
    >>> round(m["mean_r"], 3), m["n_genes_r_gt_0.3"]
    (0.961, 1)
    """
    r = pearson_per_gene(pred, true)
    err = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    mse = (err**2).mean(0)
    mae = np.abs(err).mean(0)
    names = list(genes) if genes is not None else [str(i) for i in range(len(r))]
    return {
        "mean_r": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
        "median_r": float(np.nanmedian(r)) if np.isfinite(r).any() else float("nan"),
        "mse": float(mse.mean()),
        "mae": float(mae.mean()),
        "n_genes_r_gt_0.3": int(np.nansum(r > 0.3)),
        "n_genes_scored": int(np.isfinite(r).sum()),
        "per_gene": {
            g: {"r": (None if not np.isfinite(ri) else float(ri)), "mse": float(m), "mae": float(a)}
            for g, ri, m, a in zip(names, r, mse, mae, strict=True)
        },
    }
