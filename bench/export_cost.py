"""What the export costs beyond writing the new elements, on a whole-slide (2 GB) store.

    .venv/bin/python bench/synthetic_slide.py --out /tmp/synth.zarr --genes 500  # once
    .venv/bin/python bench/export_cost.py --store /tmp/synth.zarr

Fits the default super-resolution model once (features cached in a scratch copy of the store's
table, never in the store itself), then times, each ``--repeats`` times, alternating:

* ``elements``: the three ``histosge_*`` elements written alone into an empty new store (the
  floor: computing and writing the maps, positions and table);
* ``in_place``: ``write_predictions`` into the input store (what ``--in-place`` does), replacing
  the previous outputs there;
* ``new_store``: ``write_predictions`` into another path (image hard-linked, the rest written).

The in-place runs change the input store only by adding the ``histosge_*`` elements; they are
deleted again at the end. Results: ``bench/results/export_cost.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from _common import markdown_table, run_metadata, write_json

from napari_histosge.store import write_sdata


def _outputs(store: Path, genes: int):
    import spatialdata as sd

    from napari_histosge.base.progress import run_generator
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import (
        SuperResOptions,
        iter_superres,
        superres_maps,
        superres_predictions,
    )

    sdata = sd.read_zarr(store)
    slide = Slide.open(sdata)
    t0 = time.perf_counter()
    res = run_generator(
        iter_superres(slide, n_top_genes=genes, options=SuperResOptions(cache=False))
    )
    fit_s = time.perf_counter() - t0
    return slide, superres_predictions(slide, res), superres_maps(res), fit_s


def _kind(name: str) -> str:
    return "images" if "expression" in name else "shapes" if "positions" in name else "tables"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--genes", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/histosge_export_cost"))
    args = ap.parse_args()
    import spatialdata as sd

    from napari_histosge.store import OUTPUT_KEYS, write_element_atomic
    from napari_histosge.workflows.export import build_output, write_predictions

    args.work.mkdir(parents=True, exist_ok=True)
    meta = run_metadata(["dask", "zarr"])
    meta["load_before"] = os.getloadavg()[0]
    slide, preds, maps, fit_s = _outputs(args.store, args.genes)
    key = slide.keys.image_key
    runs = []

    def timed(name, fn):
        load = os.getloadavg()[0]
        t = time.perf_counter()
        fn()
        runs.append({"what": name, "seconds": time.perf_counter() - t, "load": load})
        print(runs[-1], flush=True)

    def elements_alone():
        new = build_output(slide.sdata, image_key=key, predictions=preds, maps=maps)
        dst = args.work / "elements.zarr"
        shutil.rmtree(dst, ignore_errors=True)
        groups = {"images": {}, "shapes": {}, "tables": {}}
        for name, el in new.items():
            kind = (
                "images" if "expression" in name else "shapes" if "positions" in name else "tables"
            )
            groups[kind][name] = el
        write_sdata(sd.SpatialData(**groups), dst)

    def in_place():
        write_predictions(
            slide.sdata, None, image_key=key, predictions=preds, maps=maps,
            overwrite=True, in_place=True,
        )  # fmt: skip

    def new_store():
        write_predictions(
            slide.sdata, args.work / "out.zarr", image_key=key, predictions=preds, maps=maps,
            overwrite=True,
        )  # fmt: skip

    for _ in range(args.repeats):
        timed("elements", elements_alone)
        timed("in_place", in_place)
        timed("new_store", new_store)
    root = Path(slide.sdata.path)
    for name in OUTPUT_KEYS:  # leave the input store as it was
        if (root / _kind(name) / name).exists():
            write_element_atomic(root, _kind(name), name, None)
    shutil.rmtree(args.work, ignore_errors=True)
    med = {
        w: statistics.median(r["seconds"] for r in runs if r["what"] == w)
        for w in ("elements", "in_place", "new_store")
    }
    rows = [[r["what"], f"{r['seconds']:.2f}", f"{r['load']:.1f}"] for r in runs]
    table = markdown_table(["write", "seconds", "load before"], rows)
    print(table)
    extra = {w: med[w] - med["elements"] for w in ("in_place", "new_store")}
    print(f"median beyond writing the elements: in place {extra['in_place']:+.2f} s, "
          f"new store {extra['new_store']:+.2f} s")  # fmt: skip
    write_json(
        "export_cost",
        {
            "meta": meta,
            "args": {k: str(v) for k, v in vars(args).items()},
            "fit_seconds": fit_s,
            "genes": len(preds.genes),
            "maps_shape": list(maps.data.shape),
            "runs": runs,
            "median_s": med,
            "beyond_elements_s": extra,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
