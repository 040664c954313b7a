"""What the maps' uncertainty adds to `histosge run` on a whole slide: time and peak memory.

    .venv/bin/python bench/synthetic_slide.py --out /tmp/histosge_synthetic_25k.zarr  # once
    .venv/bin/python bench/uncertainty_cost.py --store /tmp/histosge_synthetic_25k.zarr

A first run (untimed) caches the slide's superpixel features in the store; then rounds of
`histosge run --no-uncertainty` and `histosge run` (which also fits the uncertainty and writes
`histosge_uncertainty` and the genes' reliability) alternate, each in a child process under
`/usr/bin/time -v`, so that the two are measured side by side on a machine whose speed drifts.
Besides the wall time, each run's CPU time (user + system of the child, which other jobs on a
shared machine inflate less than the wall time) is kept.
Goal: the uncertainty adds at most 30 % to the time and 20 % to the peak memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

from _common import markdown_table, run_metadata, time_histosge_run, write_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--work", default=Path("/tmp/histosge-uncertainty-cost"), type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("extra", nargs="*", help="further `histosge run` options")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.work / "out.zarr"
    base = [str(args.store), "--out", str(out), "--overwrite", "--quiet", *args.extra]
    time_histosge_run([*base, "--no-uncertainty"])  # caches the features in the store
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    for _ in range(args.rounds):
        for name, flags in (("without", ["--no-uncertainty"]), ("with", [])):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            r = time_histosge_run([*base, *flags])
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            runs[name].append(
                {
                    "wall_s": round(r["wall_s"], 1),
                    "cpu_s": round(cpu, 1),
                    "peak_rss_mb": round(r["peak_rss_kb"] / 1024, 1),
                    "load_before": round(r["load_before"], 2),
                    "summary": [ln for ln in r["stdout"].splitlines() if ln.startswith("wrote")],
                }
            )
            print(name, runs[name][-1], flush=True)
    rows = []
    for i in range(args.rounds):
        a, b = runs["without"][i], runs["with"][i]
        rows.append([i + 1, a["wall_s"], b["wall_s"], b["wall_s"] / a["wall_s"],
                     a["cpu_s"], b["cpu_s"], b["cpu_s"] / a["cpu_s"],
                     a["peak_rss_mb"], b["peak_rss_mb"], b["peak_rss_mb"] / a["peak_rss_mb"],
                     a["load_before"]])  # fmt: skip
    headers = ["round", "time without (s)", "time with (s)", "ratio", "CPU without (s)",
               "CPU with (s)", "ratio", "peak without (MB)", "peak with (MB)", "ratio",
               "load at start"]  # fmt: skip
    table = markdown_table(headers, rows)
    print(table)
    write_json(
        "uncertainty_cost",
        {"meta": run_metadata(), "store": str(args.store), "runs": runs, "table": table},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
