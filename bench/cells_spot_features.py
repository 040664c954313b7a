"""Cell-aware spot features for the attention model: checkerboard recovery with and without.

    .venv/bin/python bench/cells_spot_features.py            # her2st C2–C5
    .venv/bin/python bench/cells_spot_features.py --quick    # C2, checkerboard only

For each section, the nuclei are segmented over the spots (classical, package defaults; cached
in the store) and pooled per spot as ``ExtractOptions(cell_features=True)`` does
(:func:`napari_histosge.cells.features.spot_cell_features`: nucleus density, mean log area,
eccentricity, ellipse fill, haematoxylin, nearest-neighbour distance and the fractions of 4
morphological classes, in the spot's disk and in a disk twice as wide). The improved model
(package defaults) is trained on the training half of a checkerboard of the array indices (and
of a random half, seed 0) and scored on the held-out half only (``evaluate.recovery``: mean
Pearson r over the 250 genes of highest variance on the training spots), once on the image
features and once with the nuclei statistics appended. Nothing is chosen on a section, so no
leave-one-section-out is needed: each section's numbers are its own. Writes
``bench/results/cells_spot_features[_quick].json``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from _common import markdown_table, run_metadata, write_json

SECTIONS = ("C2", "C3", "C4", "C5")


def nuclei_per_spot(sec) -> tuple[np.ndarray, dict]:
    """Nuclei statistics of every spot, as ``ExtractOptions(cell_features=True)`` appends them.

    The nuclei are cached in the section's store, so a second run does not segment again.
    """
    from napari_histosge.base.progress import run_generator
    from napari_histosge.cells.features import iter_add_spot_cell_features
    from napari_histosge.features.extract import FeatureSet
    from napari_histosge.workflows.pipeline import SlideFeatures

    n = len(sec.features)
    spots = FeatureSet(sec.features, "", dict(sec.meta), from_cache=True)
    none = FeatureSet(np.zeros((0, sec.features.shape[1]), np.float32), "", {}, from_cache=True)
    feats = SlideFeatures(spots, np.zeros((0, 2)), none, positions_name="none", from_cache=True)
    t0 = time.perf_counter()
    with_cells = run_generator(iter_add_spot_cell_features(sec.slide, feats))
    seconds = time.perf_counter() - t0
    info = dict(with_cells.spots.meta["cells"])
    info.pop("names")
    return with_cells.spots.features[:n, sec.features.shape[1] :], {
        **info,
        "nuclei_s": round(seconds, 1),
    }


def main(argv=None) -> int:
    from accuracy import Section, convert_sections, top_variance

    from napari_histosge.evaluate import random_mask, recovery
    from napari_histosge.train import TrainConfig

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="C2 only, checkerboard only")
    p.add_argument("--work", default=str(Path(__file__).parent / "results" / "tmp"))
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    secs = SECTIONS[:1] if args.quick else SECTIONS
    stores = convert_sections(Path(args.work), secs)
    doc: dict = {"meta": run_metadata(), "sections": {}}
    rows = []
    for s in secs:
        sec = Section(s, stores[s])
        cells, info = nuclei_per_spot(sec)
        doc["sections"][s] = dict(info)
        splits = {"checkerboard": (sec.ax + sec.ay) % 2 == 0}
        if not args.quick:
            splits["random0"] = random_mask(len(sec.xy), 0.5, 0)
        for split, train in splits.items():
            genes = [str(g) for g in sec.genes[top_variance(sec.values[train], 250)]]
            scores = {}
            for name, feats in (
                ("image", sec.features),
                ("image+nuclei", np.hstack([sec.features, cells])),
            ):
                meta = {**sec.meta, "dim": int(feats.shape[1])}
                res = recovery(
                    sec.slide.table, feats, sec.xy, train,
                    genes=genes, config=TrainConfig(), feature_meta=meta,
                )  # fmt: skip
                scores[name] = float(res["methods"]["model"]["mean_r"])
                scores["smooth_lowrank"] = float(res["methods"]["smooth_lowrank"]["mean_r"])
            ratio = scores["image+nuclei"] / scores["image"]
            doc["sections"][s][split] = {"mean_r": scores, "ratio_with_nuclei": ratio}
            rows.append(
                [s, split, info["n_nuclei"], scores["smooth_lowrank"], scores["image"],
                 scores["image+nuclei"], f"{ratio:.3f}x"]
            )  # fmt: skip
            print(s, split, info, {k: round(v, 4) for k, v in scores.items()}, flush=True)
    head = [
        "section", "split", "nuclei", "smooth + low rank", "image", "image + nuclei",
        "with / without",
    ]  # fmt: skip
    doc["table"] = markdown_table(head, rows)
    print(doc["table"])
    name = "cells_spot_features" + ("_quick" if args.quick else "")
    print("wrote", write_json(name, doc))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
