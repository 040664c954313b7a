"""Held-out accuracy on her2st C2–C5: the HisToSGE models against no-image baselines.

    .venv/bin/python bench/accuracy.py          # full run, writes bench/results/accuracy.json
    .venv/bin/python bench/accuracy.py --quick  # C2 checkerboard only (reproduces its numbers)

Protocols (every score on held-out spots only; genes, scaling and models fit on training spots):
  checkerboard   50 % held out by array parity ((x + y) odd)
  random{0,1,2}  50 % held out at random, seeds 0, 1, 2
  superres       2x2 blocks of spots pooled into pseudo-spots (counts summed); train on the
                 pseudo-spots, predict every real spot
  loso           leave one section out: train on the other three, predict this one from its
                 image alone (no measured spot of this section is used)
Gene panels: top 250 variable genes (variance of log1p(normalised counts) on training spots) and
the 785-gene her2st panel (extras/her_hvg_cut_1000.npy).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "her2st"
SECTIONS = ("C2", "C3", "C4", "C5")


def convert_sections(work: Path, sections) -> dict[str, Path]:
    from napari_histosge.io import convert

    out = {}
    d = SHARED / "data"
    for sec in sections:
        store = work / f"{sec}.zarr"
        if not store.exists():
            folder = work / sec
            folder.mkdir(parents=True, exist_ok=True)
            files = [
                d / "ST-cnts" / f"{sec}.tsv.gz",
                d / "ST-spotfiles" / f"{sec}_selection.tsv",
                *sorted((d / "ST-imgs" / "C" / sec).glob("*.jpg")),
            ]
            for f in files:
                link = folder / f.name
                if not link.exists():
                    link.symlink_to(f)
            convert(folder, store)
        out[sec] = store
    return out


def log_norm(counts) -> np.ndarray:
    import scipy.sparse as sp

    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts, dtype=float)
    lib = x.sum(1, keepdims=True)
    return np.log1p(x / np.maximum(lib, 1) * 1e4).astype(np.float32)


def top_variance(values: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(-values.var(0), kind="stable")[:n]


def noise_ceiling(counts, cols: np.ndarray, seed: int = 0) -> float:
    import scipy.sparse as sp

    from napari_histosge.evaluate import pearson_per_gene

    rng = np.random.default_rng(seed)
    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    x = np.rint(x).astype(np.int64)
    a = rng.binomial(x, 0.5)
    b = x - a
    r = pearson_per_gene(log_norm(a)[:, cols], log_norm(b)[:, cols])
    r = r[np.isfinite(r)]
    return float(np.mean(2 * r / (1 + r)))


def score(pred, truth, seconds: float) -> dict:
    from napari_histosge.evaluate import metrics

    m = metrics(pred, truth)
    m.pop("per_gene")
    m["seconds"] = round(seconds, 3)
    return m


class Section:
    def __init__(self, name: str, store: Path):
        import spatialdata as sd

        from napari_histosge.features import extract_features
        from napari_histosge.workflows.pipeline import Slide

        self.name = name
        self.slide = Slide.open(sd.read_zarr(store))
        g = self.slide.geometry
        self.xy = g.centers_um
        t0 = time.perf_counter()
        fs = extract_features(
            self.slide.sdata, g.centers_px, image_key=self.slide.keys.image_key, geometry=g
        )
        self.feature_seconds = time.perf_counter() - t0
        self.features, self.meta = fs.features, fs.meta
        table = self.slide.table
        self.counts = table.X
        self.genes = np.asarray(table.var_names, dtype=str)
        self.values = log_norm(self.counts)
        obs = table.obs
        self.ax, self.ay = obs["array_x"].to_numpy(), obs["array_y"].to_numpy()


def run_split(sec: Section, train: np.ndarray, cols: np.ndarray, configs: dict) -> dict:
    """Recovery on one split through ``evaluate.recovery`` (one call per model configuration)."""
    from napari_histosge.evaluate import recovery, ridge_image

    test = ~train
    genes = [str(g) for g in sec.genes[cols]]
    out = {}
    for name, cfg in configs.items():
        t = time.perf_counter()
        res = recovery(
            sec.slide.table,
            sec.features,
            sec.xy,
            train,
            genes=genes,
            config=cfg,
            feature_meta=sec.meta,
        )
        seconds = time.perf_counter() - t
        methods = {
            k: {**{m: v for m, v in met.items() if m != "per_gene"}, "seconds": None}
            for k, met in res["methods"].items()
        }
        methods["model"]["seconds"] = round(seconds, 3)
        out[name] = methods["model"]
        if name != "improved":
            continue
        y = res["targets"]
        for base in ("knn", "smooth_lowrank", "spatial_shuffle"):
            out[base] = methods[base]
        t = time.perf_counter()
        out["ridge_image"] = score(
            ridge_image(sec.features[train], y[train], sec.features[test]),
            y[test],
            time.perf_counter() - t,
        )
        t = time.perf_counter()
        image_only = res["model"].predict(sec.features[test], sec.xy[test], reference=None)
        out["improved_image_only"] = score(image_only, y[test], time.perf_counter() - t)
    return out


def run_superres(sec: Section, cols: np.ndarray, configs: dict) -> dict:
    """Train on 2x2 pooled pseudo-spots, predict the measured spots."""
    from napari_histosge.evaluate import (
        knn_interpolate,
        pool_pseudospots,
        ridge_image,
        smooth_lowrank,
    )
    from napari_histosge.features import extract_features
    from napari_histosge.train import fit

    g = sec.slide.geometry
    centres_px, pooled, _ = pool_pseudospots(g.centers_px, sec.counts, 2)
    fs = extract_features(
        sec.slide.sdata,
        centres_px,
        image_key=sec.slide.keys.image_key,
        geometry=g,
        cache_name="pseudo2x2",
    )
    pxy = centres_px * g.um_per_px
    py = log_norm(pooled)[:, cols]
    y = sec.values[:, cols]
    out = {}
    t = time.perf_counter()
    out["knn"] = score(knn_interpolate(pxy, py, sec.xy, 4), y, time.perf_counter() - t)
    t = time.perf_counter()
    out["smooth_lowrank"] = score(
        smooth_lowrank(pxy, py).predict(sec.xy), y, time.perf_counter() - t
    )
    t = time.perf_counter()
    out["ridge_image"] = score(
        ridge_image(fs.features, py, sec.features), y, time.perf_counter() - t
    )
    genes = [str(x) for x in sec.genes[cols]]
    for name, cfg in configs.items():
        t = time.perf_counter()
        model = fit(fs.features, pxy, py, genes=genes, config=cfg, feature_meta=fs.meta)
        out[name] = score(model.predict(sec.features, sec.xy), y, time.perf_counter() - t)
    return out


def run_loso(sections: dict, target: str, configs: dict, n_genes: int) -> dict:
    """Train on the other sections pooled, predict ``target`` from its image alone."""
    from napari_histosge.evaluate import ridge_image
    from napari_histosge.train import TrainConfig, fit

    others = [s for k, s in sections.items() if k != target]
    test = sections[target]
    common = set(test.genes)
    for s in others:
        common &= set(s.genes)
    common = sorted(common)
    idx = {s.name: {g: i for i, g in enumerate(s.genes)} for s in [*others, test]}

    def take(s):
        return s.values[:, [idx[s.name][g] for g in common]]

    train_y = np.concatenate([take(s) for s in others])
    cols = top_variance(train_y, n_genes)
    train_y = train_y[:, cols]
    test_y = take(test)[:, cols]
    train_f = np.concatenate([s.features for s in others])
    # Sections are placed far apart so no section's spots neighbour another's.
    train_xy = np.concatenate([s.xy + 1e6 * i for i, s in enumerate(others)])
    out = {}
    t = time.perf_counter()
    out["ridge_image"] = score(
        ridge_image(train_f, train_y, test.features), test_y, time.perf_counter() - t
    )
    t = time.perf_counter()
    mean_pred = np.tile(train_y.mean(0), (len(test_y), 1))
    out["train_mean"] = score(
        mean_pred + 1e-9 * np.random.default_rng(0).normal(size=mean_pred.shape),
        test_y,
        time.perf_counter() - t,
    )
    genes = [common[i] for i in cols]
    cfg = configs.get("improved", TrainConfig())
    t = time.perf_counter()
    model = fit(train_f, train_xy, train_y, genes=genes, config=cfg, feature_meta=test.meta)
    out["improved_image_only"] = score(
        model.predict(test.features, test.xy + 5e6, reference=None), test_y, time.perf_counter() - t
    )
    return out


def _mean_seconds(values: list) -> float | None:
    """Mean of the timed runs; baselines scored inside ``recovery`` are not timed on their own."""
    timed = [v for v in values if v is not None]
    return round(float(np.mean(timed)), 3) if timed else None


def summarise(results: dict) -> dict:
    """Mean over sections of each method's mean r, per protocol and panel."""
    table = {}
    for key, per_sec in results.items():
        methods = next(iter(per_sec.values())).keys()
        table[key] = {
            m: {
                "per_section": {s: round(v[m]["mean_r"], 4) for s, v in per_sec.items()},
                "mean_r": round(float(np.mean([v[m]["mean_r"] for v in per_sec.values()])), 4),
                "median_r": round(float(np.mean([v[m]["median_r"] for v in per_sec.values()])), 4),
                "mse": round(float(np.mean([v[m]["mse"] for v in per_sec.values()])), 4),
                "mae": round(float(np.mean([v[m]["mae"] for v in per_sec.values()])), 4),
                "n_genes_r_gt_0.3": round(
                    float(np.mean([v[m]["n_genes_r_gt_0.3"] for v in per_sec.values()])), 1
                ),
                "seconds": _mean_seconds([v[m]["seconds"] for v in per_sec.values()]),
            }
            for m in methods
        }
    return table


def environment(argv) -> dict:
    import spatialdata
    import timm
    import torch

    cpu = subprocess.run(
        ["bash", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True, text=True
    ).stdout.strip()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu}, {nproc} cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "spatialdata": spatialdata.__version__,
        "command": " ".join([".venv/bin/python", "bench/accuracy.py", *argv]),
    }


def main(argv=None) -> int:
    from napari_histosge.evaluate import random_mask
    from napari_histosge.train import TrainConfig

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="C2 only, checkerboard only (default models: reproduces the C2 numbers)",
    )
    p.add_argument(
        "--work", default=str(ROOT / "bench" / "results" / "tmp"), help="converted stores"
    )
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "accuracy.json"))
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    secs = SECTIONS[:1] if args.quick else SECTIONS
    stores = convert_sections(work, secs)
    sections = {s: Section(s, stores[s]) for s in secs}
    configs = {"improved": TrainConfig(), "faithful": TrainConfig(mode="faithful")}
    panel = np.load(SHARED / "extras" / "her_hvg_cut_1000.npy", allow_pickle=True).astype(str)
    results: dict = {}
    ceilings = {}
    for name, sec in sections.items():
        splits = {"checkerboard": (sec.ax + sec.ay) % 2 == 0}
        if not args.quick:
            for seed in range(3):
                splits[f"random{seed}"] = random_mask(len(sec.xy), 0.5, seed)
        for split, train in splits.items():
            cols = top_variance(sec.values[train], 250)
            results.setdefault(f"{split}/top250", {})[name] = run_split(sec, train, cols, configs)
            print(
                name,
                split,
                "top250",
                {k: round(v["mean_r"], 3) for k, v in results[f"{split}/top250"][name].items()},
                flush=True,
            )
        lookup = {g: i for i, g in enumerate(sec.genes)}
        panel_cols = np.array([lookup[g] for g in panel if g in lookup])
        results.setdefault("checkerboard/her2st785", {})[name] = run_split(
            sec, splits["checkerboard"], panel_cols, configs
        )
        ceilings[name] = {
            "top250": noise_ceiling(
                sec.counts, top_variance(sec.values[splits["checkerboard"]], 250)
            ),
            "her2st785": noise_ceiling(sec.counts, panel_cols),
        }
        if not args.quick:
            cols = top_variance(sec.values, 250)
            results.setdefault("superres/top250", {})[name] = run_superres(sec, cols, configs)
            print(
                name,
                "superres",
                {k: round(v["mean_r"], 3) for k, v in results["superres/top250"][name].items()},
                flush=True,
            )
    if not args.quick:
        for name in sections:
            results.setdefault("loso/top250", {})[name] = run_loso(sections, name, configs, 250)
            print(
                name,
                "loso",
                {k: round(v["mean_r"], 3) for k, v in results["loso/top250"][name].items()},
                flush=True,
            )
    summary = summarise(results)
    doc = {
        "environment": environment(sys.argv[1:] if argv is None else argv),
        "feature_seconds_per_section": {
            k: round(s.feature_seconds, 2) for k, s in sections.items()
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "noise_ceiling": ceilings,
        "summary": summary,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    for key, methods in summary.items():
        print(
            f"\n### {key}\n\n| method | "
            + " | ".join(secs)
            + " | mean | median | MSE | MAE | genes r>0.3 | s |"
        )
        print("|---" * (len(secs) + 7) + "|")
        for m, v in methods.items():
            print(
                f"| {m} | "
                + " | ".join(f"{v['per_section'][s]:.3f}" for s in secs)
                + f" | {v['mean_r']:.3f} | {v['median_r']:.3f} | {v['mse']:.3f} | {v['mae']:.3f} "
                f"| {v['n_genes_r_gt_0.3']} | {v['seconds']} |"
            )
    print("\nnoise ceiling:", json.dumps(ceilings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
