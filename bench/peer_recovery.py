"""her2st C2–C5 recovery: TESLA (published peer) beside no-image yardsticks and a noise ceiling.

Protocol (per section):

* hold-out: checkerboard on the integer array indices of the ``"{x}x{y}"`` spot ids — train where
  ``(x + y)`` is even, hold out the odd spots — or a seeded random 50% (``--split random:<seed>``);
* target: ``log1p(normalize_total(counts, 1e4))`` over all genes, restricted to a gene panel:
  the top 250 highly variable genes (scanpy ``seurat_v3`` on the raw counts of the *training*
  spots only; ``--hvg variance`` ranks by variance of the training targets instead), or the
  785-gene HisToGene/Hist2ST panel (``--panel her785``);
* metrics on held-out spots only: per-gene Pearson r (NaN-safe mean and median), number of genes
  with r > 0.3, MSE and MAE over all held-out values; wall time and peak memory per method.

Methods:

* ``tesla`` / ``tesla-nocolor``: ``TESLA.imputation`` (TESLAforST) with its tutorial parameters
  (``res=50, s=1, k=2, num_nbs=10``, tutorial cv2 tissue contour, image as read by
  ``cv2.imread``), and the same with the colour term off (``s=0``). TESLA imputes on a pixel grid;
  each held-out spot takes the value of its nearest grid point.
* ``knn``: inverse-distance weighted mean of the k=4 nearest training spots (pixel coordinates).
* ``smooth-lowrank``: Gaussian kernel smoothing of the training expression followed by projection
  onto its top principal components; bandwidth and rank chosen by leave-one-out on training spots.
* ``ceiling``: split-half noise ceiling — each spot's counts are split binomially in half (seeded),
  each half normalised and log1p-transformed, per-gene Pearson r between the halves over all spots,
  corrected to full depth with Spearman–Brown ``2r / (1 + r)``.

Usage::

    .venv/bin/python bench/peer_recovery.py                  # C2–C5, checkerboard, 250 HVG
    .venv/bin/python bench/peer_recovery.py --split random:0 --methods knn,smooth-lowrank,ceiling
    .venv/bin/python bench/peer_recovery.py --panel her785
    .venv/bin/python bench/peer_recovery.py --quick          # C2, 30 genes, coarse TESLA grid
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _common import SHARED_DATA, PeakRSS, markdown_table, run_metadata, write_json
from scipy.spatial import cKDTree

HER2ST = SHARED_DATA / "her2st"
SECTIONS = ("C2", "C3", "C4", "C5")
METHODS = ("knn", "smooth-lowrank", "tesla", "tesla-nocolor", "ceiling")
METRICS = (
    "pearson_mean",
    "pearson_median",
    "n_genes_r_gt_0.3",
    "mse",
    "mae",
    "wall_s",
    "peak_rss_mb",
)


# --------------------------------------------------------------------------------------------
# data


@dataclass
class Section:
    """One her2st section: raw counts, array indices and pixel positions in the JPEG."""

    name: str
    counts: pd.DataFrame  # spots x genes, raw UMI counts (int)
    array_xy: np.ndarray  # (n, 2) int: array column x and row y from the spot id
    pixel_xy: np.ndarray  # (n, 2) float: (column, row) in the full-resolution JPEG
    image_path: Path


def load_section(name: str, root: Path = HER2ST) -> Section:
    """Read a section's counts and spot file and join them on the ``"{x}x{y}"`` id."""
    counts = pd.read_csv(root / "data" / "ST-cnts" / f"{name}.tsv.gz", sep="\t", index_col=0)
    counts.index = counts.index.astype(str)
    if counts.columns.duplicated().any():
        counts = counts.T.groupby(level=0).sum().T
    spots = pd.read_csv(root / "data" / "ST-spotfiles" / f"{name}_selection.tsv", sep="\t")
    spots.index = [f"{int(x)}x{int(y)}" for x, y in zip(spots["x"], spots["y"], strict=True)]
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


def hvg_seurat_v3(counts: pd.DataFrame, train: np.ndarray, n_top: int) -> list[str]:
    """Top ``n_top`` highly variable genes (scanpy ``seurat_v3``) on the training spots' counts."""
    import anndata as ad
    import scanpy as sc

    sub = counts.iloc[np.flatnonzero(train)]
    sub = sub.loc[:, sub.to_numpy().sum(axis=0) > 0]
    adata = ad.AnnData(sub.to_numpy(dtype=np.float32))
    adata.var_names = [str(g) for g in sub.columns]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=n_top)
    var = adata.var[adata.var["highly_variable"]].sort_values("highly_variable_rank")
    return [str(g) for g in var.index]


def split_mask(section: Section, split: str) -> np.ndarray:
    """Boolean training mask: ``checkerboard`` ((x + y) even) or ``random:<seed>`` (50%)."""
    if split == "checkerboard":
        return (section.array_xy.sum(axis=1) % 2) == 0
    if split.startswith("random:"):
        n = len(section.array_xy)
        rng = np.random.default_rng(int(split.split(":", 1)[1]))
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
    sp_, st_ = np.sqrt((pc**2).sum(axis=0)), np.sqrt((tc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(axis=0) / (sp_ * st_)
    r[(sp_ <= 1e-12) | (st_ <= 1e-12) | ~np.isfinite(r)] = np.nan
    return r


def score(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Held-out metrics: mean/median Pearson r over genes, n(r > 0.3), MSE, MAE."""
    r = pearson_per_gene(pred, true)
    ok = np.isfinite(r)
    return {
        "pearson_mean": float(r[ok].mean()) if ok.any() else float("nan"),
        "pearson_median": float(np.median(r[ok])) if ok.any() else float("nan"),
        "n_genes_r_gt_0.3": int((r[ok] > 0.3).sum()),
        "n_genes_nan_r": int((~ok).sum()),
        "mse": float(np.mean((pred - true) ** 2)),
        "mae": float(np.mean(np.abs(pred - true))),
    }


# --------------------------------------------------------------------------------------------
# no-image yardsticks


def knn_predict(
    train_xy: np.ndarray, train_y: np.ndarray, query_xy: np.ndarray, k: int = 4
) -> np.ndarray:
    """Inverse-distance weighted mean of the ``k`` nearest training spots."""
    dist, idx = cKDTree(train_xy).query(query_xy, k=k)
    w = 1.0 / np.maximum(dist, 1e-9)
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("qk,qkg->qg", w, train_y[idx])


def gauss_smooth(
    train_xy: np.ndarray, train_y: np.ndarray, query_xy: np.ndarray, h: float, exclude_self: bool
) -> np.ndarray:
    """Nadaraya–Watson smoothing with a Gaussian kernel of bandwidth ``h`` (px)."""
    d2 = ((query_xy[:, None, :] - train_xy[None, :, :]) ** 2).sum(-1)
    w = np.exp(-0.5 * d2 / h**2)
    if exclude_self:
        np.fill_diagonal(w, 0.0)
    s = w.sum(axis=1, keepdims=True)
    s[s == 0] = 1.0
    return (w / s) @ train_y


def project(y: np.ndarray, mean: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """Project rows of ``y`` onto ``mean + span(basis)`` (identity when ``basis`` is None)."""
    return y if basis is None else mean + (y - mean) @ basis.T @ basis


@dataclass
class SmoothLowRankFit:
    """Chosen bandwidth (px) and rank (None = full), with the leave-one-out grid."""

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
    """Bandwidth (multiples of the spot pitch) and rank by leave-one-out on the training spots."""
    mean = train_y.mean(axis=0)
    _, _, vt = np.linalg.svd(train_y - mean, full_matrices=False)
    grid: list[dict[str, Any]] = []
    best = (-np.inf, bandwidths[0] * pitch_px, None)
    for hb in bandwidths:
        sm = gauss_smooth(train_xy, train_y, train_xy, hb * pitch_px, exclude_self=True)
        for rank in ranks:
            if rank is not None and rank >= vt.shape[0]:
                continue
            r = float(
                np.nanmean(
                    pearson_per_gene(
                        project(sm, mean, None if rank is None else vt[:rank]), train_y
                    )
                )
            )
            grid.append({"bandwidth_pitch": hb, "rank": rank, "loo_pearson": r})
            if r > best[0]:
                best = (r, hb * pitch_px, rank)
    return SmoothLowRankFit(bandwidth_px=best[1], rank=best[2], loo_pearson=best[0], grid=grid)


def smooth_lowrank_predict(
    train_xy: np.ndarray, train_y: np.ndarray, query_xy: np.ndarray, fit: SmoothLowRankFit
) -> np.ndarray:
    """Smooth at ``query_xy`` with the chosen bandwidth, project onto the chosen rank."""
    mean = train_y.mean(axis=0)
    _, _, vt = np.linalg.svd(train_y - mean, full_matrices=False)
    sm = gauss_smooth(train_xy, train_y, query_xy, fit.bandwidth_px, exclude_self=False)
    return project(sm, mean, None if fit.rank is None else vt[: fit.rank])


def noise_ceiling(counts: np.ndarray, genes_idx: np.ndarray, seed: int) -> dict[str, float]:
    """Split-half reliability per gene over all spots, Spearman–Brown corrected to full depth."""
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts, dtype=np.int64)
    half_a = rng.binomial(counts, 0.5)
    half_b = counts - half_a
    r = pearson_per_gene(normalise_log(half_a)[:, genes_idx], normalise_log(half_b)[:, genes_idx])
    full = 2 * r / (1 + r)
    ok = np.isfinite(full)
    # A prediction's correlation with a measurement of reliability R is at most sqrt(R).
    with np.errstate(invalid="ignore"):
        root = np.sqrt(np.clip(full, 0.0, None))
    return {
        "pearson_mean": float(full[ok].mean()),
        "pearson_median": float(np.median(full[ok])),
        "split_half_mean": float(np.nanmean(r)),
        "sqrt_reliability_mean": float(np.nanmean(root[ok])),
        "n_genes_r_gt_0.3": int((full[ok] > 0.3).sum()),
    }


# --------------------------------------------------------------------------------------------
# TESLA


@contextlib.contextmanager
def _tesla_anndata_compat() -> Iterator[None]:
    """Let ``TESLA.imputation`` run on anndata >= 0.12.

    TESLA assigns a frame with an integer index to ``AnnData.obs`` and later looks those labels
    up in an integer-indexed distance table; anndata >= 0.12 converts the index to strings on
    assignment, so the look-up raises ``KeyError``. For the duration of the call, the
    ``AnnData`` name inside ``TESLA.imputation`` refers to a subclass whose ``obs`` assignment
    keeps the assigned index unchanged.
    """
    import anndata as ad

    module = importlib.import_module("TESLA.imputation")

    class _KeepIndexAnnData(ad.AnnData):
        @property
        def obs(self) -> pd.DataFrame:  # type: ignore[override]
            return ad.AnnData.obs.fget(self)

        @obs.setter
        def obs(self, frame: pd.DataFrame) -> None:
            labels = frame.index
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ad.AnnData.obs.fset(self, frame)
            self._obs.index = labels

    saved = module.AnnData
    module.AnnData = _KeepIndexAnnData
    try:
        yield
    finally:
        module.AnnData = saved


def tesla_contour(
    img: np.ndarray, train_pixel_xy: np.ndarray, mode: str
) -> tuple[np.ndarray, dict]:
    """Tissue contour: the tutorial's ``cv2_detect_contour``, or the training spots' convex hull.

    ``auto`` uses the tutorial contour unless it leaves more than 10% of the training spots
    outside (TESLA then has no grid points there), in which case it uses the hull.
    """
    import cv2

    with contextlib.redirect_stdout(io.StringIO()):
        import TESLA

    pts = np.round(train_pixel_xy).astype(np.int32).reshape(-1, 1, 2)  # (column, row)
    info: dict[str, Any] = {}
    if mode in ("cv2", "auto"):
        cnt = TESLA.cv2_detect_contour(img, apertureSize=5, L2gradient=True)
        inside = np.mean(
            [cv2.pointPolygonTest(cnt, (float(c), float(r)), False) >= 0 for c, r in train_pixel_xy]
        )
        info["cv2_contour_train_spots_inside"] = float(inside)
        if mode == "cv2" or inside >= 0.9:
            info["contour"] = "cv2_detect_contour"
            return cnt, info
    elif mode != "hull":
        raise ValueError(f"Expected contour `auto`, `cv2` or `hull`, found `{mode}`.")
    info["contour"] = "convex hull of training spots"
    return cv2.convexHull(pts), info


def tesla_predict(
    img: np.ndarray,
    cnt: np.ndarray,
    train_pixel_xy: np.ndarray,
    train_y: np.ndarray,
    genes: list[str],
    query_pixel_xy: np.ndarray,
    params: dict[str, Any],
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run ``TESLA.imputation`` on the training spots and read its grid at the query positions.

    TESLA's convention is ``pixel_x`` = image row and ``pixel_y`` = image column.
    """
    import anndata as ad

    with contextlib.redirect_stdout(io.StringIO()):
        import TESLA

    raw = ad.AnnData(
        X=np.ascontiguousarray(train_y, dtype=np.float64),
        obs=pd.DataFrame(
            {
                "pixel_x": np.round(train_pixel_xy[:, 1]).astype(int),
                "pixel_y": np.round(train_pixel_xy[:, 0]).astype(int),
            },
            index=[f"train{i}" for i in range(len(train_y))],
        ),
        var=pd.DataFrame(index=[str(g) for g in genes]),
    )
    with (
        _tesla_anndata_compat(),
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        out = TESLA.imputation(img=img, raw=raw, cnt=cnt, genes=list(genes), shape="None", **params)
    order = pd.Index([str(g) for g in out.var_names]).get_indexer([str(g) for g in genes])
    if (order < 0).any():
        raise RuntimeError("TESLA's output lacks some input genes.")
    values = np.asarray(out.X, dtype=np.float64)[:, order]
    grid_rc = np.column_stack([out.obs["x"].to_numpy(float), out.obs["y"].to_numpy(float)])
    dist, idx = cKDTree(grid_rc).query(query_pixel_xy[:, ::-1], k=1)
    return values[idx], {
        "n_grid_points": int(len(grid_rc)),
        "heldout_to_grid_px_median": float(np.median(dist)),
        "heldout_to_grid_px_max": float(dist.max()),
        "n_heldout_farther_than_res": int((dist > params["res"]).sum()),
    }


# --------------------------------------------------------------------------------------------
# driver


def select_genes(
    section: Section, train: np.ndarray, panel: str, hvg: str, n_top: int, log_all: np.ndarray
) -> list[str]:
    """The scored gene panel for one section and split."""
    counts = section.counts
    if panel == "her785":
        names = np.load(HER2ST / "extras" / "her_hvg_cut_1000.npy", allow_pickle=True)
        return [str(g) for g in names if str(g) in counts.columns]
    if hvg == "seurat_v3":
        return hvg_seurat_v3(counts, train, n_top)
    var = log_all[train].var(axis=0)
    return [str(counts.columns[i]) for i in np.argsort(-var, kind="stable")[:n_top]]


def run_section(
    section: Section,
    *,
    split: str,
    panel: str,
    hvg: str,
    n_top: int,
    methods: list[str],
    tesla_res: int,
    tesla_contour_mode: str,
    seed: int,
) -> dict[str, Any]:
    """All methods on one section."""
    train = split_mask(section, split)
    test = ~train
    log_all = normalise_log(section.counts.to_numpy())
    genes = select_genes(section, train, panel, hvg, n_top, log_all)
    gidx = section.counts.columns.get_indexer(genes)
    y = log_all[:, gidx]
    xy = section.pixel_xy
    pitch = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1]))
    res: dict[str, Any] = {
        "section": section.name,
        "n_spots": int(len(xy)),
        "n_train": int(train.sum()),
        "n_heldout": int(test.sum()),
        "n_genes": len(genes),
        "pitch_px": pitch,
        "methods": {},
    }

    def timed(name: str, fn: Callable[[], tuple[np.ndarray, dict[str, Any]]]) -> None:
        print(f"  {section.name}: {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            pred, extra = fn()
        res["methods"][name] = {
            **score(pred, y[test]),
            "wall_s": time.perf_counter() - t0,
            "peak_rss_mb": mem.peak_mb,
            "rss_increase_mb": mem.peak_mb - mem.start_mb,
            **extra,
        }

    if "knn" in methods:
        timed("knn", lambda: (knn_predict(xy[train], y[train], xy[test], k=4), {"k": 4}))
    if "smooth-lowrank" in methods:

        def slr() -> tuple[np.ndarray, dict[str, Any]]:
            fit = fit_smooth_lowrank(xy[train], y[train], pitch)
            return smooth_lowrank_predict(xy[train], y[train], xy[test], fit), {
                "bandwidth_px": fit.bandwidth_px,
                "bandwidth_pitch": fit.bandwidth_px / pitch,
                "rank": fit.rank,
                "loo_pearson": fit.loo_pearson,
            }

        timed("smooth-lowrank", slr)
    tesla_methods = [m for m in ("tesla", "tesla-nocolor") if m in methods]
    if tesla_methods:
        import cv2

        t0 = time.perf_counter()
        img = cv2.imread(str(section.image_path))  # BGR, as in TESLA's tutorial
        if img is None:
            raise FileNotFoundError(section.image_path)
        cnt, cinfo = tesla_contour(img, xy[train], tesla_contour_mode)
        prep_s = time.perf_counter() - t0
        for m in tesla_methods:
            params = {"res": tesla_res, "s": 1 if m == "tesla" else 0, "k": 2, "num_nbs": 10}

            def run_tesla(params: dict[str, Any] = params) -> tuple[np.ndarray, dict[str, Any]]:
                pred, info = tesla_predict(img, cnt, xy[train], y[train], genes, xy[test], params)
                return pred, {"params": params, "image_read_contour_s": prep_s, **cinfo, **info}

            timed(m, run_tesla)
        del img
    if "ceiling" in methods:
        t0 = time.perf_counter()
        res["methods"]["ceiling"] = {
            **noise_ceiling(section.counts.to_numpy(), gidx, seed),
            "wall_s": time.perf_counter() - t0,
        }
    res["genes"] = genes
    return res


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="C2 only, 30 genes, TESLA grid step 400 px")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--split", default="checkerboard", help="checkerboard | random:<seed>")
    p.add_argument("--panel", default="hvg", choices=["hvg", "her785"])
    p.add_argument("--hvg", default="seurat_v3", choices=["seurat_v3", "variance"])
    p.add_argument("--n-top", type=int, default=250, help="genes for --panel hvg")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--tesla-res", type=int, default=50, help="TESLA grid step in px (tutorial: 50)")
    p.add_argument("--tesla-contour", default="auto", choices=["auto", "cv2", "hull"])
    p.add_argument("--seed", type=int, default=0, help="seed of the noise-ceiling split")
    p.add_argument("--name", default=None, help="result file name (default from the options)")
    args = p.parse_args(argv)

    sections = args.sections.split(",")
    n_top, tesla_res = args.n_top, args.tesla_res
    if args.quick:
        sections, n_top, tesla_res = ["C2"], 30, 400
    methods = [m for m in args.methods.split(",") if m]
    if set(methods) - set(METHODS):
        p.error(f"unknown methods {sorted(set(methods) - set(METHODS))}; choose from {METHODS}")

    meta = run_metadata(extra_packages=["TESLAforST", "opencv-python-headless", "scikit-learn"])
    t0 = time.perf_counter()
    per_section = []
    for name in sections:
        print(f"{name} ...", file=sys.stderr, flush=True)
        per_section.append(
            run_section(
                load_section(name),
                split=args.split,
                panel=args.panel,
                hvg=args.hvg,
                n_top=n_top,
                methods=methods,
                tesla_res=tesla_res,
                tesla_contour_mode=args.tesla_contour,
                seed=args.seed,
            )
        )
    mean: dict[str, dict[str, float]] = {}
    for m in methods:
        keys = [
            k
            for k in (*METRICS, "split_half_mean", "sqrt_reliability_mean")
            if k in per_section[0]["methods"][m]
        ]
        mean[m] = {k: float(np.mean([s["methods"][m][k] for s in per_section])) for k in keys}

    panel_desc = (
        "785-gene her2st panel (Hist2ST/HisToGene)"
        if args.panel == "her785"
        else f"top {n_top} HVG ({args.hvg}, training spots)"
    )
    result = {
        "benchmark": "peer_recovery",
        "quick": args.quick,
        **meta,
        "protocol": {
            "dataset": "her2st",
            "sections": sections,
            "split": args.split,
            "panel": panel_desc,
            "target": "log1p(normalize_total(counts, 1e4)) over all genes",
            "scored_on": "held-out spots only",
            "tesla_res": tesla_res,
            "tesla_contour": args.tesla_contour,
        },
        "sections": per_section,
        "mean": mean,
        "total_wall_s": time.perf_counter() - t0,
    }
    if args.name:
        name = args.name
    elif args.quick:
        name = "peer_recovery_quick"
    else:
        parts = [
            "peer_recovery",
            args.split.replace(":", ""),
            args.panel if args.panel == "her785" else args.hvg,
        ]
        name = "_".join(parts)
    path = write_json(name, result)

    print(f"\n## her2st recovery — split {args.split}, {panel_desc}\n")
    print("Mean Pearson r over genes, held-out spots (ceiling: split-half, Spearman–Brown)\n")
    rows = [
        [m, *[s["methods"][m]["pearson_mean"] for s in per_section], mean[m]["pearson_mean"]]
        for m in methods
    ]
    print(markdown_table(["method", *sections, "mean"], rows))
    print("\nMeans over sections\n")
    print(
        markdown_table(
            ["method", *METRICS], [[m, *[mean[m].get(k) for k in METRICS]] for m in methods]
        )
    )
    if "ceiling" in methods:
        c = mean["ceiling"]
        print(
            f"\nceiling: split-half r {c['split_half_mean']:.3f}, Spearman–Brown reliability "
            f"{c['pearson_mean']:.3f}, sqrt(reliability) {c['sqrt_reliability_mean']:.3f}"
        )
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
