"""Super-resolution against a known truth: synthetic slides whose expression follows the image.

Each slide (:func:`napari_histosge.evaluate.synthetic.synthetic_slide`) has cell-type-like
fields at sub-spot scale (14 µm smoothing) that set both the H&E-like image (colour and nuclei
of each type) and the expression (a mixture of per-type profiles); Visium-like spots (55 µm,
100 µm pitch) measure negative binomial counts under their footprints. ``hidden`` is the
largest share of expression that follows a field the image does not show. The super-resolution
step runs as ``histosge run --mode superres`` does (built-in encoder, default settings chosen
by leave-one-section-out on her2st; nothing is tuned here), next to the same model without its
image term and the no-image baselines, all scored on the 8 µm superpixels against the truth:
Pearson r per gene over superpixels and SSIM per gene on the map, means over genes, then mean
(and range) over seeds.

    .venv/bin/python bench/superres_synthetic.py                      # 3 seeds x hidden 0, 0.3, 0.6
    .venv/bin/python bench/superres_synthetic.py --quick              # 1 seed, hidden 0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
from _common import markdown_table, peak_rss_mb, run_metadata, write_json


def main(argv: list[str] | None = None) -> int:
    from napari_histosge.evaluate.synthetic import (
        SyntheticConfig,
        score_synthetic,
        synthetic_slide,
    )
    from napari_histosge.models.superres import SuperResConfig

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="one seed, hidden 0")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--hidden", type=float, nargs="+", default=[0.0, 0.3, 0.6])
    p.add_argument("--size", type=int, default=1000, help="image side in pixels (1 µm each)")
    p.add_argument("--genes", type=int, default=40)
    p.add_argument("--out", default="superres_synthetic")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    seeds = [0] if args.quick else list(range(args.seeds))
    hidden = [0.0] if args.quick else args.hidden
    meta = run_metadata()
    configs = {"superres": SuperResConfig(), "superres_no_image": SuperResConfig(image_weight=0.0)}
    runs = []
    for h in hidden:
        for seed in seeds:
            cfg = SyntheticConfig(size_px=args.size, n_genes=args.genes, hidden=h, seed=seed)
            t = time.perf_counter()
            syn = synthetic_slide(cfg)
            t_make = time.perf_counter() - t
            t = time.perf_counter()
            res = score_synthetic(syn, configs=configs)
            res["seconds"] = {
                "make": round(t_make, 2),
                "fit_and_score": round(time.perf_counter() - t, 2),
            }
            res["hidden"], res["seed"] = h, seed
            runs.append(res)
            print(
                f"hidden {h} seed {seed}:",
                {k: (round(v, 3), round(res["mean_ssim"][k], 3)) for k, v in res["mean_r"].items()},
                res["seconds"],
                flush=True,
            )
    methods = list(runs[0]["mean_r"])
    summary: dict = {}
    for h in hidden:
        sel = [r for r in runs if r["hidden"] == h]
        summary[str(h)] = {
            m: {
                "r": float(np.mean([r["mean_r"][m] for r in sel])),
                "r_min": float(np.min([r["mean_r"][m] for r in sel])),
                "r_max": float(np.max([r["mean_r"][m] for r in sel])),
                "ssim": float(np.mean([r["mean_ssim"][m] for r in sel])),
                "ssim_min": float(np.min([r["mean_ssim"][m] for r in sel])),
                "ssim_max": float(np.max([r["mean_ssim"][m] for r in sel])),
            }
            for m in methods
        }
    doc = {
        "meta": meta,
        "settings": {
            "seeds": seeds,
            "hidden": hidden,
            "size_px": args.size,
            "genes": args.genes,
            "configs": {k: vars(v) | {"alphas": list(v.alphas)} for k, v in configs.items()},
        },
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if not k.startswith("per_gene")} for r in runs],
        "per_gene": [
            {k: r[k] for k in ("hidden", "seed", "per_gene_r", "per_gene_ssim")} for r in runs
        ],
        "loadavg_1_5_15_at_end": list(os.getloadavg()),
        "peak_rss_mb": peak_rss_mb(),
    }
    path = write_json(args.out + ("_quick" if args.quick else ""), doc)
    head = ["method"] + [f"r (hidden {h})" for h in hidden] + [f"SSIM (hidden {h})" for h in hidden]
    rows = []
    for m in methods:
        rows.append(
            [m]
            + [
                f"{summary[str(h)][m]['r']:.3f} ({summary[str(h)][m]['r_min']:.3f}–"
                f"{summary[str(h)][m]['r_max']:.3f})"
                for h in hidden
            ]
            + [
                f"{summary[str(h)][m]['ssim']:.3f} ({summary[str(h)][m]['ssim_min']:.3f}–"
                f"{summary[str(h)][m]['ssim_max']:.3f})"
                for h in hidden
            ]
        )
    print(markdown_table(head, rows))
    print(
        "spots",
        runs[0]["n_spots"],
        "superpixels",
        runs[0]["n_superpixels"],
        "load at start",
        meta["loadavg_1_5_15_at_start"],
        "at end",
        doc["loadavg_1_5_15_at_end"],
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
