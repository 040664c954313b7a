"""Many slides on dask.distributed: one task per slide, resumable, with a CSV report.

Each task opens one slide, runs the same steps as ``histosge run`` (features, training,
prediction, maps, export) on a worker, writes ``<out_dir>/<slide name>.zarr`` and then a small
completion marker ``<out_dir>/<slide name>.done.json``. The inputs are only read: the feature
cache goes into the output store, and the input's image chunks are hard-linked into it (see
:func:`~napari_histosge.workflows.export.write_predictions`). Each task limits torch and the BLAS
libraries to its share of the cores (:func:`local_cluster_size`). The marker is written last and
atomically, so a slide counts as complete only when both exist; a rerun skips complete slides and
redoes the others (replacing a partial output). A failing slide is recorded in the report and
does not stop the others.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_histosge.base.progress import run_generator

from ._slide_task import is_complete, marker_path, slide_name, slide_task

if TYPE_CHECKING:
    import pandas as pd

    from napari_histosge.models import TrainConfig

    from .pipeline import ExtractOptions, Slide, SlideFeatures

__all__ = [
    "REPORT_COLUMNS",
    "SlideJob",
    "is_complete",
    "local_cluster_size",
    "marker_path",
    "run_batch",
    "run_slide",
    "slide_name",
    "warm_up",
]

#: Columns of ``report.csv`` (``worker`` is the address of the worker that ran the slide).
REPORT_COLUMNS = (
    "slide",
    "status",
    "spots",
    "genes",
    "seconds",
    "error",
    "output",
    "worker",
    "cpu_seconds",
)


@dataclass(frozen=True)
class SlideJob:
    """What to run on each slide: the options of ``histosge run``.

    Parameters
    ----------
    extract
        Encoder, patch sizes, positions; the defaults when ``None``.
    config
        Training options; the defaults when ``None``.
    genes
        Genes to predict; highly variable genes of each slide when ``None``.
    n_top_genes
        Number of highly variable genes when ``genes`` is ``None``.
    keys
        ``image_key``, ``spots_key``, ``table_key`` overrides (auto-detected when absent).
    torch_threads
        Threads torch may use inside a task; the worker's thread count when ``None``.
    """

    extract: ExtractOptions | None = None
    config: TrainConfig | None = None
    genes: tuple[str, ...] | None = None
    n_top_genes: int = 1000
    keys: dict[str, str | None] = field(default_factory=dict)
    torch_threads: int | None = None


def warm_up() -> float:
    """Import what a slide task uses, once per worker process; return the seconds it took.

    A task's first run otherwise pays several seconds of imports (scanpy, spatialdata's models,
    the feature and model modules with scikit-learn and scikit-image, torch's compiler stack
    pulled in by deterministic mode) on top of its own work; ``run_batch`` runs this on every
    worker before it submits the slides.

    Examples
    --------
    >>> warm_up() >= 0.0
    True
    """
    t0 = time.perf_counter()
    import torch

    for name in _TASK_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            if name not in _OPTIONAL_MODULES:
                raise
    _load_gene_ranking_kernels()
    torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled())
    return time.perf_counter() - t0


#: Modules a slide task imports on its way (most of them lazily, inside functions).
_TASK_MODULES = (
    "scanpy",
    "spatialdata.models",
    "sklearn.linear_model",
    "skimage.color.colorconv",
    "skimage.measure",
    "skimage.transform",
    "spatialdata._io",
    "ome_zarr.writer",
    "spatialdata._io.io_zarr",
    "pint",  # xarray looks for it when it first builds an index
    "napari_histosge.models.checkpoints",
    "napari_histosge.workflows.export",
    "napari_histosge.features.extract",
    "napari_histosge.features.histology",
    "napari_histosge.io",
    "napari_histosge.lazy_maps",
    "napari_histosge.metrics",
    "napari_histosge.models.attention",
    "napari_histosge.models.smoothing",
    "napari_histosge.workflows.pipeline",
    "napari_histosge.train",
)


#: Imported by a task only where installed.
_OPTIONAL_MODULES = frozenset({"pint"})


def _load_gene_ranking_kernels() -> None:
    """Rank the genes of a tiny count table: numba loads scanpy's compiled kernels (~0.4 s)."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from napari_histosge.expression import select_genes

    counts = np.random.default_rng(0).poisson(1.0, (40, 30)).astype(np.float64)
    select_genes(ad.AnnData(sp.csr_matrix(counts)), n_top_genes=10)


def run_slide(src: str, out: str, job: SlideJob) -> dict[str, Any]:
    """Run one slide end to end and write ``out`` plus its completion marker (one task).

    Any existing ``out`` without a marker is an interrupted earlier attempt and is replaced.
    Dask collections inside the task run on the task's own thread (the synchronous scheduler),
    never back on the cluster.

    Parameters
    ----------
    src
        Input slide (``.zarr``, Visium or ST folder).
    out
        Output ``.zarr`` store.
    job
        The run options.

    Returns
    -------
    One report row (``slide``, ``status``, ``spots``, ``genes``, ``seconds``, ...).

    Examples
    --------
    >>> run_slide("A.zarr", "out/A.zarr", SlideJob())  # doctest: +SKIP
    """
    from .pipeline import Slide, export_slide, iter_train, predict_slide, render_maps

    with slide_task(src, out, job.torch_threads) as clock:
        slide = Slide.open(src, **job.keys)
        feats = _extract_read_only(slide, clock.out, job)
        model = run_generator(
            iter_train(
                slide,
                features=feats,
                config=job.config,
                genes=list(job.genes) if job.genes else None,
                n_top_genes=job.n_top_genes,
            )
        )
        preds = predict_slide(slide, features=feats, model=model)
        maps = render_maps(slide, predictions=preds)
        meta = {"command": "histosge batch", "source": str(src)}
        export_slide(slide, predictions=preds, maps=maps, out=clock.out, meta=meta, overwrite=True)
    return clock.finish(len(slide.geometry.spot_ids), len(preds.genes))


def _extract_read_only(slide: Slide, out: Path, job: SlideJob) -> SlideFeatures:
    """Extract a slide's features without writing into its input store.

    The feature cache is kept in memory while the task runs and written with the outputs into
    ``out``; cache tables of an earlier attempt at ``out`` are reused.
    """
    from .pipeline import iter_extract

    path = slide.sdata.path
    cache = job.extract is None or job.extract.cache
    if cache and out.is_dir():
        import spatialdata as sd

        try:
            with warnings.catch_warnings():  # tables read without the shapes they annotate
                warnings.simplefilter("ignore", UserWarning)
                earlier = sd.read_zarr(out, selection=("tables",)).tables
        except Exception:  # noqa: BLE001 - an unreadable earlier attempt is simply redone
            earlier = {}
        for name, table in earlier.items():
            if str(name).startswith("histosge_features_") and name not in slide.sdata.tables:
                slide.sdata.tables[name] = table
    slide.sdata.path = None  # the cache then lives in memory, and goes out with the outputs
    try:
        return run_generator(iter_extract(slide, options=job.extract))
    finally:
        slide.sdata.path = path


#: Memory a worker is sized for: a Visium slide with a 25k px image peaks near 2 GB.
WORKER_MEMORY_BYTES = 4 * 1024**3


def local_cluster_size(n_workers: int | None = None) -> tuple[int, int]:
    """Workers and torch threads per worker for a local cluster on this machine.

    One worker per core, at most one per :data:`WORKER_MEMORY_BYTES` of memory, unless
    ``n_workers`` is given; the cores are shared out among the workers' torch threads.

    Examples
    --------
    >>> local_cluster_size(2)[0]
    2
    """
    import psutil

    cores = os.cpu_count() or 1
    if n_workers is None:
        by_memory = int(psutil.virtual_memory().total // WORKER_MEMORY_BYTES)
        n_workers = max(1, min(cores, by_memory))
    if n_workers < 1:
        raise ValueError(f"Expected `n_workers` >= 1, found `{n_workers}`.")
    return n_workers, max(1, cores // n_workers)


def _skipped(name: str, out: Path) -> dict[str, Any]:
    try:
        done = json.loads(marker_path(out).read_text())
    except (OSError, ValueError):
        done = {}
    return {
        "slide": name,
        "status": "skipped",
        "spots": done.get("spots", math.nan),
        "genes": done.get("genes", math.nan),
        "seconds": 0.0,
        "error": "",
        "output": str(out),
        "worker": "",
    }


def _failed(name: str, out: Path, err: BaseException | None, seconds: float) -> dict[str, Any]:
    message = f"{type(err).__name__}: {err}" if err is not None else "cancelled"
    return {
        "slide": name,
        "status": "failed",
        "spots": math.nan,
        "genes": math.nan,
        "seconds": round(seconds, 2),
        "error": " ".join(message.split())[:500],
        "output": str(out),
        "worker": "",
    }


def _check_names(stores: Sequence[str | Path]) -> list[str]:
    names = [slide_name(s) for s in stores]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(
            f"Expected one input per slide name, found several named `{dupes}`; rename them so "
            "that each output DIR/<name>.zarr is distinct."
        )
    return names


def run_batch(
    stores: Sequence[str | Path],
    out_dir: str | Path,
    *,
    job: SlideJob | None = None,
    client: Any = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    retries: int = 0,
    task: Callable[[str, str, Any], dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """Run every slide as one task on dask.distributed and write ``out_dir/report.csv``.

    Parameters
    ----------
    stores
        Input slides; each gives ``out_dir/<name>.zarr``.
    out_dir
        Output folder (created when missing).
    job
        Options applied to every slide.
    client
        An existing :class:`distributed.Client`; takes precedence over ``scheduler``.
    scheduler
        Address of a running scheduler (``tcp://host:port``). Without it and without
        ``client``, a :class:`distributed.LocalCluster` of ``n_workers`` worker processes is
        started (:func:`local_cluster_size`: one per core, at most one per 4 GB of memory, by
        default) and closed at the end.
    n_workers
        Workers of the local cluster.
    retries
        Times a task is retried after a failure.
    task
        ``task(src, out, job)`` run per slide: :func:`run_slide` by default, or
        :func:`~napari_histosge.workflows.batch_predict.predict_slide_task` to apply a saved model.

    Returns
    -------
    The report, one row per slide in input order (also written to ``report.csv``).

    Examples
    --------
    >>> report = run_batch(["A.zarr", "B.zarr"], "out", job=SlideJob())  # doctest: +SKIP
    >>> report["status"].tolist()  # doctest: +SKIP
    ['done', 'done']
    """
    import pandas as pd
    from distributed import Client, LocalCluster, as_completed

    job = job or SlideJob()
    names = _check_names(stores)
    missing = [str(s) for s in stores if not Path(s).exists()]
    out_root = Path(out_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    todo: list[tuple[str, str, Path]] = []
    for name, src in zip(names, stores, strict=True):
        out = out_root / f"{name}.zarr"
        if str(src) in missing:
            rows[name] = _failed(name, out, FileNotFoundError(f"no input at `{src}`"), 0.0)
        elif is_complete(out):
            rows[name] = _skipped(name, out)
        else:
            todo.append((name, str(src), out))

    cluster = None
    own_client = client is None
    if todo:
        if client is None:
            if scheduler:
                client = Client(scheduler)
            else:
                workers, threads = local_cluster_size(n_workers)
                if job.torch_threads is None:
                    job = replace(job, torch_threads=threads)
                cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
                client = Client(cluster)
        try:
            client.run(warm_up)
            started, fn = time.perf_counter(), task or run_slide
            futures = {
                client.submit(
                    fn, src, str(out), job, key=f"histosge-slide-{name}", retries=retries
                ): (name, out)
                for name, src, out in todo
            }
            for fut in as_completed(list(futures), with_results=False):
                name, out = futures[fut]
                if fut.status == "finished":
                    rows[name] = {k: v for k, v in fut.result().items() if k != "pid"}
                else:
                    err = fut.exception() if fut.status == "error" else None
                    rows[name] = _failed(name, out, err, time.perf_counter() - started)
        finally:
            if own_client:
                client.close()
            if cluster is not None:
                cluster.close()
    report = pd.DataFrame([rows[n] for n in names], columns=list(REPORT_COLUMNS))
    report = report.astype({"spots": "Int64", "genes": "Int64"})
    tmp = out_root / ".report.csv.tmp"
    report.to_csv(tmp, index=False)
    os.replace(tmp, out_root / "report.csv")
    return report
