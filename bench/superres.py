"""Super-resolution with true footprints on her2st C2–C5, defaults by leave-one-section-out.

    .venv/bin/python bench/superres.py                # full run: bench/results/superres.json
    .venv/bin/python bench/superres.py --quick        # C2 and C3, two configs (smoke test)
    .venv/bin/python bench/superres.py --timing-only  # CPU time of fit + predict, 4,000 units

Protocol (napari_histosge.evaluate.superres): blocks of 2x2 and 3x3 spots are pooled into
pseudo-units (counts summed) whose footprints are the union of the member disks (100 µm); the
model sees the pseudo-units and the dense histology features of 8 µm superpixels; its map is
averaged inside every real spot's disk and correlated, gene by gene, with that spot's
log-normalised measurement (250 genes of highest variance over the pseudo-units). Baselines are
scored as maps the same way: own pseudo-unit value, kNN (k=4) of pseudo-unit centres,
smoothing + low rank, linear interpolation.

Model settings: a grid of configs is scored on every section; for each section the config
with the best worst case over the *other three* sections (the lowest ratio of its mean r to
the best baseline's, over 2x2 and 3x3 and the three sections) is the one reported for it
(leave one section out; the goal must hold on every section). The package default is the
config chosen most often. The table of the choice by mean r is printed too.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from _common import SHARED_DATA, markdown_table, run_metadata, write_json

SECTIONS = ("C2", "C3", "C4", "C5")
FACTORS = (2, 3)


def section_arrays(sec: str, work: Path, step_um: float) -> dict:
    """Superpixel grid over the spots' disks, dense features, footprints and counts."""
    import scipy.sparse as sp
    import spatialdata as sd
    from accuracy import convert_sections
    from scipy.spatial import cKDTree

    from napari_histosge.base.progress import run_generator
    from napari_histosge.features.dense import histology_dense_maps, superpixel_features
    from napari_histosge.geometry.footprints import circle_membership, superpixel_grid
    from napari_histosge.workflows.pipeline import Slide

    store = convert_sections(work, [sec])[sec]
    slide = Slide.open(sd.read_zarr(store))
    g = slide.geometry
    image = slide.sdata.images[slide.keys.image_key]
    rad = g.diameter_px / 2
    step = step_um / g.um_per_px
    lo = g.centers_px.min(0) - rad - step
    hi = g.centers_px.max(0) + rad + step
    tree = cKDTree(g.centers_px)
    t0 = time.perf_counter()
    # Only superpixels inside a spot are ever scored; the map elsewhere is not needed here.
    grid = superpixel_grid(
        (lo[0], lo[1], hi[0], hi[1]), step, keep=lambda p: tree.query(p)[0] <= rad
    )
    pos = grid.positions
    ctx = 150.0 / g.um_per_px  # context for the largest pooling box
    maps = run_generator(
        histology_dense_maps(
            image, g.um_per_px, (lo[0] - ctx, lo[1] - ctx, hi[0] + ctx, hi[1] + ctx)
        )
    )
    feats = superpixel_features(maps, pos)
    seconds = time.perf_counter() - t0
    return {
        "pos": pos,
        "feats": feats,
        "centers": g.centers_px,
        "spots": circle_membership(pos, g.centers_px, rad),
        "counts": sp.csr_matrix(slide.table.X),
        "genes": [str(v) for v in slide.table.var_names],
        "feature_seconds": seconds,
        "um_per_px": g.um_per_px,
    }


def config_grid(quick: bool) -> dict:
    """Every config scored (names encode the settings; see ``configs`` in the JSON)."""
    from napari_histosge.models.superres import SuperResConfig

    if quick:
        return {
            "smooth_only": SuperResConfig(image_weight=0.0, nugget=10.0, measurement="mean"),
            "default": SuperResConfig(),
        }
    out = {
        "mean_k32_img0.5r2": SuperResConfig(n_components=32, shrink_power=1.0, measurement="mean"),
        "mean_k32_img0.5r2_counts": SuperResConfig(
            n_components=32, shrink_power=1.0, measurement="mean", aggregate="counts"
        ),
        "mean_img0": SuperResConfig(image_weight=0.0, measurement="mean"),
        "mean_k4_img0.5sqrt_local": SuperResConfig(
            n_components=4, image_fit="local", shrink_power=0.5, measurement="mean"
        ),
        "poisson_img0_flat": SuperResConfig(image_weight=0.0, depth_image=False),
        "poisson_img0_dk8": SuperResConfig(image_weight=0.0),
    }
    images = ((0.5, 0.5), (1.0, 1.0), (1.5, 1.0))  # (image weight, power of R²)
    for k, (w, pw) in itertools.product((4, 8), images):
        tag = f"k{k}_img{w}{'sqrt' if pw == 0.5 else 'r2'}"
        out[f"mean_{tag}"] = SuperResConfig(
            n_components=k, image_weight=w, shrink_power=pw, measurement="mean"
        )
        for dk in (4, 8, 16):
            out[f"poisson_{tag}_dk{dk}"] = SuperResConfig(
                n_components=k, image_weight=w, shrink_power=pw, depth_components=dk
            )
    for bw, nug in ((0.5, 3.0), (1.5, 3.0), (1.0, 1.0), (1.0, 10.0)):
        out[f"mean_k8_img0.5sqrt_bw{bw}_nug{nug:g}"] = SuperResConfig(
            bandwidth=bw, nugget=nug, measurement="mean"
        )
    for dw in (0.75, 1.5):
        out[f"poisson_k8_img0.5sqrt_dk8_dw{dw}"] = SuperResConfig(depth_weight=dw)
    return out


def timing(n_units: int = 4000, n_genes: int = 250, seed: int = 0) -> dict:
    """Fit (with unit depths) + predict on a synthetic 4,000-unit hexagonal slide at 8 µm."""
    from scipy.spatial import cKDTree

    from napari_histosge.geometry.footprints import circle_membership, superpixel_grid
    from napari_histosge.models.superres import SuperResConfig, fit_superres

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_units)))
    ii, jj = np.meshgrid(np.arange(side), np.arange(side))
    xy = np.c_[(ii + 0.5 * (jj % 2)).ravel() * 100.0, jj.ravel() * 100.0 * np.sqrt(3) / 2][:n_units]
    tree = cKDTree(xy)
    t0 = time.perf_counter()
    lo, hi = xy.min(0) - 75, xy.max(0) + 75
    grid = superpixel_grid((lo[0], lo[1], hi[0], hi[1]), 8.0, keep=lambda p: tree.query(p)[0] <= 75)
    pos = grid.positions
    member = circle_membership(pos, xy, 27.5)
    t_grid = time.perf_counter() - t0
    feats = rng.normal(size=(len(pos), 88)).astype(np.float32)
    values = np.log1p(rng.poisson(3.0, size=(n_units, n_genes))).astype(np.float64)
    depth = rng.uniform(500.0, 5000.0, size=n_units)  # unit totals, for the count-density map
    t0 = time.perf_counter()
    model = fit_superres(feats, pos, member, values, config=SuperResConfig(), depth=depth)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = model.predict()
    t_pred = time.perf_counter() - t0
    return {
        "units": n_units,
        "superpixels": int(len(pos)),
        "genes": n_genes,
        "grid_and_footprints_s": round(t_grid, 2),
        "fit_s": round(t_fit, 2),
        "predict_s": round(t_pred, 2),
        "max_footprint_mismatch": float(np.abs(member @ pred - values).max()),
    }


def within_unit_ceiling(arr: dict, factor: int, n_genes: int = 250, seed: int = 0) -> dict:
    """How much of the real units' variation inside a pseudo-unit is signal, and how much of it
    the default model's map recovers.

    Counts are split into two binomial halves; the within-pseudo-unit deviations (spot minus
    the mean of its block) of one half are correlated with the other's (split-half r, per gene,
    mean over genes); the default model's map deviations are correlated with the measured ones.
    """
    from napari_histosge.evaluate.superres import log_normalise, pooled_units
    from napari_histosge.metrics import pearson_per_gene
    from napari_histosge.models.superres import SuperResConfig, fit_superres

    rng = np.random.default_rng(seed)
    x = np.rint(arr["counts"].toarray()).astype(np.int64)
    half = rng.binomial(x, 0.5)
    _, pooled, labels, unit_m = pooled_units(arr["centers"], arr["spots"], arr["counts"], factor)
    uy = log_normalise(pooled)
    cols = np.argsort(-uy.var(0), kind="stable")[:n_genes]
    uy = uy[:, cols]
    n = np.bincount(labels)[:, None]

    def dev(v):
        m = np.zeros((len(n), v.shape[1]))
        np.add.at(m, labels, v)
        return v - (m / n)[labels]

    truth = log_normalise(x)[:, cols]
    d_a, d_b = dev(log_normalise(half)[:, cols]), dev(log_normalise(x - half)[:, cols])
    model = fit_superres(arr["feats"], arr["pos"], unit_m, uy, config=SuperResConfig())
    pred = np.asarray(arr["spots"] @ model.predict())
    return {
        "within_share_of_variance": float((dev(truth).var(0) / truth.var(0)).mean()),
        "split_half_r_within": float(np.nanmean(pearson_per_gene(d_a, d_b))),
        "model_vs_measured_within_r": float(np.nanmean(pearson_per_gene(dev(pred), dev(truth)))),
    }


def _block_centred(v: np.ndarray, labels: np.ndarray) -> np.ndarray:
    n = np.bincount(labels)[:, None].astype(float)
    m = np.zeros((len(n), v.shape[1]))
    np.add.at(m, labels, v)
    return v - (m / n)[labels]


def _best_weight_per_gene(own: np.ndarray, detail: np.ndarray, truth: np.ndarray) -> float:
    """Mean r when each gene's detail weight (0-3) is chosen on the truth: an upper bound."""
    from napari_histosge.metrics import pearson_per_gene

    best = np.full(truth.shape[1], -np.inf)
    for w in np.linspace(0.0, 3.0, 31):
        r = np.nan_to_num(pearson_per_gene(own + w * detail, truth), nan=-np.inf)
        best = np.maximum(best, r)
    return float(np.mean(best[np.isfinite(best)]))


def detail_bounds(arrs: dict, sec: str, factor: int, n_genes: int = 250) -> dict:
    """Upper bounds on what within-unit detail from these features can add (diagnostic only).

    ``model_*``: the default model's detail (its spot means minus the own-unit copy);
    ``cross_*``: a spot-level ridge (penalty per gene by GCV) from the spots' mean features to
    their log-normalised values, fitted on the real spots of the *other* sections (block-centred
    values on block-centred features, the same pooling) and applied to this section's spots.
    ``*_oracle`` picks each gene's weight on this section's truth, so it is a bound, not a score;
    ``depth_oracle``: the expected measurement from the map's rate at every real spot's *true*
    depth (total counts), the bound of the count-density map.
    """
    from napari_histosge.evaluate.superres import log_normalise, pooled_units
    from napari_histosge.metrics import pearson_per_gene
    from napari_histosge.models._superres_depth import expected_log1p
    from napari_histosge.models._superres_ops import ridge_gcv
    from napari_histosge.models.superres import SuperResConfig, fit_superres

    def spot_features(a):
        x = np.asarray(a["spots"] @ a["feats"].astype(np.float64))
        return (x - x.mean(0)) / np.where(x.std(0) > 1e-9, x.std(0), 1.0)

    def split(a):
        return pooled_units(a["centers"], a["spots"], a["counts"], factor)

    arr = arrs[sec]
    _, pooled, labels, unit_m = split(arr)
    uy = log_normalise(pooled)
    cols = np.argsort(-uy.var(0), kind="stable")[:n_genes]
    uy, truth = uy[:, cols], log_normalise(arr["counts"])[:, cols]
    own = uy[labels]
    model = fit_superres(arr["feats"], arr["pos"], unit_m, uy, config=SuperResConfig())
    pred = model.predict().astype(np.float64)
    m_detail = np.asarray(arr["spots"] @ pred) - own
    true_depth = np.asarray(arr["counts"].sum(1)).ravel()
    at_true_depth = expected_log1p(np.asarray(arr["spots"] @ np.expm1(pred)) / 1e4, true_depth)
    names = [arr["genes"][c] for c in cols]
    xs, ys = [], []
    for o, other in arrs.items():
        if o == sec:
            continue
        lookup = {g: i for i, g in enumerate(other["genes"])}
        idx = np.array([lookup.get(g, -1) for g in names])
        y = log_normalise(other["counts"])[:, np.maximum(idx, 0)] * (idx >= 0)
        lab = split(other)[2]
        xs.append(_block_centred(spot_features(other), lab))
        ys.append(_block_centred(y, lab))
    w, _, _ = ridge_gcv(np.vstack(xs), np.vstack(ys), np.logspace(-2, 5, 15))
    c_detail = _block_centred(spot_features(arr) @ w, labels)
    d_true = _block_centred(truth, labels)

    def r(p):
        return float(np.nanmean(pearson_per_gene(p, truth)))

    return {
        "own_unit": r(own),
        "model": r(own + m_detail),
        "model_detail_vs_measured_r": float(np.nanmean(pearson_per_gene(m_detail, d_true))),
        "model_oracle": _best_weight_per_gene(own, m_detail, truth),
        "cross_w0.5": r(own + 0.5 * c_detail),
        "cross_w1": r(own + c_detail),
        "cross_detail_vs_measured_r": float(np.nanmean(pearson_per_gene(c_detail, d_true))),
        "cross_oracle": _best_weight_per_gene(own, c_detail, truth),
        "depth_oracle": r(at_true_depth),
    }


def main(argv=None) -> int:
    from napari_histosge.evaluate.superres import (
        BASELINES,
        COUNT_BLIND,
        loso_choice,
        superres_footprints,
    )

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--timing-only", action="store_true")
    p.add_argument("--ceiling-only", action="store_true", help="within-unit signal analysis")
    p.add_argument("--bounds-only", action="store_true", help="upper bounds on within-unit detail")
    p.add_argument("--work", default="/tmp/histosge_superres", help="converted stores")
    p.add_argument("--step-um", type=float, default=8.0)
    p.add_argument("--out", default="superres")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    doc: dict = {"meta": run_metadata()}
    if not (args.ceiling_only or args.bounds_only):
        doc["timing"] = timing()
        print("timing", doc["timing"], flush=True)
    if args.timing_only:
        write_json(args.out + "_timing", doc)
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    secs = SECTIONS[:2] if args.quick else SECTIONS
    if args.ceiling_only:
        out = {}
        for sec in secs:
            arr = section_arrays(sec, work, args.step_um)
            for f in FACTORS:
                out[f"{sec}/{f}x{f}"] = within_unit_ceiling(arr, f)
                print(sec, f, out[f"{sec}/{f}x{f}"], flush=True)
        doc["ceiling"] = out
        write_json(args.out + "_ceiling", doc)
        return 0
    if args.bounds_only:
        arrs = {sec: section_arrays(sec, work, args.step_um) for sec in secs}
        out = {}
        for sec in secs:
            for f in FACTORS:
                out[f"{sec}/{f}x{f}"] = detail_bounds(arrs, sec, f)
                print(
                    sec, f, {k: round(v, 3) for k, v in out[f"{sec}/{f}x{f}"].items()}, flush=True
                )
        doc["bounds"] = out
        write_json(args.out + "_bounds", doc)
        return 0
    configs = config_grid(args.quick)
    raw: dict = {}
    feature_seconds = {}
    for sec in secs:
        arr = section_arrays(sec, work, args.step_um)
        feature_seconds[sec] = round(arr["feature_seconds"], 2)
        for f in FACTORS:
            res = superres_footprints(
                arr["feats"], arr["pos"], arr["centers"], arr["spots"], arr["counts"],
                factor=f, configs=configs,
            )  # fmt: skip
            raw[f"{sec}/{f}x{f}"] = res
            top = max(configs, key=lambda c: res["mean_r"][c])
            scores = {b: round(res["mean_r"][b], 3) for b in BASELINES}
            print(sec, f, scores, "best config", top, round(res["mean_r"][top], 3), flush=True)

    # Leave one section out: choose on the other sections only, by the ratio to the best
    # count-blind baseline (the measurement-aware own-unit copy is reported beside it).
    def ratio(s, f, c):
        r = raw[f"{s}/{f}x{f}"]["mean_r"]
        return r[c] / max(r[b] for b in COUNT_BLIND)

    worst = {s: {c: min(ratio(s, f, c) for f in FACTORS) for c in configs} for s in secs}
    mean = {
        s: {c: float(np.mean([ratio(s, f, c) for f in FACTORS])) for c in configs} for s in secs
    }
    chosen = {s: loso_choice(worst, s, "min") for s in secs}
    chosen_by_mean = {s: loso_choice(mean, s, "mean") for s in secs}
    default = Counter(chosen.values()).most_common(1)[0][0]
    tables = {}
    for label, pick in (("worst case", chosen), ("mean", chosen_by_mean)):
        tables[label] = _table(raw, secs, pick)
        print(f"\nLOSO choice by {label}:\n" + tables[label])
    print("default (most often chosen):", default)
    doc.update(
        {
            "sections": list(secs),
            "feature_seconds": feature_seconds,
            "configs": {k: v.__dict__ | {"alphas": None} for k, v in configs.items()},
            "loso_choice": chosen,
            "loso_choice_by_mean": chosen_by_mean,
            "default": default,
            "mean_r": {k: v["mean_r"] for k, v in raw.items()},
            "seconds": {k: v["seconds"] for k, v in raw.items()},
            "consistency": {k: v["consistency"] for k, v in raw.items()},
            "n_pseudo": {k: v["n_pseudo"] for k, v in raw.items()},
            "per_gene_r_default": {
                k: {m: v["per_gene_r"][m] for m in [*BASELINES, default]} for k, v in raw.items()
            },
            "tables": tables,
        }
    )  # fmt: skip
    path = write_json(args.out + ("_quick" if args.quick else ""), doc)
    print("wrote", path)
    return 0


def _table(raw: dict, secs, chosen: dict) -> str:
    from napari_histosge.evaluate.superres import BASELINES, COUNT_BLIND

    rows = []
    for f in FACTORS:
        for s in secs:
            r = raw[f"{s}/{f}x{f}"]["mean_r"]
            best_b = max(COUNT_BLIND, key=lambda b: r[b])
            m = r[chosen[s]]
            vs_best = f"{m / r[best_b]:.3f}x ({best_b})"
            vs_depth = f"{m / r['own_unit_depth']:.3f}x"
            base = [r[b] for b in BASELINES]
            rows.append([f"{f}x{f}", s, *base, m, vs_best, vs_depth, chosen[s]])
    head = ["pool", "section", *BASELINES, "model (LOSO)", "vs best count-blind baseline"]
    return markdown_table([*head, "vs own_unit_depth", "config chosen without this section"], rows)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _ = SHARED_DATA
    sys.exit(main())
