"""The dock's parts without a viewer: the session model, the worker process, the controller."""

from __future__ import annotations

import time

import numpy as np
import pytest
from histosge_widget_utils import wait_for

from napari_histosge._widgets._controller import Controller
from napari_histosge._widgets._session import FeaturesInfo, ModelInfo, Session, SlideInfo
from napari_histosge._widgets._worker_process import Runner, describe_exit

SLIDE = SlideInfo(
    source="/tmp/s.zarr",
    label="s",
    keys={"image_key": "he", "spots_key": "spots", "table_key": "table"},
    elements={"images": ["he"], "shapes": ["spots"], "tables": ["table"]},
    n_spots=3,
    n_genes=2,
    lattice="hexagonal",
    diameter_px=10.0,
    um_per_px=5.0,
    centers="/tmp/c.npy",
)


@pytest.fixture
def runner(tmp_path):
    r = Runner(tmp_path / "session", tasks="fake_tasks", grace_s=0.5)
    yield r
    r.close()


def test_session_gates_actions_and_forgets_what_no_longer_applies():
    session = Session()
    changed = []
    session.changed.connect(changed.append)
    assert session.why_not("extract") == "Open a slide first."
    assert session.why_not("train") == "Extract features first."
    session.set_slide(SLIDE)
    assert session.why_not("extract") == ""
    features = FeaturesInfo({"encoder": "histology"}, False, 3, 6, 8, "histology@v2")
    session.set_features(features)
    session.set_model(ModelInfo("/tmp/model", 2))
    assert session.why_not("predict") == ""
    assert session.context() == {
        "slide": {"source": "/tmp/s.zarr", "keys": SLIDE.keys},
        "features": {"encoder": "histology"},
        "model": "/tmp/model",
        "superres": None,
        "predictions": None,
    }
    session.set_features(features)  # the same features again: nothing is forgotten
    assert session.model is not None
    session.set_features(FeaturesInfo({"encoder": "uni"}, False, 3, 6, 8, "uni@x"))
    assert session.model is None  # a model for other features no longer applies
    session.set_running("Training")
    assert session.why_not("extract") == "Wait: Training is running."
    session.set_slide(SLIDE)
    assert session.features is None
    assert {"slide", "features", "model"} <= set(changed)


def test_runner_streams_progress_and_results_from_a_spawned_low_priority_process(runner):
    import os

    got, progress = [], []
    runner.finished.connect(lambda name, result: got.append((name, result)))
    runner.progress.connect(progress.append)
    runner.start()
    wait_for(runner, lambda: runner.worker_info)
    assert runner.worker_info["pid"] != os.getpid()
    assert runner.worker_info["nice"] >= 10  # the viewer keeps priority
    assert runner.submit("count", {"n": 5}, {"slide": None})
    assert not runner.submit("echo", {}, {})  # one task at a time
    wait_for(runner, lambda: got)
    assert got == [("count", {"n": 5})]
    assert [p["step"] for p in progress] == [1, 2, 3, 4, 5]
    assert runner.submit("echo", {"a": 1}, {"b": 2})
    wait_for(runner, lambda: len(got) == 2)
    assert got[1][1]["payload"] == {"a": 1}
    assert got[1][1]["calls"] == 1  # the same process keeps its state between tasks


def test_close_lets_an_idle_worker_leave_by_itself_at_once(runner):
    got = []
    runner.finished.connect(lambda name, result: got.append(name))
    assert runner.submit("slow_teardown", {}, {})
    wait_for(runner, lambda: got)
    process = runner._process
    t0 = time.perf_counter()
    runner.close()
    # The worker exits on "quit" without its interpreter's teardown (5 s here): not terminated.
    assert time.perf_counter() - t0 < 0.4
    assert process.exitcode == 0


def test_runner_reports_errors_and_keeps_working(runner):
    failed, got = [], []
    runner.failed.connect(lambda name, message: failed.append((name, message)))
    runner.finished.connect(lambda name, result: got.append(name))
    runner.submit("fail", {}, {})
    wait_for(runner, lambda: failed)
    assert failed == [("fail", "Expected a good value, found a bad one.")]
    assert "ValueError" in runner.last_traceback
    runner.submit("echo", {}, {})
    wait_for(runner, lambda: got)


def test_cancel_stops_a_cooperative_task_at_once_and_a_stubborn_one_by_terminating(runner):
    cancelled = []
    runner.cancelled.connect(cancelled.append)
    runner.start()
    wait_for(runner, lambda: runner.worker_info)
    pid = runner.pid
    runner.submit("count", {"n": 100000, "sleep": 0.01}, {})
    time.sleep(0.3)
    runner.cancel()
    took = wait_for(runner, lambda: cancelled)
    assert took < 1.0
    assert runner.pid == pid  # it stopped by itself: the same worker goes on
    runner.submit("stubborn", {}, {})
    time.sleep(0.3)
    runner.cancel()
    took = wait_for(runner, lambda: len(cancelled) == 2)
    assert took < 1.0
    assert runner.running is None
    assert runner.pid != pid  # terminated, and a fresh worker started
    got = []
    runner.finished.connect(lambda name, result: got.append(result))
    runner.submit("echo", {}, {})
    wait_for(runner, lambda: got)


def test_a_crash_of_the_worker_is_an_error_not_a_crash_of_the_viewer(runner):
    failed, got = [], []
    runner.failed.connect(lambda name, message: failed.append(message))
    runner.finished.connect(lambda name, result: got.append(result))
    runner.submit("crash", {}, {})
    wait_for(runner, lambda: failed)
    assert "SIGSEGV" in failed[0]
    assert "crash" in failed[0]
    runner.submit("echo", {}, {})  # a new worker takes over
    wait_for(runner, lambda: got)
    assert describe_exit(1) == "exit code 1"


def test_controller_runs_the_workflow_without_a_viewer_and_cancel_keeps_the_model(tmp_path):
    controller = Controller(runner=Runner(tmp_path / "session"))
    session = controller.session
    try:

        def run(started: bool) -> None:
            assert started, session.status
            wait_for(controller.runner, lambda: session.running is None, timeout=300)
            assert session.last_error is None, session.last_error

        run(controller.open_sample())
        assert session.slide.n_spots == 49
        assert np.load(session.slide.centers).shape == (49, 2)
        assert session.slide.image_levels
        options = {"encoder": "histology", "weights": None, "device": None, "batch_size": 32}
        run(controller.extract({**options, "patch_sizes": None, "positions": "4x"}))
        config = {"mode": "improved", "epochs": 3, "lr": 1e-3, "seed": 0, "val_fraction": 0.15}
        run(controller.train({**config, "device": None}, 50))
        model, losses = session.model, list(session.losses)
        assert model.n_genes == 50
        assert losses
        # Cancel a long run: control comes back at once, the earlier model and curve stay.
        assert controller.train({**config, "epochs": 100000}, 50)
        wait_for(controller.runner, lambda: len(session.losses) >= 2, timeout=300)
        start = time.perf_counter()
        controller.cancel()
        wait_for(controller.runner, lambda: session.running is None)
        assert time.perf_counter() - start < 1.0
        assert session.model is model
        assert session.losses == losses
        assert "cancelled" in session.status
        run(controller.predict())
        genes = session.predictions.genes[:2]
        run(controller.render(genes, 20.0, measured=True))
        maps = np.load(session.maps.path)
        assert maps.shape[0] == 2
        assert session.maps.pitch_um == pytest.approx(20.0)
        assert session.maps.scale[0] == pytest.approx(20.0 / session.slide.um_per_px)
        assert session.measured.gene == genes[0]
        run(controller.export(tmp_path / "out.zarr", overwrite=False))
        assert (tmp_path / "out.zarr").is_dir()
    finally:
        controller.close()
