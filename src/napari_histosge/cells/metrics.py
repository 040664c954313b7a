"""Scores of a nucleus segmentation against known nuclei: detection F1 at an IoU and counts."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["match_nuclei"]


def match_nuclei(
    truth: np.ndarray, pred: np.ndarray, *, iou: float = 0.5, min_area: int = 0
) -> dict[str, Any]:
    """Match predicted nuclei to true ones at an IoU threshold; precision, recall, F1, counts.

    With ``iou >= 0.5`` a nucleus matches at most one other, so matches are the pairs above the
    threshold. True nuclei smaller than ``min_area`` pixels (mostly hidden under others) are
    left out of the truth, with the predictions that overlap them most.

    Examples
    --------
    >>> t = np.zeros((6, 6), int); t[:3, :3] = 1; t[3:, 3:] = 2
    >>> p = np.zeros((6, 6), int); p[:3, :3] = 5
    >>> r = match_nuclei(t, p)
    >>> r["tp"], r["n_true"], r["n_pred"], r["f1"]
    (1, 2, 1, 0.6667)
    """
    if iou < 0.5:
        raise ValueError(f"Expected an IoU threshold of at least 0.5, found `{iou}`.")
    t = np.asarray(truth).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"Expected label images of one shape, found {truth.shape} {pred.shape}.")
    t_ids, t = np.unique(t, return_inverse=True)
    p_ids, p = np.unique(p, return_inverse=True)
    t_area = np.bincount(t, minlength=len(t_ids))
    p_area = np.bincount(p, minlength=len(p_ids))
    both = (t_ids[t] > 0) & (p_ids[p] > 0)
    key, inter = np.unique(t[both] * len(p_ids) + p[both], return_counts=True)
    ti, pi = key // len(p_ids), key % len(p_ids)
    jac = inter / (t_area[ti] + p_area[pi] - inter)
    t_ok = (t_ids > 0) & (t_area >= min_area)
    p_ok = p_ids > 0
    if min_area > 0:  # predictions that overlap a left-out true nucleus most are left out too
        order = np.argsort(-inter, kind="stable")
        best = np.full(len(p_ids), -1)
        best[pi[order][::-1]] = ti[order][::-1]
        p_ok &= ~((best >= 0) & ~t_ok[np.maximum(best, 0)])
    hit = (jac > iou) & t_ok[ti] & p_ok[pi]
    tp = int(hit.sum())
    n_true, n_pred = int(t_ok.sum()), int(p_ok.sum())
    prec = tp / n_pred if n_pred else 0.0
    rec = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0
    return {
        "tp": tp,
        "n_true": n_true,
        "n_pred": n_pred,
        "precision": round(prec, 4),
        "recall": round(rec, 4),
        "f1": round(f1, 4),
        "count_error": round((n_pred - n_true) / n_true, 4) if n_true else float("nan"),
        "mean_iou_matched": round(float(jac[hit].mean()), 4) if tp else float("nan"),
    }
