"""Shared utilities for the benchmark scripts: run metadata, peak memory, JSON output, tables."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from napari_histosge._json import json_default

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
