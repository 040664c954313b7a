"""her2st leave one section out with the held-out section given as a pyramidal TIFF file.

    .venv/bin/python bench/wsi_loso.py --target C2 --train C3 C4 C5 --n-top-genes 250

One model is trained on the other sections (``histosge train``). The held-out section is then
predicted three ways, each scored at its measured spots against its own counts (log1p of counts
normalised to 1e4, the genes it measures):

* ``store_spots``: a store holding its H&E and spot circles, no table (what
  ``bench/loso_sections.py`` scores): predictions at the spots themselves;
* ``tiff``: its H&E written as a tiled pyramidal TIFF (the store's own pyramid levels) with the
  scale in the resolution tags (the scale measured from its spots), no spots: ``histosge
  predict`` lays the model's lattice over the tissue and the map is read at the spot centres;
* ``store_image``: the same H&E and scale as a store with the image only: must equal ``tiff``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import markdown_table, run_metadata, write_json
from accuracy import convert_sections
from loso_sections import Truth, he_only, score


def _histosge(*args: str) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "napari_histosge.cli", *args, "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def write_tiff(levels: list[np.ndarray], path: Path, um_per_px: float) -> Path:
    """Write ``(y, x, 3)`` levels (the store's own pyramid) as a tiled pyramidal TIFF."""
    import tifffile

    per_cm = 1e4 / um_per_px
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, lv in enumerate(levels):
            down = levels[0].shape[1] / lv.shape[1]
            extra = {"subifds": len(levels) - 1} if i == 0 else {"subfiletype": 1}
            tw.write(lv, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None,
                     resolution=(per_cm / down, per_cm / down), resolutionunit="CENTIMETER",
                     **extra)  # fmt: skip
    return path


def at_spots(out: Path, centers_px: np.ndarray, genes: list[str]) -> np.ndarray:
    """Read a prediction store's map at image positions (nearest map pixel)."""
    import spatialdata as sd

    from napari_histosge.images import image_levels
    from napari_histosge.maps import GeneMaps, sample_map

    sdata = sd.read_zarr(out)
    element = sdata.images["histosge_expression"]
    from spatialdata.transformations import get_transformation

    affine = get_transformation(element).to_affine_matrix(("x", "y"), ("x", "y"))
    data = image_levels(element)[0]
    names = [str(c) for c in data.coords["c"].values]
    maps = GeneMaps(
        data=np.asarray(data.sel(c=genes)),
        genes=genes,
        pitch_px=float(affine[0, 0]),
        origin_px=(float(affine[0, 2]), float(affine[1, 2])),
    )
    assert set(genes) <= set(names)
    return np.stack([sample_map(maps, g, centers_px) for g in genes], axis=1)


def main() -> None:
    import spatialdata as sd

    from napari_histosge.images import image_levels
    from napari_histosge.io.wsi import UM_PER_PX_ATTR
    from napari_histosge.store import write_sdata

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="C2")
    ap.add_argument("--train", nargs="+", default=["C3", "C4", "C5"])
    ap.add_argument("--n-top-genes", type=int, default=250)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--work", default="/tmp/histosge_wsi_loso")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    meta = run_metadata(["tiffslide", "tifffile"])
    stores = convert_sections(work, [args.target, *args.train])
    ckpt = work / f"model_without_{args.target}"
    t_train = float("nan")
    if not (ckpt / "model.json").is_file():
        t_train = _histosge(
            "train", *[str(stores[s]) for s in args.train], "--checkpoint-out", str(ckpt),
            "--n-top-genes", str(args.n_top_genes), "--epochs", str(args.epochs),
        )  # fmt: skip
    truth = Truth(stores[args.target])
    geom = truth.slide.geometry
    image = truth.slide.sdata.images[truth.slide.keys.image_key]
    levels = [np.asarray(lv.data).transpose(1, 2, 0) for lv in image_levels(image)]
    tif = write_tiff(levels, work / f"{args.target}.tif", geom.um_per_px)
    image_only = work / f"{args.target}_image.zarr"
    if not image_only.exists():
        key = truth.slide.keys.image_key
        keep = sd.SpatialData(
            images={key: image}, attrs={UM_PER_PX_ATTR: {key: float(geom.um_per_px)}}
        )
        write_sdata(keep, image_only)
    runs = {
        "store_spots": he_only(stores[args.target]),
        "tiff": tif,
        "store_image": image_only,
    }
    results, preds = {}, {}
    for name, src in runs.items():
        out = work / f"pred_{name}.zarr"
        seconds = _histosge(
            "predict", str(src), "--checkpoint", str(ckpt), "--out", str(out), "--overwrite",
            "--no-cache",
        )  # fmt: skip
        table = sd.read_zarr(out).tables["histosge_predictions"]
        genes = [str(g) for g in table.var_names if str(g) in truth.genes]
        if name == "store_spots":
            spots = table[table.obs["kind"].astype(str) == "spot"][:, genes]
            row = {str(i): k for k, i in enumerate(truth.instance)}
            order = np.array([row[str(i)] for i in spots.obs["position_id"]])
            pred, y = np.asarray(spots.X), truth.take(genes)[order]
        else:
            pred = at_spots(out, geom.centers_px, genes)
            ok = np.isfinite(pred).all(axis=1)
            pred, y = pred[ok], truth.take(genes)[ok]
        preds[name] = pred
        res = score(pred, y)
        res.update(seconds=round(seconds, 1), spots_scored=len(y), positions=table.n_obs)
        results[name] = res
        print(name, {k: res[k] for k in ("mean_r", "mse", "spots_scored")}, flush=True)  # noqa: T201
    same = bool(np.array_equal(preds["tiff"], preds["store_image"]))
    rows = [
        [n, f"{r['mean_r']:.3f}", f"{r['median_r']:.3f}", f"{r['mse']:.4f}", r["spots_scored"],
         r["positions"], f"{r['seconds']:.0f}"]
        for n, r in results.items()
    ]  # fmt: skip
    table = markdown_table(
        ["input", "mean r", "median r", "MSE", "spots scored", "positions", "predict s"], rows
    )
    print(table)  # noqa: T201
    print(f"TIFF and image-only store predictions identical: {same}")  # noqa: T201
    write_json(
        f"wsi_loso_{args.target}",
        {"meta": meta, "args": vars(args), "train_s": t_train, "results": results,
         "tiff_equals_store_image": same, "um_per_px": float(geom.um_per_px), "table": table},
    )  # fmt: skip


if __name__ == "__main__":
    main()
