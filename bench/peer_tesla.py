"""her2st C2–C5 held-out spot recovery with TESLA (TESLAforST), beside an inverse-distance kNN.

Standalone: needs only numpy, pandas, scipy, scanpy, anndata, Pillow, opencv and TESLAforST.

Protocol, per section:

* split: spot ids are ``"{x}x{y}"`` (integer array column, row). Spots with ``(x + y)`` odd are
  held out; the others (``(x + y)`` even) are the only ones any method sees.
* target: ``log1p(normalize_total(counts, target_sum=1e4))`` over ALL genes of the section (scanpy).
* genes: the 250 genes with the highest variance of that target over the TRAINING spots.
* score: per-gene Pearson r between prediction and target over the held-out spots (NaN where
  either side is constant; NaNs are left out of mean/median), the number of genes with r > 0.3,
  and the wall time of the method.

Methods:

* ``knn``: inverse-distance weighted mean of the k=4 nearest training spots in pixel space.
* ``tesla``: ``TESLA.imputation(img, raw, cnt, genes, shape="None", res=50, s=1, k=2, num_nbs=10)``,
  the tutorial parameters, with the tutorial's tissue contour ``TESLA.cv2_detect_contour(img,
  apertureSize=5, L2gradient=True)`` and the image in the channel order of ``cv2.imread`` (BGR).
  TESLA imputes on a square pixel grid with step ``res``; every held-out spot takes the value of
  the grid point nearest to its centre. TESLA's output is a weighted mean of the input rows, so it
  is in the target space (log1p of normalised counts) with no rescaling.
* ``tesla-nocolor``: the same with ``s=0``. ``s`` multiplies TESLA's histology (colour) axis
  ``z``; with ``s=0`` every point has ``z = 0`` and only the pixel distance remains.

TESLA's coordinate convention: ``obs["pixel_x"]`` is the image ROW and ``obs["pixel_y"]`` the
image COLUMN (it indexes ``img[pixel_x, pixel_y]``). her2st's ``pixel_x`` is the column and
``pixel_y`` the row, so they are swapped when the input is built.

anndata >= 0.12 turns the integer index of TESLA's internal grid table into strings when it is
assigned to ``AnnData.obs``; TESLA then looks those strings up in a frame indexed by integers and
fails with ``KeyError: '0'``. The run below therefore gives ``TESLA.imputation`` (through its own
module namespace, for the duration of the call) an ``AnnData`` subclass whose ``obs`` setter keeps
the frame's index as it is. Nothing else in TESLA is touched.

Usage::

    .venv/bin/python bench/peer_tesla.py                 # C2-C5, writes bench/results/peer_tesla.json
    .venv/bin/python bench/peer_tesla.py --quick         # C2 only, res=400 grid, no JSON
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import io
import json
import os
import platform
import shlex
import sys
import time
import traceback
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.spatial import cKDTree

Image.MAX_IMAGE_PIXELS = None

HERE = Path(__file__).resolve().parent
DATA = Path("/work/shared/data/her2st")
SECTIONS = ("C2", "C3", "C4", "C5")
N_GENES = 250
KNN_K = 4
TESLA_SETTINGS = {
    "tesla": {"res": 50, "s": 1, "k": 2, "num_nbs": 10},
    "tesla-nocolor": {"res": 50, "s": 0, "k": 2, "num_nbs": 10},
}


# ---------------------------------------------------------------------------------------------
# data


def load_section(name: str) -> dict:
    counts = pd.read_csv(DATA / "data" / "ST-cnts" / f"{name}.tsv.gz", sep="\t", index_col=0)
    counts.index = counts.index.astype(str)
    if counts.columns.duplicated().any():
        counts = counts.T.groupby(level=0).sum().T
    spots = pd.read_csv(DATA / "data" / "ST-spotfiles" / f"{name}_selection.tsv", sep="\t")
    spots.index = [f"{int(x)}x{int(y)}" for x, y in zip(spots["x"], spots["y"])]
    spots = spots.loc[counts.index]
    array_xy = np.array([[int(v) for v in sid.split("x")] for sid in counts.index])
    image = sorted((DATA / "data" / "ST-imgs" / name[0] / name).glob("*.jpg"))[0]
    return {
        "name": name,
        "counts": counts,
        "array_xy": array_xy,
        "pixel_xy": spots[["pixel_x", "pixel_y"]].to_numpy(float),  # (column, row)
        "image": image,
    }


def log_targets(counts: pd.DataFrame) -> np.ndarray:
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(counts.to_numpy(dtype=np.float64))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return np.asarray(adata.X, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# metrics


def pearson_per_gene(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    pc = pred - pred.mean(axis=0)
    tc = true - true.mean(axis=0)
    sp = np.sqrt((pc**2).sum(axis=0))
    st = np.sqrt((tc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(axis=0) / (sp * st)
    r[(sp <= 1e-12) | (st <= 1e-12) | ~np.isfinite(r)] = np.nan
    return r


def summarise(r: np.ndarray) -> dict:
    ok = np.isfinite(r)
    return {
        "pearson_mean": float(np.mean(r[ok])) if ok.any() else float("nan"),
        "pearson_median": float(np.median(r[ok])) if ok.any() else float("nan"),
        "n_genes_r_gt_0.3": int((r[ok] > 0.3).sum()),
        "n_genes_nan": int((~ok).sum()),
    }


# ---------------------------------------------------------------------------------------------
# methods


def knn_predict(train_xy: np.ndarray, train_y: np.ndarray, query_xy: np.ndarray, k: int) -> np.ndarray:
    dist, idx = cKDTree(train_xy).query(query_xy, k=k)
    w = 1.0 / np.maximum(dist, 1e-9)
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("qk,qkg->qg", w, train_y[idx])


def _anndata_keeping_obs_index():
    """AnnData whose ``obs`` setter keeps the assigned frame's index (no str conversion)."""
    import anndata as ad

    class AnnDataKeepIndex(ad.AnnData):
        @property
        def obs(self):
            return ad.AnnData.obs.fget(self)

        @obs.setter
        def obs(self, value):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ad.AnnData.obs.fset(self, value)
            self._obs.index = value.index

    return AnnDataKeepIndex


def read_image_bgr(path: Path) -> np.ndarray:
    """The H&E as ``cv2.imread`` would give it: uint8, (rows, cols, 3), BGR."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def tesla_contour(img_bgr: np.ndarray, train_rc: np.ndarray) -> tuple[np.ndarray, dict]:
    """Tutorial contour (cv2 edges); TESLA's own spot-scan contour if that misses the spots."""
    import cv2
    import TESLA

    cnt = TESLA.cv2_detect_contour(img_bgr, apertureSize=5, L2gradient=True)
    # cv2 contour points are (column, row).
    inside = np.array(
        [cv2.pointPolygonTest(cnt, (float(c), float(r)), False) >= 0 for r, c in train_rc]
    )
    info = {"contour": "cv2_detect_contour", "train_spots_inside_contour": float(inside.mean())}
    if inside.mean() < 0.9:
        info["contour_cv2_fraction_inside"] = float(inside.mean())
        info["contour"] = "scan_contour(shape='square') on training spots (cv2 contour missed spots)"
        cnt = None
    return cnt, info


def tesla_predict(
    img_bgr: np.ndarray,
    cnt: np.ndarray | None,
    train_ids: list[str],
    train_array_xy: np.ndarray,
    train_pixel_xy: np.ndarray,
    train_y: np.ndarray,
    genes: list[str],
    query_pixel_xy: np.ndarray,
    params: dict,
) -> tuple[np.ndarray, dict]:
    import anndata as ad
    import TESLA

    # TESLA: pixel_x = row, pixel_y = column.
    obs = pd.DataFrame(
        {
            "pixel_x": np.round(train_pixel_xy[:, 1]).astype(int),
            "pixel_y": np.round(train_pixel_xy[:, 0]).astype(int),
            "x": train_array_xy[:, 1],
            "y": train_array_xy[:, 0],
            "array_x": train_array_xy[:, 1],
            "array_y": train_array_xy[:, 0],
        },
        index=pd.Index(train_ids, dtype=object),
    )
    raw = ad.AnnData(
        X=np.ascontiguousarray(train_y, dtype=np.float64),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(genes, dtype=object)),
    )
    info: dict = {}
    if cnt is None:
        cnt = TESLA.scan_contour(obs[["pixel_x", "pixel_y", "array_x", "array_y"]], scan_x=True, shape="square")
    mod = importlib.import_module("TESLA.imputation")
    original = mod.AnnData
    mod.AnnData = _anndata_keeping_obs_index()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = TESLA.imputation(
                img=img_bgr, raw=raw, cnt=cnt, genes=list(genes), shape="None", **params
            )
    finally:
        mod.AnnData = original
    out_genes = [str(g) for g in out.var_names]
    order = pd.Index(out_genes).get_indexer(list(genes))
    if (order < 0).any():
        raise RuntimeError("TESLA output lacks some input genes")
    values = np.asarray(out.X, dtype=np.float64)[:, order]
    grid_rc = np.column_stack([out.obs["x"].to_numpy(float), out.obs["y"].to_numpy(float)])
    query_rc = query_pixel_xy[:, ::-1]
    dist, idx = cKDTree(grid_rc).query(query_rc, k=1)
    info.update(
        {
            "n_grid_points": int(len(grid_rc)),
            "heldout_to_grid_px_median": float(np.median(dist)),
            "heldout_to_grid_px_max": float(dist.max()),
            "n_heldout_farther_than_res": int((dist > params["res"]).sum()),
            "output_range": [float(values.min()), float(values.max())],
        }
    )
    return values[idx], info


# ---------------------------------------------------------------------------------------------
# driver


def run_section(name: str, methods: list[str], res_override: int | None) -> dict:
    sec = load_section(name)
    counts = sec["counts"]
    axy = sec["array_xy"]
    train = (axy.sum(axis=1) % 2) == 0
    test = ~train
    y_all = log_targets(counts)
    var = y_all[train].var(axis=0)
    top = np.argsort(-var, kind="stable")[:N_GENES]
    genes = [str(g) for g in counts.columns[top]]
    y = y_all[:, top]
    pxy = sec["pixel_xy"]
    out = {
        "section": name,
        "n_spots": int(len(pxy)),
        "n_train": int(train.sum()),
        "n_heldout": int(test.sum()),
        "n_genes_total": int(counts.shape[1]),
        "n_genes_scored": len(genes),
        "genes": genes,
        "methods": {},
    }
    if "knn" in methods:
        t0 = time.perf_counter()
        pred = knn_predict(pxy[train], y[train], pxy[test], KNN_K)
        wall = time.perf_counter() - t0
        out["methods"]["knn"] = {
            **summarise(pearson_per_gene(pred, y[test])),
            "wall_s": wall,
            "params": {"k": KNN_K, "weights": "1/distance (pixels)"},
        }
    tesla_methods = [m for m in methods if m in TESLA_SETTINGS]
    if tesla_methods:
        t0 = time.perf_counter()
        img = None
        cnt = None
        cinfo: dict = {}
        try:
            img = read_image_bgr(sec["image"])
            cnt, cinfo = tesla_contour(img, pxy[train][:, ::-1])
        except Exception as exc:  # noqa: BLE001
            cinfo = {"contour_error": f"{type(exc).__name__}: {exc}"}
        prep_s = time.perf_counter() - t0
        out["tesla_image"] = {"path": str(sec["image"]), "shape": None if img is None else list(img.shape),
                              "read_and_contour_s": prep_s, **cinfo}
        for m in tesla_methods:
            params = dict(TESLA_SETTINGS[m])
            if res_override:
                params["res"] = res_override
            print(f"  {name}: {m} {params} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                if img is None:
                    raise RuntimeError(cinfo.get("contour_error", "image not read"))
                pred, info = tesla_predict(
                    img, cnt, list(counts.index[train]), axy[train], pxy[train], y[train], genes,
                    pxy[test], params,
                )
                wall = time.perf_counter() - t0
                out["methods"][m] = {
                    **summarise(pearson_per_gene(pred, y[test])),
                    "wall_s": wall,
                    "wall_s_incl_image_read_and_contour": wall + prep_s,
                    "params": params,
                    **info,
                }
            except Exception as exc:  # noqa: BLE001
                out["methods"][m] = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=6),
                    "wall_s": time.perf_counter() - t0,
                    "params": params,
                }
                print(out["methods"][m]["traceback"], file=sys.stderr)
        del img
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def fmt(v, d: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.{d}f}"
    return str(v)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--methods", default="knn,tesla,tesla-nocolor")
    p.add_argument("--quick", action="store_true", help="C2 only, TESLA grid step 400 px, no JSON")
    p.add_argument("--out", default=str(HERE / "results" / "peer_tesla.json"))
    args = p.parse_args(argv)
    sections = ["C2"] if args.quick else args.sections.split(",")
    methods = [m for m in args.methods.split(",") if m]
    res_override = 400 if args.quick else None

    t_start = time.perf_counter()
    per_section = []
    for name in sections:
        print(f"{name} ...", file=sys.stderr, flush=True)
        per_section.append(run_section(name, methods, res_override))

    mean: dict = {}
    for m in methods:
        rows = [s["methods"].get(m, {}) for s in per_section]
        if all("pearson_mean" in r for r in rows):
            mean[m] = {
                k: float(np.mean([r[k] for r in rows]))
                for k in ("pearson_mean", "pearson_median", "n_genes_r_gt_0.3", "wall_s")
            }
            mean[m]["total_wall_s"] = float(np.sum([r["wall_s"] for r in rows]))
            if all("wall_s_incl_image_read_and_contour" in r for r in rows):
                mean[m]["wall_s_incl_image_read_and_contour"] = float(
                    np.mean([r["wall_s_incl_image_read_and_contour"] for r in rows])
                )
        else:
            mean[m] = {"error": "not every section ran", "errors": [r.get("error") for r in rows]}

    result = {
        "benchmark": "peer_tesla",
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "cd /work/main && " + " ".join(
            shlex.quote(a) for a in [".venv/bin/python", os.path.relpath(sys.argv[0], "/work/main"), *sys.argv[1:]]
        ),
        "versions": {
            pkg: _version(pkg)
            for pkg in ("TESLAforST", "anndata", "scanpy", "numpy", "pandas", "scipy",
                        "opencv-python-headless", "torch", "Pillow")
        },
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count()},
        "protocol": {
            "dataset": "her2st (legacy ST), /work/shared/data/her2st",
            "sections": sections,
            "split": "held out: (x + y) odd on the integer array ids '{x}x{y}'; train: (x + y) even",
            "target": "scanpy normalize_total(target_sum=1e4) over all genes, then log1p",
            "genes": f"top {N_GENES} by variance of the target over training spots",
            "score": "per-gene Pearson r over held-out spots; NaN (constant) genes excluded from mean/median",
            "tesla_readout": "nearest TESLA grid point to each held-out spot centre "
                             "(her2st pixel_x = column, pixel_y = row)",
            "tesla_output_space": "same as target (weighted mean of input log1p rows; no scaling)",
            "tesla_colour_term": "s multiplies the histology axis z; s=0 switches it off",
            "tesla_anndata_shim": "AnnData subclass keeping obs index given to TESLA.imputation's namespace "
                                  "during the call (anndata 0.12 str-index conversion breaks its grid look-ups)",
        },
        "sections": per_section,
        "mean": mean,
        "total_wall_s": time.perf_counter() - t_start,
    }

    headers = ["method", *sections, "mean r", "median r", "n r>0.3", "wall s / section",
               "wall s / section incl. image read + contour"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for m in methods:
        cells = []
        for s in per_section:
            r = s["methods"].get(m, {})
            cells.append(fmt(r.get("pearson_mean")) if "pearson_mean" in r else "error")
        mm = mean[m]
        if "pearson_mean" in mm:
            cells += [fmt(mm["pearson_mean"]), fmt(mm["pearson_median"]),
                      fmt(mm["n_genes_r_gt_0.3"], 1), fmt(mm["wall_s"], 2),
                      fmt(mm.get("wall_s_incl_image_read_and_contour"), 1)]
        else:
            cells += ["error"] * 5
        lines.append("| " + " | ".join([m, *cells]) + " |")
    table = "\n".join(lines)
    result["table_markdown"] = table
    print(f"\n## her2st held-out recovery (checkerboard, top {N_GENES} train-variance genes)\n")
    print("Per-section columns: mean Pearson r over genes on held-out spots; mean/median r and n r>0.3 "
          "are means over sections.\n")
    print(table)
    if not args.quick:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
