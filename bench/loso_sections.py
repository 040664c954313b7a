"""Leave one section out through the command line: `histosge train` on three her2st sections,
`histosge predict` on the fourth from a store holding only its H&E image and spot circles (no
table), scored at the held-out section's spots against the training-mean and ridge-on-image
baselines.

    .venv/bin/python bench/loso_sections.py --sections C2 C3 C4 C5 --n-top-genes 250

Truth and training targets: log1p of counts normalised to 1e4 per spot, each section on its own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import markdown_table, run_metadata, write_json
from accuracy import convert_sections, log_norm

from napari_histosge.store import write_sdata

ROOT = Path(__file__).resolve().parents[1]


def histosge(*args: str) -> tuple[str, float]:
    cmd = [sys.executable, "-m", "napari_histosge.cli", *args, "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return " ".join(["histosge", *args]), time.perf_counter() - t0


def he_only(store: Path) -> Path:
    import spatialdata as sd

    out = store.with_name(store.stem + "_he.zarr")
    if not out.exists():
        sdata = sd.read_zarr(store)
        keep = sd.SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes))
        write_sdata(keep, out)
    return out


class Truth:
    def __init__(self, store: Path):
        from napari_histosge.features import extract_features
        from napari_histosge.workflows.pipeline import Slide

        self.slide = Slide.open(store)
        g = self.slide.geometry
        table = self.slide.table
        self.genes = {str(x): i for i, x in enumerate(table.var_names)}
        self.values = log_norm(table.X)
        self.ids = np.asarray(g.spot_ids, dtype=str)
        attrs = table.uns["spatialdata_attrs"]
        self.instance = table.obs[attrs["instance_key"]].astype(str).to_numpy()
        fs = extract_features(
            self.slide.sdata, g.centers_px, image_key=self.slide.keys.image_key, geometry=g
        )
        self.features = fs.features

    def take(self, genes: list[str]) -> np.ndarray:
        return self.values[:, [self.genes[g] for g in genes]]


def score(pred: np.ndarray, truth: np.ndarray) -> dict:
    from napari_histosge.evaluate import metrics

    m = metrics(pred, truth)
    m.pop("per_gene")
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", nargs="+", default=["C2", "C3", "C4", "C5"])
    ap.add_argument("--n-top-genes", type=int, default=250)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--work", default="/tmp/histosge_loso_sections")
    ap.add_argument("--reuse", action="store_true", help="reuse models already trained in --work")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stores = convert_sections(work, args.sections)
    truths = {s: Truth(p) for s, p in stores.items()}
    results: dict = {}
    commands: list[str] = []
    for target in args.sections:
        import spatialdata as sd

        others = [s for s in args.sections if s != target]
        ckpt = work / f"model_without_{target}"
        if args.reuse and (ckpt / "model.json").is_file():
            cmd, t_train = f"(reused model trained earlier) {ckpt}", float("nan")
        else:
            cmd, t_train = histosge(
                "train",
                *[str(stores[s]) for s in others],
                "--checkpoint-out",
                str(ckpt),
                "--n-top-genes",
                str(args.n_top_genes),
                "--epochs",
                str(args.epochs),
            )
        commands.append(cmd)
        out = work / f"pred_{target}.zarr"
        cmd, t_pred = histosge(
            "predict",
            str(he_only(stores[target])),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--overwrite",
        )
        commands.append(cmd)
        table = sd.read_zarr(out).tables["histosge_predictions"]
        t = truths[target]
        # Score the genes the held-out section measures (a training gene may be absent there).
        genes = [str(g) for g in table.var_names if str(g) in t.genes]
        spots = table[table.obs["kind"].astype(str) == "spot"][:, genes]
        row = {str(i): k for k, i in enumerate(t.instance)}
        order = np.array([row[str(i)] for i in spots.obs["position_id"]])
        truth = t.take(genes)[order]
        pred = np.asarray(spots.X)
        res = {"improved_image_only": score(pred, truth)}
        res["improved_image_only"]["n_genes"] = len(genes)
        res["improved_image_only"]["seconds"] = round(t_train + t_pred, 1)
        train_y = np.concatenate([truths[s].take(genes) for s in others])
        train_f = np.concatenate([truths[s].features for s in others])
        mean = np.tile(train_y.mean(0), (len(truth), 1))
        res["train_mean"] = score(
            mean + 1e-9 * np.random.default_rng(0).normal(size=mean.shape), truth
        )
        from napari_histosge.evaluate import ridge_image

        res["ridge_image"] = score(ridge_image(train_f, train_y, t.features[order]), truth)
        results[target] = res
        print(target, {k: round(v["mean_r"], 3) for k, v in res.items()}, flush=True)
    methods = ["train_mean", "ridge_image", "improved_image_only"]
    rows = []
    for m in methods:
        per = [results[s][m]["mean_r"] for s in args.sections]
        rows.append(
            [
                m,
                *[f"{v:.3f}" for v in per],
                f"**{np.mean(per):.3f}**",
                f"{np.mean([results[s][m]['mse'] for s in args.sections]):.3f}",
                f"{np.mean([results[s][m]['mae'] for s in args.sections]):.3f}",
            ]
        )
    table = markdown_table(["method", *args.sections, "mean r", "MSE", "MAE"], rows)
    print(table)
    write_json(
        "loso_sections",
        {
            "meta": run_metadata(),
            "args": vars(args),
            "results": results,
            "commands": commands,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
