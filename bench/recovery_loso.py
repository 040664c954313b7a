"""Defaults of the improved model chosen by leave-one-section-out on her2st recovery.

    .venv/bin/python bench/recovery_loso.py          # 12 configs, C2–C5, checkerboard + random0
    .venv/bin/python bench/recovery_loso.py --quick  # 2 configs, C2 and C3, checkerboard only

For every section and split (50 % of the spots held out), each configuration of the improved
model is trained on the training spots and scored on the held-out spots (mean Pearson r over
the 250 genes of highest variance on the training spots), next to smoothing + low rank (no
image, bandwidth and rank chosen by leave-one-out on the training spots). A configuration's
score on a section is its worst ratio to smoothing + low rank over the splits. For each section
the configuration is chosen on the *other* sections only (the best worst case), and that
section's ratio with the chosen configuration is reported: the expected margin on a section the
choice never saw. Writes ``bench/results/recovery_loso.json``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

from _common import markdown_table, run_metadata, write_json

SECTIONS = ("C2", "C3", "C4", "C5")


def config_grid(quick: bool) -> dict:
    """Named :class:`TrainConfig` variants around the package default."""
    from napari_histosge.train import TrainConfig

    if quick:
        return {"default": TrainConfig(), "dims8": TrainConfig(feature_dims=8)}
    grid = {}
    for dims, nn, epochs in itertools.product((8, 16, 32), (8, 16), (30, 100)):
        cfg = TrainConfig(feature_dims=dims, n_neighbors=nn, epochs=epochs)
        grid["default" if cfg == TrainConfig() else f"dims{dims}_nn{nn}_ep{epochs}"] = cfg
    return grid


def run_section(sec, splits: dict, configs: dict, panel: str) -> dict:
    """Mean r of every config and of smoothing + low rank on each split of one section."""
    from accuracy import top_variance

    from napari_histosge.evaluate import recovery

    out = {}
    for split, train in splits.items():
        if panel == "top250":
            genes = [str(g) for g in sec.genes[top_variance(sec.values[train], 250)]]
        else:  # what `histosge evaluate` does: 1,000 seurat_v3 genes of the training spots
            genes = None
        scores: dict = {}
        seconds: dict = {}
        for name, cfg in configs.items():
            t = time.perf_counter()
            res = recovery(
                sec.slide.table, sec.features, sec.xy, train,
                genes=genes, n_top_genes=1000, flavor="seurat_v3", config=cfg,
                feature_meta=sec.meta,
            )  # fmt: skip
            seconds[name] = round(time.perf_counter() - t, 2)
            scores[name] = float(res["methods"]["model"]["mean_r"])
            scores["smooth_lowrank"] = float(res["methods"]["smooth_lowrank"]["mean_r"])
            scores["knn"] = float(res["methods"]["knn"]["mean_r"])
        out[split] = {"mean_r": scores, "seconds": seconds}
        best = max(configs, key=lambda c: scores[c])
        print(
            sec.name, split, "smooth_lowrank", round(scores["smooth_lowrank"], 3),
            "default", round(scores.get("default", float("nan")), 3),
            "best", best, round(scores[best], 3), flush=True,
        )  # fmt: skip
    return out


def main(argv=None) -> int:
    from accuracy import Section, convert_sections

    from napari_histosge.evaluate import random_mask
    from napari_histosge.evaluate.superres import loso_choice

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="2 configs, C2 and C3, checkerboard")
    p.add_argument(
        "--panel",
        choices=("top250", "seurat_v3"),
        default="top250",
        help="top250: 250 genes of highest log variance; seurat_v3: 1,000 seurat_v3 genes "
        "(the `histosge evaluate` default)",
    )
    p.add_argument("--work", default=str(Path(__file__).parent / "results" / "tmp"))
    p.add_argument("--out", default=None, help="results name under bench/results")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    doc = {"meta": run_metadata(), "panel": args.panel}
    secs = SECTIONS[:2] if args.quick else SECTIONS
    configs = config_grid(args.quick)
    stores = convert_sections(Path(args.work), secs)
    raw = {}
    for s in secs:
        sec = Section(s, stores[s])
        splits = {"checkerboard": (sec.ax + sec.ay) % 2 == 0}
        if not args.quick:
            splits["random0"] = random_mask(len(sec.xy), 0.5, 0)
        raw[s] = run_section(sec, splits, configs, args.panel)

    def ratio(s, split, c):
        r = raw[s][split]["mean_r"]
        return r[c] / r["smooth_lowrank"]

    worst = {s: {c: min(ratio(s, sp, c) for sp in raw[s]) for c in configs} for s in secs}
    chosen = {s: loso_choice(worst, s, "min") for s in secs}
    most = Counter(chosen.values()).most_common(1)[0][0]
    rows = []
    for s in secs:
        for sp in raw[s]:
            r = raw[s][sp]["mean_r"]
            c = chosen[s]
            rows.append(
                [s, sp, r["knn"], r["smooth_lowrank"], r.get("default"), r[c],
                 f"{ratio(s, sp, 'default'):.3f}x" if "default" in r else None,
                 f"{ratio(s, sp, c):.3f}x", c]
            )  # fmt: skip
    head = [
        "section", "split", "knn", "smooth_lowrank", "improved (default)",
        "improved (LOSO)", "default / smooth", "LOSO / smooth", "config chosen without it",
    ]  # fmt: skip
    table = markdown_table(head, rows)
    print(table)
    print("chosen most often:", most)
    doc.update(
        {
            "sections": list(secs),
            "configs": {k: dict(v.__dict__) for k, v in configs.items()},
            "results": raw,
            "worst_ratio": worst,
            "loso_choice": chosen,
            "chosen_most_often": most,
            "table": table,
        }
    )
    print(
        "wrote",
        write_json(
            (args.out or f"recovery_loso_{args.panel}") + ("_quick" if args.quick else ""), doc
        ),
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
