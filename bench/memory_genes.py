"""Peak memory and wall time of `histosge run` on the synthetic 25k slide with 500 and 2,000 genes.

    .venv/bin/python bench/synthetic_slide.py --out /tmp/synth_2000.zarr --genes 2000  # once
    .venv/bin/python bench/memory_genes.py --store-2000 /tmp/synth_2000.zarr

The 500-gene store is a copy of the 2,000-gene one whose table keeps the first 500 genes (same
image, spots and generative model), so the two runs differ only in the number of genes. Each
store is run cold (cached features deleted first) and then again with cached features, the two
stores alternating, under `/usr/bin/time -v`.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _common import (
    drop_cached_features,
    markdown_table,
    run_metadata,
    time_histosge_run,
    write_json,
)


def derive_500(src: Path, dst: Path, n: int = 500) -> Path:
    import spatialdata as sd
    from spatialdata.models import TableModel

    if dst.exists():
        return dst
    shutil.copytree(src, dst)
    sdata = sd.read_zarr(dst)
    table = sdata.tables["table"][:, :n].copy()
    attrs = table.uns.pop("spatialdata_attrs")
    table = TableModel.parse(
        table,
        region=attrs["region"],
        region_key=attrs["region_key"],
        instance_key=attrs["instance_key"],
    )
    sdata.delete_element_from_disk("table")
    sdata.tables["table"] = table
    sdata.write_element("table")
    return dst


def timed(store: Path, out: Path, genes: int) -> dict:
    r = time_histosge_run(
        [str(store), "--out", str(out), "--overwrite", "--quiet", "--n-top-genes", str(genes)]
    )
    return {
        "genes": genes,
        "wall_s": round(r["wall_s"], 1),
        "peak_rss_mb": round(r["peak_rss_kb"] / 1024),
        "load_before": round(r["load_before"], 1),
        "stdout": r["stdout"].strip().splitlines()[-1],
        "command": r["command"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store-2000", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/histosge_memory_genes"))
    ap.add_argument("--features", nargs="+", default=["cold", "cached"], choices=["cold", "cached"])
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    s500 = derive_500(args.store_2000, args.work / "synth_500.zarr")
    stores = {500: s500, 2000: args.store_2000}
    runs = []
    for cached in [f == "cached" for f in args.features]:
        for genes, store in stores.items():
            if not cached:
                drop_cached_features(store)
            r = timed(store, args.work / f"out_{genes}.zarr", genes)
            r["features"] = "cached" if cached else "cold"
            print(r, flush=True)
            runs.append(r)
            shutil.rmtree(args.work / f"out_{genes}.zarr", ignore_errors=True)
    rows = [
        [r["genes"], r["features"], r["wall_s"], r["peak_rss_mb"], r["load_before"]] for r in runs
    ]
    table = markdown_table(["genes", "features", "wall s", "peak RSS MB", "load before"], rows)
    print(table)
    write_json("memory_genes", {"meta": run_metadata(), "runs": runs, "table": table})


if __name__ == "__main__":
    main()
