"""Reliability diagram of the superres map's predictive intervals on her2st C2–C5.

    .venv/bin/python bench/superres_reliability_figure.py --out docs/images/reliability_diagram.png

The package's default settings (chosen by leave-one-section-out in
bench/superres_calibration.py) on the pooled-footprint protocol of `histosge evaluate
--superres-pool`: for nominal coverages from 10 % to 95 %, the share of the real spots' measured
values (250 genes) inside the central predictive interval of the measurement model (counts at
the spot's depth; `evaluate.calibration.count_coverage`), per section, 2x2 and 3x3; the
Gaussian intervals' shares are kept in the JSON. A calibrated model lies on the diagonal; the
shaded band is ±5 points.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from _common import run_metadata, write_json
from superres_calibration import SECTIONS, section_arrays

NOMINAL = tuple(round(v, 2) for v in np.arange(0.1, 0.951, 0.05))


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    from napari_histosge.evaluate.calibration import count_coverage, count_pit, pooled_calibration

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/images/reliability_diagram.png")
    ap.add_argument("--work", default="/tmp/histosge-bench")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    curves: dict = {}
    gaussian: dict = {}
    for sec in SECTIONS:
        arr = section_arrays(sec, work)
        for f in (2, 3):
            res = pooled_calibration(
                arr["feats"], arr["pos"], arr["xy"], arr["spots"], arr["counts"],
                factor=f, keep_arrays=True,
            )  # fmt: skip
            a = res["arrays"]
            below, upto = count_pit(a["counts"], a["unit_depth"], a["rate"], a["field_var"])
            curves[f"{sec} {f}x{f}"] = list(count_coverage(below, upto, NOMINAL).values())
            err = np.abs(a["truth"] - a["pred"])
            sd = np.sqrt(a["field_var"] + a["noise_var"])
            gaussian[f"{sec} {f}x{f}"] = [
                float(np.mean(err <= norm.ppf(0.5 + q / 2) * sd)) for q in NOMINAL
            ]
            print(sec, f, [round(v, 3) for v in curves[f"{sec} {f}x{f}"]], flush=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), sharey=True)
    for ax, f in zip(axes, (2, 3), strict=True):
        ax.fill_between(NOMINAL, np.array(NOMINAL) - 0.05, np.array(NOMINAL) + 0.05,
                        color="0.9", label="±5 points")  # fmt: skip
        ax.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--")
        for sec in SECTIONS:
            ax.plot(NOMINAL, curves[f"{sec} {f}x{f}"], marker="o", ms=3, label=sec)
        ax.set_title(f"pooled {f}x{f}: every real spot scored")
        ax.set_xlabel("nominal coverage of the central interval")
        ax.set_xlim(0.05, 1.0)
        ax.set_ylim(0.05, 1.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of measured values inside")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("her2st C2–C5, 250 genes: superres predictive intervals (default settings)")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    write_json(
        "superres_reliability",
        {
            "meta": run_metadata(),
            "nominal": list(NOMINAL),
            "observed": curves,
            "observed_gaussian": gaussian,
            "figure": str(out),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
