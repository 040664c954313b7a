"""What every batch task shares: output names, completion markers, thread limits, report rows.

A task runs one slide inside :func:`slide_task`: its marker is removed first (an output without
one is an interrupted attempt), torch and the BLAS libraries are limited to the task's threads
and dask runs synchronously on the task's own thread; :meth:`TaskClock.finish` then writes the
report row as the marker, last and atomically.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER_SUFFIX",
    "TaskClock",
    "is_complete",
    "marker_path",
    "slide_name",
    "slide_task",
    "worker_address",
]

MARKER_SUFFIX = ".done.json"
_SLIDE_ENDINGS = (".zarr", ".svs", ".tif", ".tiff", ".ndpi", ".scn")


def slide_name(src: str | Path) -> str:
    """Name of a slide's outputs: the store's folder or slide file's name, without its ending.

    Examples
    --------
    >>> slide_name("/data/A1.zarr/"), slide_name("/archive/B7.svs")
    ('A1', 'B7')
    """
    name = Path(str(src).rstrip("/")).name
    stem, suffix = os.path.splitext(name)
    return stem if suffix.lower() in _SLIDE_ENDINGS else name


def marker_path(out: str | Path) -> Path:
    """Return the completion marker written beside an output store.

    Examples
    --------
    >>> marker_path("/out/A1.zarr").name
    'A1.done.json'
    """
    out = Path(out)
    return out.parent / f"{slide_name(out)}{MARKER_SUFFIX}"


def is_complete(out: str | Path) -> bool:
    """Whether ``out`` was fully written by a batch task (store and marker both present).

    Examples
    --------
    >>> is_complete("/nonexistent/A1.zarr")
    False
    """
    out = Path(out)
    return out.is_dir() and marker_path(out).is_file()


def _write_marker(out: Path, record: dict[str, Any]) -> None:
    path = marker_path(out)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


def worker_address() -> str:
    """Address of the dask worker running this task (``local:PID`` outside a cluster)."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"local:{os.getpid()}"


@dataclass
class TaskClock:
    """Wall and CPU clocks of one task, started when it begins; writes its report row."""

    src: str
    out: Path
    t0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.process_time)

    def finish(self, spots: int, genes: int, **extra: Any) -> dict[str, Any]:
        """Write the marker (the report row, ``extra`` columns last) and return the row."""
        record = {
            "slide": slide_name(self.src),
            "status": "done",
            "spots": spots,
            "genes": genes,
            "seconds": round(time.perf_counter() - self.t0, 2),
            "error": "",
            "output": str(self.out),
            "worker": worker_address(),
            "cpu_seconds": round(time.process_time() - self.cpu0, 2),
            "pid": os.getpid(),
            **extra,
        }
        _write_marker(self.out, record)
        return record


@contextmanager
def slide_task(src: str, out: str | Path, torch_threads: int | None) -> Iterator[TaskClock]:
    """Run the block as one slide's task: old marker removed, threads limited, dask in-thread.

    ``torch_threads`` of ``None`` takes the dask worker's thread count (1 outside a cluster).

    Examples
    --------
    >>> with slide_task("A.zarr", "out/A.zarr", 1) as clock:  # doctest: +SKIP
    ...     row = clock.finish(spots=10, genes=5)
    """
    import dask
    import torch
    from threadpoolctl import threadpool_limits

    clock = TaskClock(str(src), Path(out))
    marker_path(clock.out).unlink(missing_ok=True)
    threads = torch_threads or _worker_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with dask.config.set(scheduler="synchronous"), threadpool_limits(threads):
            yield clock
    finally:
        torch.set_num_threads(before)
