"""A cohort of H&E-only whole-slide files through ``histosge batch --checkpoint``: 1 vs 2 workers.

    .venv/bin/python bench/wsi_cohort.py --slides 8 --size 8000      # what this machine allows
    .venv/bin/python bench/wsi_cohort.py --slides 16 --size 20000    # the issue's full size

Synthetic tiled pyramidal JPEG TIFFs (``bench/_wsi_synth.py``, each with its own tissue layout,
0.5 µm per pixel in the resolution tags) and one model trained on the bundled sample are made
first. Each round starts a LocalCluster of N single-threaded worker processes, warms them up and
runs ``run_batch(..., task=predict_slide_task)`` (what ``histosge batch SLIDES --checkpoint
MODEL`` runs) into a fresh output folder; rounds alternate 1, 2, 1, 2 workers after an untimed
2-worker round on two slides. Per slide: the task's seconds and its peak resident memory (from
the completion markers). In the same run, the machine's own ratio of two processes to one on
fixed single-threaded work (``bench/batch_scaling.machine_ceiling``) is measured first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _common import markdown_table, run_metadata, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_cohort(root: Path, n: int, size: int) -> list[Path]:
    from _wsi_synth import write_synthetic_slide

    paths = []
    for i in range(n):
        p = root / f"slide{i:02d}.tif"
        if not p.exists():
            write_synthetic_slide(p, size=size, um_per_px=0.5, seed=100 + i)
        paths.append(p)
    return paths


def one_round(slides: list[Path], root: Path, model: Path, n_workers: int) -> dict[str, Any]:
    from batch_scaling import timed_batch

    from napari_histosge.workflows.batch_predict import PredictJob, predict_slide_task
    from napari_histosge.workflows.pipeline import ExtractOptions

    out = root / f"out_{n_workers}_{time.monotonic_ns()}"
    job = PredictJob(extract=ExtractOptions(cache=False), checkpoint=str(model), torch_threads=1)
    _report, startup, wall = timed_batch(slides, out, job, n_workers, task=predict_slide_task)
    markers = [json.loads((out / f"{p.stem}.done.json").read_text()) for p in slides]
    shutil.rmtree(out)
    return {
        "workers": n_workers,
        "startup_s": startup,
        "wall_s": wall,
        "slides_per_min": 60 * len(slides) / wall,
        "task_s": [m["seconds"] for m in markers],
        "task_cpu_s": [m["cpu_seconds"] for m in markers],
        "peak_rss_mb": [m["peak_rss_mb"] for m in markers],
        "positions": [m["positions"] for m in markers],
        "load_after": os.getloadavg()[0],
    }


def main() -> None:
    from batch_scaling import machine_ceiling
    from wsi_large import train_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--size", type=int, default=8000)
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--order", default="1,2,1,2")
    ap.add_argument("--workdir", default="/tmp/histosge_wsi_cohort")
    args = ap.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    meta = run_metadata(["distributed", "dask", "tiffslide"])
    meta["load_before"] = os.getloadavg()[0]
    t = time.perf_counter()
    slides = make_cohort(root, args.slides, args.size)
    made_s = time.perf_counter() - t
    model = train_model(root, args.genes)
    ceiling = machine_ceiling()
    print("machine ceiling (2 processes vs 1):", ceiling, flush=True)  # noqa: T201
    one_round(slides[:2], root, model, 2)  # untimed: file caches, first runs
    rounds = []
    for n in (int(x) for x in args.order.split(",")):
        r = one_round(slides, root, model, n)
        print({k: v for k, v in r.items() if not isinstance(v, list)}, flush=True)  # noqa: T201
        rounds.append(r)
    mean = {
        n: sum(r["wall_s"] for r in rounds if r["workers"] == n)
        / max(1, sum(1 for r in rounds if r["workers"] == n))
        for n in (1, 2)
    }
    ratio = mean[1] / mean[2]
    best = max(v["ratio"] for v in ceiling.values())
    rows = [
        [
            r["workers"],
            f"{r['startup_s']:.1f}",
            f"{r['wall_s']:.1f}",
            f"{r['slides_per_min']:.2f}",
            f"{sum(r['task_s']) / len(r['task_s']):.1f}",
            f"{max(r['peak_rss_mb']):.0f}",
            f"{r['load_after']:.1f}",
        ]
        for r in rounds
    ]
    table = markdown_table(
        ["workers", "start-up s", "batch wall s", "slides/min", "mean slide s",
         "max slide peak RSS MB", "load after"],
        rows,
    )  # fmt: skip
    print(table)  # noqa: T201
    print(  # noqa: T201
        f"2 vs 1 workers: {ratio:.2f}x; the machine's own 2-process ratio: "
        + ", ".join(f"{k} {v['ratio']:.2f}x" for k, v in ceiling.items())
        + f"; batch / best machine ratio = {ratio / best:.2f} (goal >= 0.9)"
    )
    write_json(
        "wsi_cohort",
        {
            "meta": meta,
            "args": vars(args),
            "make_cohort_s": made_s,
            "slide_mb": [round(p.stat().st_size / 1e6, 1) for p in slides],
            "machine_ceiling": ceiling,
            "rounds": rounds,
            "ratio": ratio,
            "ratio_vs_machine": ratio / best,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
