"""Cell-aware features in the superres model: the pooled-footprint protocol with and without.

On her2st C2–C5 (as ``bench/superres.py``: 8 µm superpixels inside the spots, the built-in
histology encoder's dense features, 2x2 and 3x3 blocks of spots pooled into pseudo-units, the
map averaged inside every real spot and correlated gene by gene with its measurement; 250
genes), the package's default model is fitted once on the dense features alone and once on the
dense features plus the cell features of :func:`napari_histosge.cells.features.cell_features`
(nuclei segmented on each section by :func:`napari_histosge.cells.segment_nuclei`). Nothing is
tuned: the model config is the package default and each section is scored on its own, so each
section's score is out of sample (leave one section out holds trivially).

    .venv/bin/python bench/cells_features.py              # C2-C5
    .venv/bin/python bench/cells_features.py --quick      # C2
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from _common import markdown_table, run_metadata, write_json


def main(argv: list[str] | None = None) -> int:
    from superres import section_arrays

    from napari_histosge.base.progress import run_generator
    from napari_histosge.cells.features import cell_features
    from napari_histosge.cells.segment import iter_segment_nuclei
    from napari_histosge.evaluate.superres import BASELINES, COUNT_BLIND, superres_footprints
    from napari_histosge.models.superres import SuperResConfig

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sections", nargs="+", default=["C2", "C3", "C4", "C5"])
    p.add_argument("--work", default="/tmp/histosge_superres")
    p.add_argument("--out", default="cells_features")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    secs = ["C2"] if args.quick else args.sections
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    doc: dict = {"meta": run_metadata(), "sections": {}}
    rows = []
    for sec in secs:
        import spatialdata as sd
        from accuracy import convert_sections

        arr = section_arrays(sec, work, 8.0)
        sdata = sd.read_zarr(convert_sections(work, [sec])[sec])
        image = next(iter(sdata.images.values()))
        um = arr["um_per_px"]
        pos = arr["pos"]
        ctx = 60.0 / um
        extent = (*(pos.min(0) - ctx), *(pos.max(0) + ctx))
        t0 = time.perf_counter()
        nuc = run_generator(iter_segment_nuclei(image, um, extent=extent))
        cf = cell_features(nuc.table, pos, um)
        nuc.close()
        cell_s = time.perf_counter() - t0
        stacks = {"dense": arr["feats"], "dense+cells": np.hstack([arr["feats"], cf])}
        out = {"cell_feature_s": round(cell_s, 2), "n_nuclei": int(nuc.n)}
        for f in (2, 3):
            res = {}
            for name, feats in stacks.items():
                r = superres_footprints(
                    feats, pos, arr["centers"], arr["spots"], arr["counts"],
                    factor=f, configs={name: SuperResConfig()},
                )  # fmt: skip
                res.update(r["mean_r"])
            best = max(res[b] for b in COUNT_BLIND)
            out[f"{f}x{f}"] = {k: round(v, 4) for k, v in res.items()}
            rows.append(
                [sec, f"{f}x{f}", res["own_unit"], best, res["dense"], res["dense+cells"],
                 res["dense"] / best, res["dense+cells"] / best]
            )  # fmt: skip
            print(sec, f, out[f"{f}x{f}"], flush=True)
        doc["sections"][sec] = out
    doc["baselines"] = list(BASELINES)
    path = write_json(args.out + ("_quick" if args.quick else ""), doc)
    head = ["section", "pool", "own unit", "best count-blind baseline", "superres (dense)",
            "superres (dense + cells)", "ratio dense", "ratio dense + cells"]  # fmt: skip
    print(markdown_table(head, rows))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
