"""her2st C2–C5 recovery: TESLA (published peer) beside the no-image yardsticks and a noise ceiling.

Protocol (per section):

* hold-out: checkerboard on the integer array indices of the ``"{x}x{y}"`` spot ids — train where
  ``(x + y)`` is even, hold out the odd spots — or a seeded random 50% (``--split random:<seed>``);
* target: ``log1p(normalize_total(counts, 1e4))`` over all genes, restricted to a gene panel:
  the top 250 highly variable genes (scanpy ``seurat_v3`` on the raw counts of the *training* spots
  only), or the 785-gene HisToGene/Hist2ST panel (``--panel her785``);
* metrics on held-out spots only: per-gene Pearson r (NaN-safe mean and median), number of genes
  with r > 0.3, MSE and MAE over all held-out values; wall time and peak memory per method.

Methods:

* ``tesla`` / ``tesla-nocolor``: ``TESLA.imputation`` (TESLAforST) with its tutorial parameters
  (``res=50, s=1, k=2, num_nbs=10``, cv2 tissue contour), and the same with the colour term off
  (``s=0``). TESLA imputes on a pixel grid; each held-out spot takes the value of its nearest grid
  point.
* ``knn``: inverse-distance weighted mean of the k=4 nearest training spots (pixel coordinates).
* ``smooth-lowrank``: Gaussian kernel smoothing of the training expression followed by projection
  onto its top principal components; bandwidth and rank chosen by leave-one-out on training spots.
* ``ceiling``: split-half noise ceiling — each spot's counts are split binomially in half (seeded),
  each half normalised and log1p-transformed, per-gene Pearson r between the halves over all spots,
  corrected to full depth with Spearman–Brown ``2r / (1 + r)``.

Usage::

    .venv/bin/python bench/peer_tesla.py                     # C2–C5, checkerboard, 250 HVG
    .venv/bin/python bench/peer_tesla.py --split random:0 --name peer_tesla_random0
    .venv/bin/python bench/peer_tesla.py --panel her785 --name peer_tesla_her785
    .venv/bin/python bench/peer_tesla.py --quick             # C2, coarse TESLA grid, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from _common import SHARED_DATA, PeakRSS, markdown_table, run_metadata, write_json

HER2ST = SHARED_DATA / "her2st"
SECTIONS = ("C2", "C3", "C4", "C5")


# --------------------------------------------------------------------------------------------
# data


@dataclass
class Section:
    """One her2st section: raw counts, array indices and pixel positions in the JPEG."""

    name: str
    counts: pd.DataFrame  # spots x genes, raw UMI counts (int)
    array_xy: np.ndarray  # (n, 2) int, array column x and row y from the spot id
    pixel_xy: np.ndarray  # (n, 2) float, (column, row) in the full-resolution JPEG
    image_path: Path


def load_section(name: str, root: Path = HER2ST) -> Section:
    """Read a section's counts and spot file and join them on the ``"{x}x{y}"`` id."""
    counts = pd.read_csv(root / "data" / "ST-cnts" / f"{name}.tsv.gz", sep="\t", index_col=0)
    counts.index = counts.index.astype(str)
    counts = counts.T.groupby(level=0).sum().T if counts.columns.duplicated().any() else counts
    spots = pd.read_csv(root / "data" / "ST-spotfiles" / f"{name}_selection.tsv", sep="\t")
    spots.index = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"])]
    spots = spots.loc[counts.index]
    array_xy = np.array([[int(v) for v in s.split("x")] for s in counts.index])
    images = sorted((root / "data" / "ST-imgs" / name[0] / name).glob("*.jpg"))
    return Section(
        name=name,
        counts=counts,
        array_xy=array_xy,
        pixel_xy=spots[["pixel_x", "pixel_y"]].to_numpy(float),
        image_path=images[0],
    )


def normalise_log(counts: np.ndarray, target_sum: float = 1e4) -> np.ndarray:
    """``log1p`` of counts scaled to ``target_sum`` per spot (over all genes)."""
    counts = np.asarray(counts, dtype=np.float64)
    tot = counts.sum(axis=1, keepdims=True)
    tot[tot == 0] = 1.0
    return np.log1p(counts / tot * target_sum)


def hvg_on_training(counts: pd.DataFrame, train: np.ndarray, n_top: int) -> list[str]:
    """Top ``n_top`` highly variable genes (scanpy ``seurat_v3``) from the training spots' counts."""
    import anndata as ad
    import scanpy as sc

    sub = counts.iloc[np.flatnonzero(train)]
    sub = sub.loc[:, (sub.to_numpy() > 0).sum(axis=0) > 0]
    adata = ad.AnnData(sub.to_numpy(dtype=np.float32))
    adata.var_names = list(sub.columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=n_top)
    var = adata.var
    top = var.sort_values("highly_variable_rank").index[var["highly_variable"].to_numpy()]
    return [str(g) for g in top]


def split_mask(section: Section, split: str) -> np.ndarray:
    """Boolean training mask: ``checkerboard`` ((x + y) even) or ``random:<seed>`` (50%)."""
    if split == "checkerboard":
        return (section.array_xy.sum(axis=1) % 2) == 0
    if split.startswith("random:"):
        seed = int(split.split(":", 1)[1])
        n = len(section.array_xy)
        rng = np.random.default_rng(seed)
        train = np.zeros(n, dtype=bool)
        train[rng.permutation(n)[: n // 2]] = True
        return train
    raise ValueError(f"Expected split `checkerboard` or `random:<seed>`, found `{split}`.")


# --------------------------------------------------------------------------------------------
# metrics


def pearson_per_gene(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-column Pearson r; NaN where either column is constant."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    pc = pred - pred.mean(axis=0)
    tc = true - true.mean(axis=0)
    den = np.sqrt((pc**2).sum(axis=0) * (tc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(axis=0) / den
    r[~np.isfinite(r) | (den <= 1e-12)] = np.nan
    return r


def score(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Held-out metrics: mean/median Pearson r over genes, n(r>0.3), MSE, MAE."""
    r = pearson_per_gene(pred, true)
    return {
        "pearson_mean": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
        "pearson_median": float(np.nanmedian(r)) if np.isfinite(r).any() else float("nan"),
        "n_genes_r_gt_0.3": int(np.nansum(r > 0.3)),
        "n_genes_nan_r": int(np.isnan(r).sum()),
        "mse": float(np.mean((pred - true) ** 2)),
        "mae": float(np.mean(np.abs(pred - true))),
    }


# --------------------------------------------------------------------------------------------
# yardsticks


def knn_predict(train_xy: np.ndarray, train_y: np.ndarray, query_xy: np.ndarray, k: int = 4) -> np.ndarray:
    """Inverse-distance weighted mean of the ``k`` nearest training spots."""
    dist, idx = cKDTree(train_xy).query(query_xy, k=k)
    w = 1.0 / np.maximum(dist, 1e-9)
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("qk,qkg->qg", w, train_y[idx])


def _gauss_smooth(
    train_xy: np.ndarray, train_y: np.ndarray, query_xy: np.ndarray, h: float, exclude_self: bool
) -> np.ndarray:
    d2 = ((query_xy[:, None, :] - train_xy[None, :, :]) ** 2).sum(-1)
    w = np.exp(-0.5 * d2 / h**2)
    if exclude_self:
        np.fill_diagonal(w, 0.0)
    w_sum = w.sum(axis=1, keepdims=True)
    w_sum[w_sum == 0] = 1.0
    return (w / w_sum) @ train_y


def _lowrank(y: np.ndarray, mean: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    if basis is None:
        return y
    return mean + (y - mean) @ basis.T @ basis


@dataclass
class SmoothLowRankFit:
    """Chosen bandwidth (px) and rank, with the leave-one-out score grid."""

    bandwidth_px: float
    rank: int | None
    loo_pearson: float
    grid: list[dict[str, Any]]


def fit_smooth_lowrank(
    train_xy: np.ndarray,
    train_y: np.ndarray,
    pitch_px: float,
    bandwidths: tuple[float, ...] = (0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 3.0),
    ranks: tuple[int | None, ...] = (1, 2, 3, 5, 8, 12, 20, 30, 50, None),
) -> SmoothLowRankFit:
    """Choose bandwidth (in multiples of the spot pitch) and rank by leave-one-out on training spots."""
    mean = train_y.mean(axis=0)
    _, _, vt = np.linalg.svd(train_y - mean, full_matrices=False)
    grid = []
    best: tuple[float, float, int | None] = (-np.inf, bandwidths[0] * pitch_px, None)
    for hb in bandwidths:
        h = hb * pitch_px
        sm = _gauss_smooth(train_xy, train_y, train_xy, h, exclude_self=True)
        for rank in ranks:
            if rank is not None and rank >= vt.shape[0]:
                continue
            basis = None if rank is None else vt[:rank]
            r = float(np.nanmean(pearson_per_gene(_lowrank(sm, mean, basis), train_y)))
            grid.append({"bandwidth_pitch": hb, "bandwidth_px": h, "rank": rank, "loo_pearson": r})
            if r > best[0]:
                best = (r, h, rank)
    return SmoothLowRankFit(bandwidth_px=best[1], rank=best[2], loo_pearson=best[0], grid=grid)


def smooth_lowrank_predict(
    train_xy: np.ndarray, train_y: np.ndarray, query_xy: np.ndarray, fit: SmoothLowRankFit
) -> np.ndarray:
    """Smooth at ``query_xy`` with the chosen bandwidth and project onto the chosen rank."""
    mean = train_y.mean(axis=0)
    _, _, vt = np.linalg.svd(train_y - mean, full_matrices=False)
    basis = None if fit.rank is None else vt[: fit.rank]
    sm = _gauss_smooth(train_xy, train_y, query_xy, fit.bandwidth_px, exclude_self=False)
    return _lowrank(sm, mean, basis)


def noise_ceiling(counts: np.ndarray, genes_idx: np.ndarray, seed: int) -> dict[str, float]:
    """Split-half reliability per gene, Spearman–Brown corrected to full depth."""
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts, dtype=np.int64)
    half_a = rng.binomial(counts, 0.5)
    half_b = counts - half_a
    la = normalise_log(half_a)[:, genes_idx]
    lb = normalise_log(half_b)[:, genes_idx]
    r = pearson_per_gene(la, lb)
    r_full = 2 * r / (1 + r)
    return {
        "pearson_mean": float(np.nanmean(r_full)),
        "pearson_median": float(np.nanmedian(r_full)),
        "split_half_mean": float(np.nanmean(r)),
        "n_genes_r_gt_0.3": int(np.nansum(r_full > 0.3)),
    }


# --------------------------------------------------------------------------------------------
# TESLA


def _tesla_imports() -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        import TESLA  # noqa: N811 - package name
    return TESLA


def tesla_predict(
    image_path: Path,
    train_pixel_xy: np.ndarray,
    train_y: np.ndarray,
    genes: list[str],
    query_pixel_xy: np.ndarray,
    *,
    res: int,
    s: float,
    k: int,
    num_nbs: int,
    contour: str,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run ``TESLA.imputation`` on the training spots and read its grid at the query positions.

    TESLA's convention is ``x`` = image row and ``y`` = image column, with the image as read by
    ``cv2.imread`` (BGR), as in its tutorial. Its AnnData input gets plain ``"0", "1", ...`` string
    obs names and a fresh, non-view object, which is what current anndata needs for TESLA's
    in-place ``obs`` edits and label look-ups to behave.
    """
    import anndata as ad
    import cv2

    tesla = _tesla_imports()
    img = cv2.imread(str(image_path))
    if img is None:
        raise FileNotFoundError(image_path)
    info: dict[str, Any] = {"image_shape": list(img.shape)}
    if contour == "cv2":
        cnt = tesla.cv2_detect_contour(img, apertureSize=5, L2gradient=True)
    elif contour == "hull":
        # Convex hull of the training spots (cv2 points are (column, row)).
        pts = np.round(train_pixel_xy).astype(np.int32).reshape(-1, 1, 2)
        cnt = cv2.convexHull(pts)
    else:
        raise ValueError(f"Expected contour `cv2` or `hull`, found `{contour}`.")
    info["contour"] = contour

    raw = ad.AnnData(
        X=np.ascontiguousarray(train_y, dtype=np.float64),
        obs=pd.DataFrame(
            {
                "pixel_x": np.round(train_pixel_xy[:, 1]).astype(int),  # row
                "pixel_y": np.round(train_pixel_xy[:, 0]).astype(int),  # column
            },
            index=[str(i) for i in range(len(train_y))],
        ),
        var=pd.DataFrame(index=list(genes)),
    )
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = tesla.imputation(
            img=img, raw=raw, cnt=cnt, genes=list(genes), shape="None",
            res=res, s=s, k=k, num_nbs=num_nbs,
        )
    grid_rc = np.column_stack([out.obs["x"].to_numpy(float), out.obs["y"].to_numpy(float)])
    values = np.asarray(out.X, dtype=np.float64)
    # Reorder TESLA's gene columns to ours.
    order = pd.Index(out.var_names).get_indexer(list(genes))
    if (order < 0).any():
        raise RuntimeError("TESLA dropped genes from the output")
    values = values[:, order]
    query_rc = query_pixel_xy[:, ::-1]
    dist, idx = cKDTree(grid_rc).query(query_rc, k=1)
    info.update(
        {
            "n_grid_points": int(len(grid_rc)),
            "query_to_grid_px_median": float(np.median(dist)),
            "query_to_grid_px_max": float(dist.max()),
            "n_query_off_grid": int((dist > res).sum()),
        }
    )
    return values[idx], info


# --------------------------------------------------------------------------------------------
# driver


def run_section(
    section: Section,
    *,
    split: str,
    panel: str,
    n_top: int,
    methods: list[str],
    tesla_res: int,
    tesla_contour: str,
    seed: int,
) -> dict[str, Any]:
    """All methods on one section."""
    train = split_mask(section, split)
    test = ~train
    counts = section.counts
    if panel == "hvg":
        genes = hvg_on_training(counts, train, n_top)
    elif panel == "her785":
        panel_genes = np.load(HER2ST / "extras" / "her_hvg_cut_1000.npy", allow_pickle=True)
        genes = [str(g) for g in panel_genes if str(g) in counts.columns]
    else:
        raise ValueError(f"Expected panel `hvg` or `her785`, found `{panel}`.")
    log_all = normalise_log(counts.to_numpy())
    gidx = counts.columns.get_indexer(genes)
    y = log_all[:, gidx]
    xy = section.pixel_xy
    pitch = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1]))
    res: dict[str, Any] = {
        "section": section.name,
        "n_spots": int(len(xy)),
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "n_genes": len(genes),
        "pitch_px": pitch,
        "methods": {},
    }

    def timed(name: str, fn: Callable[[], tuple[np.ndarray, dict[str, Any]]]) -> None:
        print(f"  {section.name}: {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            pred, extra = fn()
        wall = time.perf_counter() - t0
        res["methods"][name] = {
            **score(pred, y[test]),
            "wall_s": wall,
            "peak_rss_mb": mem.peak_mb,
            "rss_increase_mb": mem.peak_mb - mem.start_mb,
            **extra,
        }

    if "knn" in methods:
        timed("knn", lambda: (knn_predict(xy[train], y[train], xy[test], k=4), {"k": 4}))
    if "smooth-lowrank" in methods:

        def slr() -> tuple[np.ndarray, dict[str, Any]]:
            fit = fit_smooth_lowrank(xy[train], y[train], pitch)
            pred = smooth_lowrank_predict(xy[train], y[train], xy[test], fit)
            return pred, {
                "bandwidth_px": fit.bandwidth_px,
                "bandwidth_pitch": fit.bandwidth_px / pitch,
                "rank": fit.rank,
                "loo_pearson": fit.loo_pearson,
            }

        timed("smooth-lowrank", slr)
    for name, s in (("tesla", 1.0), ("tesla-nocolor", 0.0)):
        if name in methods:
            params = {"res": tesla_res, "s": s, "k": 2, "num_nbs": 10}

            def tesla_run(params: dict = params) -> tuple[np.ndarray, dict[str, Any]]:
                pred, info = tesla_predict(
                    section.image_path, xy[train], y[train], genes, xy[test],
                    contour=tesla_contour, **params,
                )
                return pred, {"params": params, **info}

            timed(name, tesla_run)
    if "ceiling" in methods:
        t0 = time.perf_counter()
        res["methods"]["ceiling"] = {
            **noise_ceiling(counts.to_numpy(), gidx, seed),
            "wall_s": time.perf_counter() - t0,
        }
    return res


METHODS = ("knn", "smooth-lowrank", "tesla", "tesla-nocolor", "ceiling")
METRICS = ("pearson_mean", "pearson_median", "n_genes_r_gt_0.3", "mse", "mae", "wall_s", "peak_rss_mb")


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="C2 only, 30 genes, coarse TESLA grid")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--split", default="checkerboard", help="checkerboard | random:<seed>")
    p.add_argument("--panel", default="hvg", choices=["hvg", "her785"])
    p.add_argument("--n-top", type=int, default=250, help="HVGs for --panel hvg")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--tesla-res", type=int, default=50, help="TESLA grid step in px (tutorial: 50)")
    p.add_argument("--tesla-contour", default="cv2", choices=["cv2", "hull"])
    p.add_argument("--seed", type=int, default=0, help="seed of the noise-ceiling split")
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)

    sections = args.sections.split(",")
    n_top, tesla_res = args.n_top, args.tesla_res
    if args.quick:
        sections, n_top, tesla_res = ["C2"], 30, 400
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")

    meta = run_metadata(extra_packages=["TESLAforST", "opencv-python-headless", "scikit-learn"])
    t0 = time.perf_counter()
    per_section = []
    for name in sections:
        section = load_section(name)
        per_section.append(
            run_section(
                section, split=args.split, panel=args.panel, n_top=n_top, methods=methods,
                tesla_res=tesla_res, tesla_contour=args.tesla_contour, seed=args.seed,
            )
        )
    mean: dict[str, dict[str, float]] = {}
    for m in methods:
        keys = [k for k in (*METRICS, "split_half_mean") if k in per_section[0]["methods"][m]]
        mean[m] = {k: float(np.mean([s["methods"][m][k] for s in per_section])) for k in keys}

    result = {
        "benchmark": "peer_tesla",
        "quick": args.quick,
        **meta,
        "protocol": {
            "dataset": "her2st",
            "sections": sections,
            "split": args.split,
            "panel": args.panel if args.panel != "hvg" else f"top {n_top} HVG (seurat_v3, train)",
            "target": "log1p(normalize_total(counts, 1e4)) over all genes",
            "scored_on": "held-out spots only",
        },
        "sections": per_section,
        "mean": mean,
        "total_wall_s": time.perf_counter() - t0,
    }
    name = args.name or ("peer_tesla_quick" if args.quick else "peer_tesla")
    path = write_json(name, result)

    print(f"\n## her2st recovery — split {args.split}, panel {result['protocol']['panel']}\n")
    print("Mean Pearson r over genes on held-out spots (ceiling: split-half, Spearman–Brown)\n")
    headers = ["method", *sections, "mean"]
    rows = [
        [m, *[s["methods"][m]["pearson_mean"] for s in per_section], mean[m]["pearson_mean"]]
        for m in methods
    ]
    print(markdown_table(headers, rows))
    print("\nMeans over sections\n")
    rows = []
    for m in methods:
        d = mean[m]
        rows.append([m, *[d.get(k) for k in METRICS]])
    print(markdown_table(["method", *METRICS], rows))
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
