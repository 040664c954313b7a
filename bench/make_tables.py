"""Render the markdown tables of ``docs/benchmarks.md`` from ``bench/results/*.json``.

Usage::

    .venv/bin/python bench/make_tables.py            # prints markdown for every result found
    .venv/bin/python bench/make_tables.py --quick    # the --quick results (smoke test)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, markdown_table


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def header(d: dict[str, Any]) -> str:
    """One line: date, machine, versions, command."""
    m = d["machine"]
    v = ", ".join(f"{k} {val}" for k, val in d["versions"].items() if val)
    load = d.get("loadavg_1_5_15_at_start")
    load_s = f"; load average at start {load[0]:.1f}" if load else ""
    return (
        f"*{d['date_utc']} — {m['cpu_model']}, {m['cpu_cores']} cores, "
        f"{m.get('memory_gb')} GB{load_s}; {v}.*  \n`{d['command']}`"
    )


def throughput(d: dict[str, Any]) -> str:
    """Matmul roofline, ViT variants, package encoders."""
    out = [header(d), ""]
    out.append(
        markdown_table(
            ["matmul", "dtype", "GFLOP/s"],
            [[r["shape"], r["dtype"], r["gflops_best"]] for r in d["matmul"]],
            digits=1,
        )
    )
    mdl = d["model"]
    out += [
        "",
        f"Model `{mdl['timm_name']}` {mdl['kwargs']}, {mdl['params'] / 1e6:.1f} M parameters, "
        f"{mdl['flops_per_patch_analytic'] / 1e9:.1f} GFLOP per 224 px patch (closed form; "
        f"FlopCounterMode, which skips the fused attention kernel, counts "
        f"{mdl['flops_per_patch_counter'] / 1e9:.1f}).",
        "",
    ]
    rows = []
    for v in d["variants"]:
        if "error" in v:
            rows.append(
                [v["variant"], v.get("batch"), None, None, None, None, "error: " + v["error"][:80]]
            )
        else:
            local = v.get("frac_local_bf16_roofline")
            rows.append(
                [
                    v["variant"],
                    v["batch"],
                    v["patches_per_s"],
                    v["gflops"],
                    f"{100 * v['frac_bf16_roofline']:.0f}%",
                    None if local is None else f"{100 * local:.0f}%",
                    v["note"],
                ]
            )
    out.append(
        markdown_table(
            [
                "variant",
                "batch",
                "patches/s",
                "GFLOP/s",
                "of bf16 matmul",
                "of bf16 matmul just before",
                "note",
            ],
            rows,
            2,
        )
    )
    if d.get("package_encoders"):
        out.append("")
        rows = [
            [r["encoder"], r.get("dim"), r.get("batch"), r.get("patches_per_s")]
            if "error" not in r
            else [r["encoder"], None, None, "error: " + r["error"][:80]]
            for r in d["package_encoders"]
        ]
        out.append(
            markdown_table(
                ["package encoder (`get_encoder().embed`)", "dim", "batch", "patches/s"], rows, 2
            )
        )
    return "\n".join(out)


def synthetic(d: dict[str, Any]) -> str:
    """Generation time and memory."""
    rows = [
        [
            "image",
            f"{d['size_px']:,} x {d['size_px']:,} px RGB uint8, "
            f"chunks (3, {d['chunk']}, {d['chunk']}), {len(d['image_levels'])} levels",
        ],
        ["spots, genes", f"{d['n_spots']:,}, {d['n_genes']}"],
        [
            "µm/px; spot radius; pitch",
            f"{d['um_per_px']:.3f}; {d['spot_radius_px']:.1f} px; {d['spot_pitch_px']:.1f} px",
        ],
        ["median UMI per spot", f"{d['median_umi_per_spot']:.0f}"],
        ["wall time", f"{d['wall_s']:.0f} s"],
    ]
    rows += [[f"— {k[:-2]}", f"{v:.1f} s"] for k, v in d["timings_s"].items()]
    rows += [
        [f"— peak RSS, {k}", f"{v:.0f} MiB"] for k, v in d.get("peak_rss_mb_by_phase", {}).items()
    ]
    rows += [
        ["peak RSS (whole run)", f"{d['peak_rss_mb_sampled']:.0f} MiB"],
        ["full-resolution image size", f"{d['full_image_mb']:.0f} MiB"],
        ["store on disk", f"{d['store_mb']:.0f} MiB"],
    ]
    return header(d) + "\n\n" + markdown_table(["", "value"], rows)


def recovery(d: dict[str, Any]) -> str:
    """Per-section mean Pearson r and the means of every metric."""
    secs = [s["section"] for s in d["sections"]]
    methods = list(d["mean"])
    p = d["protocol"]
    out = [f"**split {p['split']}, {p['panel']}**  ", header(d), ""]
    rows = [
        [m, *[s["methods"][m]["pearson_mean"] for s in d["sections"]], d["mean"][m]["pearson_mean"]]
        for m in methods
    ]
    out.append(markdown_table(["mean r (held-out)", *secs, "mean"], rows))
    out.append("")
    rows = []
    for m in methods:
        a = d["mean"][m]
        rows.append(
            [
                m,
                a.get("pearson_mean"),
                a.get("pearson_median"),
                a.get("n_genes_r_gt_0.3"),
                a.get("mse"),
                a.get("mae"),
                a.get("wall_s"),
                a.get("peak_rss_mb"),
            ]
        )
    out.append(
        markdown_table(
            [
                "method (mean of sections)",
                "mean r",
                "median r",
                "genes r>0.3",
                "MSE",
                "MAE",
                "wall s / section",
                "peak RSS MiB",
            ],
            rows,
        )
    )
    c = d["mean"].get("ceiling")
    if c:
        out.append(
            f"\nCeiling: split-half r {c['split_half_mean']:.3f} → Spearman–Brown reliability "
            f"{c['pearson_mean']:.3f}; its square root (the most a prediction can correlate with a "
            f"measurement of that reliability) {c.get('sqrt_reliability_mean', float('nan')):.3f}."
        )
    slr = [s["methods"].get("smooth-lowrank") for s in d["sections"]]
    if all(slr):
        out.append(
            "\nSmoothing + low rank, chosen by leave-one-out: "
            + "; ".join(
                f"{s['section']} bandwidth {m['bandwidth_pitch']:.2f} pitch, "
                f"rank {m['rank'] or 'full'}"
                for s, m in zip(d["sections"], slr, strict=True)
            )
            + "."
        )
    return "\n".join(out)


def random_splits(results: list[dict[str, Any]]) -> str:
    """Mean (and spread) over seeds of the random 50% hold-outs, one table per gene panel."""
    import numpy as np

    groups: dict[str, list[dict[str, Any]]] = {}
    for d in results:
        if d.get("benchmark") == "peer_recovery" and str(d["protocol"]["split"]).startswith(
            "random"
        ):
            groups.setdefault(d["protocol"]["panel"], []).append(d)
    out = []
    for panel, runs in groups.items():
        runs = sorted(runs, key=lambda d: d["protocol"]["split"])
        seeds = [d["protocol"]["split"] for d in runs]
        secs = [s["section"] for s in runs[0]["sections"]]
        out.append(
            f"**random 50% hold-out, seeds {', '.join(x.split(':')[1] for x in seeds)}; {panel}**\n"
        )
        out.append("Commands: " + "; ".join(f"`{d['command']}`" for d in runs) + "\n")
        rows = []
        for m in runs[0]["mean"]:
            per_sec = [
                float(np.mean([d["sections"][i]["methods"][m]["pearson_mean"] for d in runs]))
                for i in range(len(secs))
            ]
            overall = [d["mean"][m]["pearson_mean"] for d in runs]
            rows.append(
                [m, *per_sec, float(np.mean(overall)), f"{min(overall):.3f}–{max(overall):.3f}"]
            )
        out.append(
            markdown_table(
                ["mean r (held-out), mean of seeds", *secs, "mean", "range over seeds"], rows
            )
        )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    """Print every table found in the results folder."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    loaded = []
    for path in sorted(args.results.glob("*.json")):
        d = _load(path)
        if bool(d.get("quick")) != args.quick:
            continue
        loaded.append(d)
        kind = d.get("benchmark")
        print(f"\n<!-- {path.name} -->\n")
        if kind == "throughput":
            print(throughput(d))
        elif kind == "synthetic_slide":
            print(synthetic(d))
        elif kind == "peer_recovery":
            print(recovery(d))
    summary = random_splits(loaded)
    if summary:
        print("\n<!-- random splits, aggregated -->\n")
        print(summary)


if __name__ == "__main__":
    main()
