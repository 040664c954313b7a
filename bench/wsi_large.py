"""A large pyramidal slide predicted end to end: peak memory, and TIFF vs store as the input.

    .venv/bin/python bench/wsi_large.py --size 40000 --um-per-px 0.25      # the 2 GB goal
    .venv/bin/python bench/wsi_large.py --size 12000 --repeats 2 --no-whole  # TIFF vs store

1. A synthetic tiled pyramidal JPEG TIFF (``bench/_wsi_synth.py``; resolution tags) is written
   unless ``--slide`` names one, and a model is trained on the bundled sample
   (``histosge run --mode improved --checkpoint-out``, ``--genes`` genes, Visium's 100 µm pitch).
2. ``whole``: ``/usr/bin/time -v histosge predict SLIDE.tif --checkpoint MODEL --out OUT.zarr``:
   wall time and the process's peak resident memory (goal: < 2 GB for 40k x 40k px).
3. ``phases``: the same prediction from the TIFF and from the slide converted to a store
   (``histosge convert``), each in a fresh process (imports and the model loaded first, untimed)
   timing open + tissue lattice, features, prediction + maps, and the export (which, from a
   TIFF, writes the H&E pyramid into the output; from a store, hard-links its chunks).
   Inputs alternate TIFF, store, TIFF, store.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import markdown_table, run_metadata, write_json

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _histosge() -> str:
    return str(Path(sys.executable).with_name("histosge"))


def time_v(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` under ``/usr/bin/time -v``; wall seconds and peak RSS (MB)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(int(rss.group(1)) / 1024, 1)}


def train_model(root: Path, genes: int) -> Path:
    from napari_histosge.io import load_sample
    from napari_histosge.store import write_sdata

    model = root / f"model_{genes}"
    if model.exists():
        return model
    write_sdata(load_sample(), root / "sample.zarr", overwrite=True)
    cmd = [_histosge(), "run", str(root / "sample.zarr"), "--mode", "improved", "--quiet"]
    cmd += ["--checkpoint-out", str(model), "--out", str(root / "sample_run.zarr")]
    cmd += ["--n-top-genes", str(genes), "--epochs", "20", "--overwrite"]
    subprocess.run(cmd, check=True)
    return model


def phases(src: str, checkpoint: str, out: str) -> dict[str, Any]:
    """Time the steps of ``histosge predict`` on ``src`` in this process (``--phase`` mode)."""
    import resource

    import dask

    import napari_histosge.features.histology
    import napari_histosge.io.wsi  # noqa: F401 - imports are not the step being timed
    from napari_histosge import run_generator
    from napari_histosge.models.checkpoints import load_checkpoint
    from napari_histosge.workflows.batch_predict import _PeakRss, prediction_options
    from napari_histosge.workflows.pipeline import ExtractOptions, export_slide, predict_slide
    from napari_histosge.workflows.sections import open_for_prediction
    from napari_histosge.workflows.whole_slide import iter_extract_blocked, rasterize_gaussian_lazy

    times: dict[str, float] = {}
    model = load_checkpoint(checkpoint)
    opts = prediction_options(model, ExtractOptions(cache=False))
    with _PeakRss() as rss:
        t = time.perf_counter()
        slide = open_for_prediction(src, model=model)
        times["open_s"] = time.perf_counter() - t
        t = time.perf_counter()
        feats = run_generator(iter_extract_blocked(slide, options=opts))
        times["features_s"] = time.perf_counter() - t
        t = time.perf_counter()
        preds = predict_slide(slide, features=feats, model=model, use_measured=False)
        maps = rasterize_gaussian_lazy(preds, geometry=slide.geometry)
        times["predict_s"] = time.perf_counter() - t
        t = time.perf_counter()
        with dask.config.set(num_workers=os.cpu_count()):
            export_slide(slide, predictions=preds, maps=maps, out=out, overwrite=True)
        times["export_s"] = time.perf_counter() - t
    return {
        **{k: round(v, 2) for k, v in times.items()},
        "total_s": round(sum(times.values()), 2),
        "positions": len(preds.positions_px),
        "genes": len(preds.genes),
        "maps_px": list(maps.data.shape[1:]),
        "peak_rss_mb": round(rss.peak / 1024**2, 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=40000)
    ap.add_argument("--um-per-px", type=float, default=0.25)
    ap.add_argument("--slide", help="an existing slide file (default: write a synthetic one)")
    ap.add_argument("--workdir", default="/tmp/histosge_wsi_bench")
    ap.add_argument("--genes", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=1, help="TIFF/store pairs of the phases")
    ap.add_argument("--no-whole", action="store_true", help="skip the /usr/bin/time -v run")
    ap.add_argument("--no-phases", action="store_true", help="skip TIFF vs store")
    ap.add_argument("--name", default=None, help="results name (default wsi_large_<size>)")
    ap.add_argument("--phase", nargs=3, metavar=("SRC", "CKPT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phases(*args.phase)))  # noqa: T201
        return
    from _wsi_synth import write_synthetic_slide

    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    meta = run_metadata(["tiffslide", "tifffile", "dask"])
    meta["load_before"] = os.getloadavg()[0]
    slide = Path(args.slide) if args.slide else root / f"synth{args.size}.tif"
    result: dict[str, Any] = {"meta": meta, "args": vars(args), "slide": str(slide)}
    if not slide.exists():
        t = time.perf_counter()
        write_synthetic_slide(slide, size=args.size, um_per_px=args.um_per_px)
        result["write_slide_s"] = round(time.perf_counter() - t, 1)
    result["slide_mb"] = round(slide.stat().st_size / 1e6, 1)
    model = train_model(root, args.genes)
    print("slide", slide, result["slide_mb"], "MB; model", model, flush=True)  # noqa: T201
    if not args.no_whole:
        cmd = [_histosge(), "predict", str(slide), "--checkpoint", str(model), "--quiet"]
        cmd += ["--out", str(root / "whole.zarr"), "--overwrite", "--no-cache"]
        result["whole"] = time_v(cmd)
        print("whole", result["whole"], flush=True)  # noqa: T201
    if not args.no_phases:
        store = root / f"{slide.stem}.zarr"
        if not store.exists():
            conv = [_histosge(), "convert", str(slide), str(store)]
            result["convert"] = time_v(conv)
            print("convert", result["convert"], flush=True)  # noqa: T201
        rows, runs = [], []
        for i in range(args.repeats):
            for kind, src in (("tiff", slide), ("store", store)):
                out = root / f"phase_{kind}.zarr"
                cmd = [sys.executable, __file__, "--phase", str(src), str(model), str(out)]
                got = json.loads(subprocess.run(cmd, capture_output=True, text=True,
                                                check=True).stdout.splitlines()[-1])  # fmt: skip
                got.update(input=kind, round=i, load=os.getloadavg()[0])
                runs.append(got)
                print(kind, got, flush=True)  # noqa: T201
                keys = ("open_s", "features_s", "predict_s", "export_s", "total_s", "peak_rss_mb")
                rows.append([kind, i, *(got[k] for k in keys)])
        result["phases"] = runs
        sums = {
            k: {
                part: sum(r[part] for r in runs if r["input"] == k)
                for part in ("open_s", "features_s", "predict_s", "export_s", "total_s")
            }
            for k in ("tiff", "store")
        }

        def over(part: str) -> float:
            return sums["tiff"][part] / sums["store"][part] - 1.0

        pre = ("open_s", "features_s", "predict_s")
        read_over = sum(sums["tiff"][p] for p in pre) / sum(sums["store"][p] for p in pre) - 1
        result["overhead"] = {"total": over("total_s"), "before_export": read_over}
        result["table"] = markdown_table(
            ["input", "round", "open s", "features s", "predict s", "export s", "total s",
             "peak RSS MB"],
            rows,
        )  # fmt: skip
        print(result["table"])  # noqa: T201
        print(  # noqa: T201
            f"TIFF over store: {100 * read_over:+.1f}% before the export, "
            f"{100 * result['overhead']['total']:+.1f}% in all"
        )
    write_json(args.name or f"wsi_large_{args.size}", result)


if __name__ == "__main__":
    main()
