"""End-to-end `histosge run` on a whole-slide store: wall time and peak resident memory.

    .venv/bin/python bench/synthetic_slide.py --out /tmp/histosge_synthetic_25k.zarr  # once
    .venv/bin/python bench/end_to_end.py --store /tmp/histosge_synthetic_25k.zarr

Cached features of earlier runs are deleted from the store first, so the first run computes the
slide's image features from scratch; a second run, with the features cached, is timed as well.
Options after the known ones are passed to ``histosge run`` (default: the superres model).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from _common import drop_cached_features, time_histosge_run

ROOT = Path(__file__).resolve().parents[1]


def timed_run(store: Path, out: Path, extra: list[str]) -> dict:
    r = time_histosge_run([str(store), "--out", str(out), "--overwrite", "--quiet", *extra])
    summary = [ln for ln in r["stdout"].splitlines() if ln.startswith("wrote")]
    return {"command": r["command"], "wall_s": round(r["wall_s"], 1),
            "peak_rss_mb": round(r["peak_rss_kb"] / 1024, 1),
            "load_before": round(r["load_before"], 2),
            "summary": summary[-1] if summary else ""}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--store", required=True)
    p.add_argument("--out", default="/tmp/histosge_e2e_out.zarr")
    p.add_argument("--results", default=str(ROOT / "bench" / "results" / "end_to_end.json"))
    args, extra = p.parse_known_args(argv)
    store = Path(args.store)
    dropped = drop_cached_features(store)
    cold = timed_run(store, Path(args.out), extra)
    warm = timed_run(store, Path(args.out), extra)
    cpu = subprocess.run(
        ["bash", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True, text=True
    ).stdout.strip()
    load = Path("/proc/loadavg").read_text().split()[:3]
    doc = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu}, 2 cores",
        "loadavg_after": load,
        "store": str(store),
        "dropped_caches": dropped,
        "cold": cold,
        "cached_features": warm,
        "bench_command": " ".join([".venv/bin/python", "bench/end_to_end.py", *sys.argv[1:]]),
    }
    Path(args.results).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
