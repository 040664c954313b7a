"""Cells: time and memory of the nucleus segmentation and of ``histosge run --cells``.

    # segmentation of a whole slide (every tile of the image), in this process:
    .venv/bin/python bench/cells_speed.py segment /tmp/cells/synth25k.zarr
    # histosge run (superres) without and with --cells, each in a child under /usr/bin/time:
    .venv/bin/python bench/cells_speed.py run /tmp/cells/C2.zarr --work /tmp/cells
    # the same steps in this process, wall and CPU time of each (fit, export, cells):
    .venv/bin/python bench/cells_speed.py phases /tmp/cells/synth25k.zarr --n-top-genes 500
    # the nuclei cache: histosge run, then --cells twice (segments and caches; reads):
    .venv/bin/python bench/cells_speed.py cache /tmp/cells/synth25k.zarr --work /tmp/cells

The 25k-pixel slide is ``bench/synthetic_slide.py --size 25000 --spots 4000 --genes 500 --seed
0`` (0.278 µm/px: segmented on its 2x level, 0.555 µm/px).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import warnings
from pathlib import Path

from _common import run_metadata, time_histosge_run, write_json


def segment(store: str, tile_px: int, workers: int = 1) -> dict:
    """Segment every tile of the slide's image; wall time, nuclei and peak RSS."""
    import spatialdata as sd

    from napari_histosge.base.progress import run_generator
    from napari_histosge.cells.segment import NucleiOptions, iter_segment_nuclei
    from napari_histosge.workflows.pipeline import Slide

    slide = Slide.open(sd.read_zarr(store))
    image = slide.sdata.images[slide.keys.image_key]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    nuc = run_generator(
        iter_segment_nuclei(
            image, slide.geometry.um_per_px, options=NucleiOptions(tile_px=tile_px, workers=workers)
        )
    )
    t_seg = time.perf_counter() - t0
    # the stitched labels, read back block by block as the export does
    n_ids = 0
    for blk in nuc.labels.to_delayed().ravel():
        n_ids = max(n_ids, int(blk.compute().max()))
    t_all = time.perf_counter() - t0
    out = {
        "store": store,
        "image_shape": [int(s) for s in image["scale0"]["image"].shape],
        "um_per_px": slide.geometry.um_per_px,
        "level_um_per_px": nuc.um_per_px,
        "segmented_px": int(nuc.labels.shape[0]) * int(nuc.labels.shape[1]),
        "n_tiles": nuc.meta["n_tiles"],
        "workers": workers,
        "n_nuclei": nuc.n,
        "max_label": n_ids,
        "segment_s": round(t_seg, 1),
        "segment_and_relabel_s": round(t_all, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_1min_before": load,
        "load_1min_after": os.getloadavg()[0],
    }
    nuc.close()
    return out


def run(store: str, work: str, extra: list[str]) -> dict:
    """``histosge run`` without and with ``--cells``: wall time and peak RSS of each."""
    out = {}
    for name, flags in (("plain", []), ("cells", ["--cells"])):
        target = str(Path(work) / f"speed_{name}.zarr")
        argv = [store, "--out", target, "--overwrite", "--quiet", "--seed", "0"]
        r = time_histosge_run([*argv, *flags, *extra])
        r["peak_rss_mb"] = round(r.pop("peak_rss_kb") / 1024, 1)
        r["wall_s"] = round(r["wall_s"], 1)
        out[name] = r
        print(name, {k: v for k, v in r.items() if k != "stdout"}, flush=True)
    out["ratio"] = round(out["cells"]["wall_s"] / out["plain"]["wall_s"], 2)
    return out


def cache(store: str, work: str, extra: list[str]) -> dict:
    """``histosge run``, then ``histosge run --cells`` twice: segmenting, then from the cache.

    The store's nuclei cache is removed first, so the first ``--cells`` run segments and writes
    it and the second reads it; the features are read from the store's cache by all three
    (``--no-cache`` would recompute them too).
    """
    from napari_histosge.cells.cache import NUCLEI_CACHE_KEY, NUCLEI_CACHE_TABLE
    from napari_histosge.store import write_element_atomic

    root = Path(store)
    for kind, name in (("tables", NUCLEI_CACHE_TABLE), ("labels", NUCLEI_CACHE_KEY)):
        if (root / kind / name).exists():
            write_element_atomic(root, kind, name, None)
    out = {}
    runs = (
        ("plain", []),
        ("segment_and_cache", ["--cells"]),
        ("from_cache", ["--cells"]),
    )
    for name, flags in runs:
        target = str(Path(work) / f"speed_cache_{name}.zarr")
        argv = [store, "--out", target, "--overwrite", "--quiet", "--seed", "0"]
        r = time_histosge_run([*argv, *flags, *extra])
        r["peak_rss_mb"] = round(r.pop("peak_rss_kb") / 1024, 1)
        r["wall_s"] = round(r["wall_s"], 1)
        r["stdout"] = r["stdout"].splitlines()
        out[name] = r
        print(name, r, flush=True)
    out["saved_s"] = round(out["segment_and_cache"]["wall_s"] - out["from_cache"]["wall_s"], 1)
    for name in ("segment_and_cache", "from_cache"):
        out[f"ratio_{name}_vs_plain"] = round(out[name]["wall_s"] / out["plain"]["wall_s"], 2)
    return out


def phases(store: str, work: str, n_top_genes: int) -> dict:
    """The steps of ``histosge run --cells`` in this process: wall and CPU time of each.

    Fit (features, model) and export are what ``histosge run`` does; the cells step is what
    ``--cells`` adds (``cells.table.iter_add_cells``: segmentation, footprints, values, writes).
    """
    import spatialdata as sd

    from napari_histosge.base.progress import run_generator
    from napari_histosge.cells.table import iter_add_cells
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import SuperResOptions, export_superres, iter_superres

    slide = Slide.open(sd.read_zarr(store))
    out: dict = {"load_1min_before": os.getloadavg()[0], "n_top_genes": n_top_genes}
    target = Path(work) / "speed_phases.zarr"

    def timed(name, fn):
        t, c = time.perf_counter(), time.process_time()
        value = fn()
        out[name] = {
            "wall_s": round(time.perf_counter() - t, 1),
            "cpu_s": round(time.process_time() - c, 1),
        }
        print(name, out[name], flush=True)
        return value

    opts = SuperResOptions.from_seed(0, cache=False)
    res = timed(
        "fit", lambda: run_generator(iter_superres(slide, n_top_genes=n_top_genes, options=opts))
    )
    _, maps = timed("export", lambda: export_superres(slide, res, out=target, overwrite=True))
    info = timed("cells", lambda: run_generator(iter_add_cells(target, slide, res, maps=maps)))
    out["cells_info"] = info
    plain = out["fit"]["cpu_s"] + out["export"]["cpu_s"]
    out["cpu_ratio_with_cells"] = round((plain + out["cells"]["cpu_s"]) / plain, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["load_1min_after"] = os.getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["segment", "run", "phases", "cache"])
    p.add_argument("store")
    p.add_argument("--tile-px", type=int, default=2048)
    p.add_argument("--workers", type=int, default=1, help="segment: tile processes")
    p.add_argument("--work", default="/tmp")
    p.add_argument("--out", default=None)
    p.add_argument("--n-top-genes", type=int, default=1000, help="phases: genes of the map")
    args, extra = p.parse_known_args(argv)
    warnings.simplefilter("ignore")
    doc = {"meta": run_metadata()}
    if args.what == "segment":
        doc["segment"] = segment(args.store, args.tile_px, args.workers)
        print(doc["segment"], flush=True)
    elif args.what == "phases":
        doc["phases"] = phases(args.store, args.work, args.n_top_genes)
        print(doc["phases"], flush=True)
    elif args.what == "cache":
        doc["cache"] = cache(args.store, args.work, extra)
        print(doc["cache"], flush=True)
    else:
        doc["run"] = run(args.store, args.work, extra)
        print("ratio", doc["run"]["ratio"])
    name = args.out or f"cells_speed_{args.what}_{Path(args.store).stem}"
    print("wrote", write_json(name, doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
