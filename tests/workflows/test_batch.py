"""``histosge batch`` on a real dask scheduler with two worker processes on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import spatialdata as sd
from safety_helpers import tree_digest

import napari_histosge
from napari_histosge.cli import main
from napari_histosge.store import EXPRESSION_KEY, POSITIONS_KEY, PREDICTIONS_KEY
from napari_histosge.workflows.batch import is_complete, marker_path, slide_name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def scheduler():
    """A ``dask scheduler`` and two ``dask worker`` processes, each one thread."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ)
    src = str(Path(napari_histosge.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
            + ["--port", str(port), "--dashboard-address", ":0", "--no-show"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    for _ in range(2):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address]
                + ["--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    from distributed import Client

    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            workers = set(client.scheduler_info()["workers"])
        yield address, workers
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory, sample_zarr):
    """Two copies of the sample store (the batch runs only read them)."""
    import shutil

    root = tmp_path_factory.mktemp("batch_in")
    shutil.copytree(sample_zarr, root / "A.zarr")
    shutil.copytree(sample_zarr, root / "B.zarr")
    return root / "A.zarr", root / "B.zarr"


def test_slide_names_and_markers(tmp_path):
    assert slide_name("x/A1.zarr") == "A1"
    assert slide_name("x/section_3/") == "section_3"
    out = tmp_path / "A1.zarr"
    out.mkdir()
    assert not is_complete(out)
    marker_path(out).write_text("{}")
    assert is_complete(out)


@pytest.mark.slow
def test_batch_on_a_running_scheduler(tmp_path, scheduler, two_stores):
    address, workers = scheduler
    a, b = two_stores
    broken = tmp_path / "C.zarr"
    broken.mkdir()  # an empty folder: not a slide
    out_dir = tmp_path / "out"
    argv = ["batch", str(a), str(b), str(broken), "--out-dir", str(out_dir)]
    argv += ["--scheduler", address, "--epochs", "20", "--n-top-genes", "30"]
    inputs_before = {p: tree_digest(p) for p in (a, b, broken)}
    assert main(argv) == 1  # C failed, the others ran
    # The inputs are only read: no feature cache, no temporary folder, nothing touched.
    assert {p: tree_digest(p) for p in (a, b, broken)} == inputs_before
    report = pd.read_csv(out_dir / "report.csv")
    assert list(report["slide"]) == ["A", "B", "C"]
    assert list(report["status"]) == ["done", "done", "failed"]
    assert report.loc[2, "error"]
    assert list(report["spots"][:2]) == [49, 49]
    assert list(report["genes"][:2]) == [30, 30]
    # The work ran on the scheduler's worker processes.
    assert set(report["worker"][:2]) <= workers
    for name in ("A", "B"):
        store = out_dir / f"{name}.zarr"
        assert is_complete(store)
        back = sd.read_zarr(store)
        for key in (EXPRESSION_KEY, POSITIONS_KEY, PREDICTIONS_KEY):
            assert key in back
        # The feature cache went into the output store.
        assert {"histosge_features_spots", "histosge_features_4x"} <= set(back.tables)
    assert not (out_dir / "C.zarr").exists()

    # A rerun skips the complete slides and redoes one whose marker is gone.
    marker_path(out_dir / "B.zarr").unlink()
    stamp = (out_dir / "A.zarr").stat().st_mtime
    t0 = time.perf_counter()
    assert main(argv[:3] + argv[4:]) == 0  # without the broken input
    report = pd.read_csv(out_dir / "report.csv")
    assert list(report["status"]) == ["skipped", "done"]
    assert report.loc[0, "spots"] == 49
    assert (out_dir / "A.zarr").stat().st_mtime == stamp
    assert is_complete(out_dir / "B.zarr")
    assert time.perf_counter() - t0 < 600


def test_batch_task_reuses_the_cache_of_an_earlier_attempt(tmp_path, two_stores, monkeypatch):
    """A slide redone after an interrupted attempt takes its features from that output."""
    from napari_histosge.models import TrainConfig
    from napari_histosge.workflows.batch import SlideJob, run_slide

    a, _ = two_stores
    before = tree_digest(a)
    out = tmp_path / "A.zarr"
    job = SlideJob(config=TrainConfig(epochs=2, ensemble=1), n_top_genes=30, torch_threads=1)
    run_slide(str(a), str(out), job)
    marker_path(out).unlink()  # as if killed after the export
    cached = sd.read_zarr(out).tables["histosge_features_spots"]
    from napari_histosge.features import extract

    calls = []
    real = extract.lookup

    def spy(*args, **kwargs):
        hit = real(*args, **kwargs)
        calls.append(hit is not None)
        return hit

    monkeypatch.setattr(extract, "lookup", spy)
    run_slide(str(a), str(out), job)
    assert calls
    assert all(calls)
    assert tree_digest(a) == before
    again = sd.read_zarr(out).tables["histosge_features_spots"]
    assert sorted(again.obsm) == sorted(cached.obsm)


def test_local_cluster_size_shares_the_cores():
    import os

    from napari_histosge.workflows.batch import local_cluster_size

    workers, threads = local_cluster_size()
    assert 1 <= workers <= (os.cpu_count() or 1)
    assert local_cluster_size(1)[1] == max(1, os.cpu_count() or 1)
    with pytest.raises(ValueError, match="n_workers"):
        local_cluster_size(0)


def test_warm_up_leaves_a_slide_task_nothing_to_import(tmp_path):
    """A worker's first slide does not pay imports (1-2 s of them were left before)."""
    probe = (
        "import sys\n"
        "from napari_histosge.workflows.batch import SlideJob, run_slide, warm_up\n"
        "from napari_histosge.io import load_sample\n"
        "from napari_histosge.models import TrainConfig\n"
        "from napari_histosge.store import write_sdata\n"
        f"src, out = {str(tmp_path / 'in.zarr')!r}, {str(tmp_path / 'out.zarr')!r}\n"
        "write_sdata(load_sample(), src)\n"
        "warm_up()\n"
        "before = set(sys.modules)\n"
        "run_slide(src, out, SlideJob(config=TrainConfig(epochs=2), n_top_genes=30))\n"
        "heavy = ('napari_histosge', 'scanpy', 'sklearn', 'skimage', 'spatialdata', 'anndata',\n"
        "         'ome_zarr', 'numba', 'pint', 'xarray', 'torch', 'timm', 'zarr')\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    ).stdout.split("\n")[-2]
    assert out == "[]"
