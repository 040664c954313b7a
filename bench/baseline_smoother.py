"""Smoothing + low rank in the pooled-footprint protocol: tuned by leave-one-out or for the task.

    .venv/bin/python bench/baseline_smoother.py     # writes bench/results/baseline_smoother.json

On her2st C2–C5, 2x2 and 3x3 blocks of spots are pooled into pseudo-units (as in
``napari_histosge.evaluate.superres``) and every real spot is predicted at its centre from the
pseudo-units alone (250 genes of highest variance over the pseudo-units, mean Pearson r over
genes): the own pseudo-unit's value, kNN (k=4), ``smooth_lowrank`` as the package fits it
(bandwidth and rank by leave-one-out: built to predict unmeasured units), and the same smoother
tuned for super-resolution (the own pseudo-unit included, bandwidth and rank chosen by pooling
the pseudo-units 2x2 once more and predicting the pseudo-units from those).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from _common import markdown_table, run_metadata, write_json

SECTIONS = ("C2", "C3", "C4", "C5")
BANDWIDTHS = (0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
RANKS = (2, 4, 8, 16, 32, 64)


def tuned_for_superres(xy: np.ndarray, values: np.ndarray, pooled: object, cols: np.ndarray):
    """Smoother with its own unit included; bandwidth (pitches) and rank by pooling once more."""
    from napari_histosge.evaluate.protocols import pool_pseudospots
    from napari_histosge.evaluate.superres import log_normalise
    from napari_histosge.geometry.lattice import lattice_pitch
    from napari_histosge.metrics import pearson_per_gene
    from napari_histosge.models.smoothing import _gaussian_smooth, _pca_basis

    coarse_xy, coarse_counts, _ = pool_pseudospots(xy, pooled, 2)
    coarse = log_normalise(coarse_counts)[:, cols]
    pitch = lattice_pitch(coarse_xy)
    mean, full = _pca_basis(coarse, min(coarse.shape))
    best = None
    for bw in BANDWIDTHS:
        sm = _gaussian_smooth(coarse_xy, coarse, xy, bw * pitch, False) - mean
        for rank in RANKS:
            if rank > min(coarse.shape) - 1 and rank != RANKS[0]:
                continue
            basis = full[:, :rank]
            score = float(np.nanmean(pearson_per_gene(mean + sm @ basis @ basis.T, values)))
            if best is None or score > best[0]:
                best = (score, bw, rank)
    assert best is not None
    _, bw, rank = best
    mean, basis = _pca_basis(values, rank)
    step = bw * lattice_pitch(xy)

    def predict(query: np.ndarray) -> np.ndarray:
        return mean + (_gaussian_smooth(xy, values, query, step, False) - mean) @ basis @ basis.T

    return predict, bw, rank


def main() -> None:
    import scipy.sparse as sp
    import spatialdata as sd
    from accuracy import convert_sections

    from napari_histosge.evaluate.baselines import knn_interpolate
    from napari_histosge.evaluate.protocols import pool_pseudospots
    from napari_histosge.evaluate.superres import log_normalise
    from napari_histosge.expression import count_matrix
    from napari_histosge.geometry.lattice import lattice_pitch
    from napari_histosge.metrics import pearson_per_gene
    from napari_histosge.models.smoothing import smooth_lowrank
    from napari_histosge.workflows.pipeline import Slide

    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        stores = convert_sections(Path(tmp), SECTIONS)
        for factor in (2, 3):
            for sec in SECTIONS:
                slide = Slide.open(sd.read_zarr(stores[sec]))
                xy = slide.geometry.centers_px
                table = slide.sdata.tables[slide.keys.table_key]
                counts = sp.csr_matrix(count_matrix(table)[0])
                centres, pooled, labels = pool_pseudospots(xy, counts, factor)
                every = log_normalise(pooled)
                cols = np.argsort(-every.var(0), kind="stable")[:250]
                values, truth = every[:, cols], log_normalise(counts)[:, cols]
                loo = smooth_lowrank(centres, values)
                tuned, bw, rank = tuned_for_superres(centres, values, pooled, cols)
                preds = {
                    "own_unit": values[labels],
                    "knn": knn_interpolate(centres, values, xy, k=4),
                    "smooth_lowrank_loo": loo.predict(xy),
                    "smooth_lowrank_tuned": tuned(xy),
                }
                r = {k: float(np.nanmean(pearson_per_gene(v, truth))) for k, v in preds.items()}
                loo_bw = loo.bandwidth / lattice_pitch(centres)
                results.append(
                    {"section": sec, "factor": factor, "mean_r": r, "loo": [loo_bw, loo.rank],
                     "tuned": [bw, rank], "pseudo_units": len(centres)}
                )  # fmt: skip
                rows.append(
                    [f"{sec} {factor}x{factor}", *r.values(), f"{loo_bw:.2f}, {loo.rank}",
                     f"{bw:g}, {rank}"]
                )  # fmt: skip
                print(rows[-1], flush=True)  # noqa: T201
    headers = ["section, pooling", "own unit", "kNN", "smooth+LR (LOO)", "smooth+LR (tuned)",
               "LOO bw, rank", "tuned bw, rank"]  # fmt: skip
    print(markdown_table(headers, rows))  # noqa: T201
    write_json("baseline_smoother", {"meta": run_metadata(), "results": results})


if __name__ == "__main__":
    main()
