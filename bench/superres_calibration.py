"""Calibration of the superres map's uncertainty on her2st C2–C5, settings by leave-one-section-out.

    .venv/bin/python bench/superres_calibration.py          # results/superres_calibration.json
    .venv/bin/python bench/superres_calibration.py --quick  # C2 and C3, default settings only

Protocol (napari_histosge.evaluate.calibration, what `histosge evaluate --superres-pool F` runs):
blocks of 2x2 and 3x3 spots are pooled into pseudo-units (counts summed) with their true
footprints; the superres model sees the pseudo-units and the dense histology features of the
8 µm superpixels that `histosge run` uses (the whole grid, between the spots too); every real
spot is then predicted (the expected measurement at its footprint and depth) and scored:
mean Pearson r over the 250 genes of highest variance over the pseudo-units, next to the own
pseudo-unit copy, kNN and smoothing + low rank; the share of spot x gene values inside the
central 50/80/95 % predictive intervals of the measurement model (Poisson counts at the spot's
depth around the map's uncertain rate; a count on an interval's end counted by its share, see
`evaluate.calibration.count_coverage`), and beside it that of the Gaussian intervals around the
expected measurement; within each gene, the MAE of the most uncertain fifth of the spots over
that of the least uncertain fifth.

The model is fitted once per section and pooling; the uncertainty is refitted on that fit for
every setting (what `histosge run` would fit with it: the uncertainty does not change the map).
Settings: the field's covariance (Gaussian with a length in unit pitches, as the package
default, or a length in µm not tied to the pitch, Gaussian or exponential), how each gene's
amplitude is estimated, and a calibration factor of the field's standard deviation. They are
chosen for each section on the *other three* sections (the worst coverage error over 2x2 and
3x3 and the three levels), three times: among the pitch-relative settings only, among those and
the lengths up to 200 µm (whose cost at Visium pitch stays within a few times the default's),
and among all; the
package default is the setting chosen most often. The seconds of each uncertainty fit are kept
(a length in µm reaches more units where the pitch is small: what it would cost on Visium).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import markdown_table, run_metadata, write_json

SECTIONS = ("C2", "C3", "C4", "C5")
FACTORS = (2, 3)
LEVELS = (0.5, 0.8, 0.95)
BANDWIDTHS = (0.5, 0.75, 1.0)
LENGTHS_UM = (100.0, 150.0, 200.0, 300.0, 1200.0)
SHAPES = ("gaussian", "exponential")
AMPLITUDES = ("cv", "moments")
SCALES = tuple(round(v, 2) for v in np.arange(0.3, 2.01, 0.05))


def settings_grid(quick: bool) -> dict[str, dict]:
    """Uncertainty settings by name: pitch-relative (``bw...``) and in µm (``um...``)."""
    from napari_histosge.models.superres import SuperResConfig

    base = SuperResConfig()
    if quick:
        bw = base.uncertainty_bandwidth or base.bandwidth
        amp = base.uncertainty_amplitude
        return {f"bw{bw}_{amp}": {"bandwidth": bw, "amplitude": amp}}
    out = {f"bw{b}_{a}": {"bandwidth": b, "amplitude": a} for b in BANDWIDTHS for a in AMPLITUDES}
    for length, shape, amp in itertools.product(LENGTHS_UM, SHAPES, AMPLITUDES):
        out[f"um{length:g}_{shape[:3]}_{amp}"] = {
            "length": length,
            "shape": shape,
            "amplitude": amp,
        }
    return out


def section_arrays(sec: str, work: Path) -> dict:
    """The grid, features, footprints and counts `histosge evaluate --superres-pool` uses."""
    import scipy.sparse as sp
    import spatialdata as sd
    from accuracy import convert_sections

    from napari_histosge.base.progress import run_generator
    from napari_histosge.expression import count_matrix
    from napari_histosge.features.superpixel_cache import cached_features
    from napari_histosge.geometry.footprints import unit_membership
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import SuperResOptions, slide_grid

    store = convert_sections(work, [sec])[sec]
    slide = Slide.open(sd.read_zarr(store))
    g = slide.geometry
    sg = slide_grid(slide)
    grid = sg.grid
    t0 = time.perf_counter()
    feats, _ = run_generator(
        cached_features(slide, SuperResOptions(), grid.positions, sg.step, sg.box, sg.resolution_um)
    )
    return {
        "feats": feats,
        "pos": grid.positions * g.um_per_px,
        "xy": g.centers_px * g.um_per_px,
        "spots": unit_membership(sg.kind, sg.footprints, grid.positions),
        "counts": sp.csr_matrix(count_matrix(slide.table)[0]),
        "feature_seconds": time.perf_counter() - t0,
        "n_superpixels": int(grid.n),
    }


def coverage_at(a: dict, scale: float) -> list[float]:
    """Coverage of the three count intervals with the field's sd multiplied by ``scale``."""
    from napari_histosge.evaluate.calibration import count_coverage, count_pit

    below, upto = count_pit(a["counts"], a["unit_depth"], a["rate"], scale**2 * a["field_var"])
    return list(count_coverage(below, upto, LEVELS).values())


def gaussian_coverage_at(a: dict, scale: float) -> list[float]:
    """Coverage of the three Gaussian intervals around the expected measurement."""
    from scipy.stats import norm

    err = np.abs(a["truth"] - a["pred"])
    sd = np.sqrt(scale**2 * a["field_var"] + a["noise_var"])
    return [float(np.mean(err <= norm.ppf(0.5 + q / 2) * sd)) for q in LEVELS]


def worst_error(cov: dict, secs, setting) -> float:
    """Worst |coverage - nominal| over ``secs``, both factors and the three levels."""
    pairs = (zip(cov[s][f][setting], LEVELS, strict=True) for s in secs for f in FACTORS)
    return max(abs(c - q) for pair in pairs for c, q in pair)


def loso(cov: dict, secs, candidates) -> dict:
    """For each section, the candidate with the smallest worst error on the other sections."""
    chosen = {}
    for sec in secs:
        others = [s for s in secs if s != sec] if len(secs) > 1 else secs
        best = min(candidates, key=lambda c: (worst_error(cov, others, c), abs(c[1] - 1.0)))
        chosen[sec] = best
    return chosen


def main(argv=None) -> int:
    from napari_histosge.evaluate.calibration import error_sd_ratio, pooled_calibration
    from napari_histosge.models._superres_uncertainty import fit_uncertainty, measurement_variance
    from napari_histosge.models.superres import SuperResConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", default="/tmp/histosge-bench", help="converted stores go here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    secs = SECTIONS[:2] if args.quick else SECTIONS
    grid = settings_grid(args.quick)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    raw: dict = {}
    cov: dict = {}
    arrays: dict = {}
    for sec in secs:
        arr = section_arrays(sec, work)
        raw[sec], cov[sec], arrays[sec] = {}, {}, {}
        for f in FACTORS:
            raw[sec][f], cov[sec][f], arrays[sec][f] = {}, {}, {}
            t0 = time.perf_counter()
            res = pooled_calibration(
                arr["feats"], arr["pos"], arr["xy"], arr["spots"], arr["counts"], factor=f,
                config=replace(SuperResConfig(), uncertainty_scale=1.0), keep_arrays=True,
                keep_model=True,
            )  # fmt: skip
            model, a0 = res.pop("model"), res.pop("arrays")
            res.pop("per_gene")
            res["seconds"] = round(time.perf_counter() - t0, 2)
            raw[sec][f]["fit"] = res
            for key, setting in grid.items():
                t0 = time.perf_counter()
                model.uncertainty = fit_uncertainty(model, scale=1.0, **setting)
                seconds = time.perf_counter() - t0
                field, noise = measurement_variance(model, arr["spots"], a0["pred"])
                a = {**a0, "field_var": field, "noise_var": noise}
                arrays[sec][f][key] = a
                for k in SCALES:
                    cov[sec][f][(key, k)] = coverage_at(a, k)
                raw[sec][f][key] = {
                    "uncertainty_seconds": round(seconds, 2),
                    "coverage_scale_1": coverage_at(a, 1.0),
                    "gaussian_coverage_scale_1": gaussian_coverage_at(a, 1.0),
                }
                print(
                    sec, f, key, round(seconds, 2), raw[sec][f][key]["coverage_scale_1"], flush=True
                )
    cheap = [k for k, v in grid.items() if v.get("length", 0.0) <= 200.0]  # pitch or <= 200 µm
    families = {"pitch": [k for k in grid if k.startswith("bw")], "cheap": cheap, "all": list(grid)}
    payload = {
        "meta": run_metadata(),
        "command": " ".join(["bench/superres_calibration.py", *sys.argv[1:]]),
    }
    headers = ["section", "pool", "setting", "scale", "r map", "r own unit", "r kNN",
               "r smooth+LR", "cov 50", "cov 80", "cov 95", "Gaussian 50/80/95",
               "MAE top/bottom fifth sd"]  # fmt: skip
    for fam, keys in families.items():
        chosen = loso(cov, secs, [(k, sc) for k in keys for sc in SCALES])
        rows = []
        for sec in secs:
            key, k = chosen[sec]
            for f in FACTORS:
                a = arrays[sec][f][key]
                c = coverage_at(a, k)
                sd = np.sqrt(k**2 * a["field_var"] + a["noise_var"])
                r = raw[sec][f]["fit"]
                ratio = error_sd_ratio(a["truth"], a["pred"], sd)
                gauss = "/".join(f"{v:.3f}" for v in gaussian_coverage_at(a, k))
                rows.append([sec, f"{f}x{f}", key, k, r["r_map"], r["r_own_unit"], r["r_knn"],
                             r["r_smooth_lowrank"], *c, gauss, ratio])  # fmt: skip
        votes = Counter(chosen.values()).most_common(1)[0][0]
        n_ok = sum(max(abs(row[8 + i] - q) for i, q in enumerate(LEVELS)) <= 0.05 for row in rows)
        table = markdown_table(headers, rows)
        print(f"settings: {fam}; within 5 points in {n_ok} of {len(rows)}")
        print(table)
        print("most chosen:", votes)
        payload[fam] = {
            "chosen": {s: {"setting": v[0], "scale": v[1]} for s, v in chosen.items()},
            "most_chosen": {"setting": votes[0], "scale": votes[1]},
            "within_5_points": int(n_ok),
            "table": table,
        }
    payload["settings"] = grid
    payload["raw"] = {s: {str(f): v for f, v in d.items()} for s, d in raw.items()}
    write_json("superres_calibration_quick" if args.quick else "superres_calibration", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
