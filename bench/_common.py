"""Shared utilities for the benchmark scripts: run metadata, peak memory, JSON output, tables."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from napari_histosge.base.json_io import json_default

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def cpu_model() -> str:
    """CPU model name as reported by ``lscpu`` (falls back to ``platform.processor``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _exe() -> str:
    """The interpreter, relative to the working directory when inside it (``.venv/bin/python``)."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def run_metadata(extra_packages: Sequence[str] = ()) -> dict[str, Any]:
    """Date, machine, package versions and the exact command of this run."""
    pkgs = ["torch", "timm", "numpy", "spatialdata", "scanpy", "anndata", "napari-histosge"]
    pkgs += list(extra_packages)
    mem_gb = None
    with contextlib.suppress(ValueError, OSError):
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_model": cpu_model(),
            "cpu_cores": os.cpu_count(),
            "memory_gb": mem_gb,
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {p: _version(p) for p in pkgs},
        "loadavg_1_5_15_at_start": list(os.getloadavg()),
        "command": " ".join(shlex.quote(a) for a in [_exe(), *sys.argv]),
        "cwd": os.getcwd(),
    }


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size of this process (or of its waited-for children) in MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0


def drop_cached_features(store: Path) -> list[str]:
    """Delete the feature caches (``histosge_features_*`` tables) from a store; their names."""
    import spatialdata as sd

    sdata = sd.read_zarr(store)
    names = [k for k in sdata.tables if k.startswith("histosge_features_")]
    for name in names:
        sdata.delete_element_from_disk(name)
    return names


def time_histosge_run(args: Sequence[str]) -> dict[str, Any]:
    """Run ``histosge run ARGS`` in a child process under ``/usr/bin/time -v``.

    Returns ``command`` (the interpreter on), ``wall_s``, ``peak_rss_kb`` (the child's
    maximum resident set size), ``load_before`` (1-minute load average at the start) and
    ``stdout``, unrounded.
    """
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "napari_histosge.cli", "run", *args]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`histosge run` exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(
            "Expected the 'Maximum resident set size' line of `/usr/bin/time -v` in the "
            f"run's stderr, found none:\n{proc.stderr[-1000:]}"
        )
    return {
        "command": " ".join(cmd[2:]),
        "wall_s": wall,
        "peak_rss_kb": int(found.group(1)),
        "load_before": load,
        "stdout": proc.stdout,
    }


class PeakRSS:
    """Sample the resident set size in a background thread to get the peak of a code section.

    ``ru_maxrss`` is monotonic over the process lifetime, so per-section peaks need sampling.
    """

    def __init__(self, interval: float = 0.05) -> None:
        import threading

        self.interval = interval
        self.peak_mb = 0.0
        self.start_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current_mb() -> float:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.current_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start_mb = self.current_mb()
        self.peak_mb = self.start_mb
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.current_mb())


def write_json(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``payload`` to ``<out_dir>/<name>.json`` (default ``bench/results``)."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=json_default) + "\n")
    return path


def fmt(value: Any, digits: int = 3) -> str:
    """Format a table cell."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)
