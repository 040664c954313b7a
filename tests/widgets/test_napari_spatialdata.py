"""The exported store opens in napari-spatialdata, next to this plugin."""

from __future__ import annotations

import time

import spatialdata as sd
from histosge_widget_utils import wait_for

from napari_histosge._widgets._controller import Controller
from napari_histosge._widgets._worker_process import Runner


def _export_sample(out, session_dir):
    """Run the workflow in the dock's worker process (torch stays out of this process)."""
    controller = Controller(runner=Runner(session_dir))
    session = controller.session
    options = {"encoder": "histology", "positions": "4x"}
    config = {"epochs": 2, "ensemble": 1}
    steps = [
        controller.open_sample,
        lambda: controller.extract(options),
        lambda: controller.train(config, 20),
        controller.predict,
        lambda: controller.export(out, overwrite=False),
    ]
    try:
        for step in steps:
            assert step(), session.status
            wait_for(controller.runner, lambda: session.running is None, timeout=300)
            assert session.last_error is None, session.last_error
    finally:
        controller.close()
    return out


def test_export_opens_in_napari_spatialdata(tmp_path, qtbot):
    from napari_spatialdata import Interactive

    out = _export_sample(tmp_path / "out.zarr", tmp_path / "session")

    interactive = Interactive(sd.read_zarr(out), headless=True)
    viewer = interactive._viewer
    try:
        for name in ("V1_Adult_Mouse_Brain_image", "histosge_expression", "histosge_positions"):
            before = len(viewer.layers)
            interactive.add_element(name, element_coordinate_system="global")
            qtbot.waitUntil(lambda b=before: len(viewer.layers) > b, timeout=60_000)
        names = {layer.metadata.get("name") for layer in viewer.layers}
        assert {"V1_Adult_Mouse_Brain_image", "histosge_expression", "histosge_positions"} <= names
        expr = next(
            layer for layer in viewer.layers if layer.metadata.get("name") == "histosge_expression"
        )
        he = next(
            layer
            for layer in viewer.layers
            if layer.metadata.get("name") == "V1_Adult_Mouse_Brain_image"
        )
        # The gene stack lies over the H&E in napari-spatialdata's world frame too.
        (y0, x0), (y1, x1) = expr.extent.world[0][-2:], expr.extent.world[1][-2:]
        (hy0, hx0), (hy1, hx1) = he.extent.world[0][-2:], he.extent.world[1][-2:]
        assert hy0 - 50 <= y0
        assert y1 <= hy1 + 50
        assert hx0 - 50 <= x0
        assert x1 <= hx1 + 50
    finally:
        viewer.close()
        time.sleep(0.1)
