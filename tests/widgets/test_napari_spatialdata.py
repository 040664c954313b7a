"""The exported store opens in napari-spatialdata, next to this plugin."""

from __future__ import annotations

import time

import spatialdata as sd

from napari_histosge import run_generator
from napari_histosge.io import load_sample
from napari_histosge.pipeline import ExtractOptions, Slide, export, iter_extract, iter_train, predict, render
from napari_histosge.train import TrainConfig


def test_export_opens_in_napari_spatialdata(tmp_path, qtbot):
    from napari_spatialdata import Interactive

    slide = Slide.open(load_sample())
    feats = run_generator(iter_extract(slide, ExtractOptions()))
    model = run_generator(iter_train(slide, feats, config=TrainConfig(epochs=2, ensemble=1), n_top_genes=20))
    preds = predict(slide, feats, model)
    out = export(slide, preds, render(slide, preds), tmp_path / "out.zarr")

    interactive = Interactive(sd.read_zarr(out), headless=True)
    viewer = interactive._viewer
    try:
        for name in ("V1_Adult_Mouse_Brain_image", "histosge_expression", "histosge_positions"):
            before = len(viewer.layers)
            interactive.add_element(name, element_coordinate_system="global")
            qtbot.waitUntil(lambda b=before: len(viewer.layers) > b, timeout=60_000)
        names = {layer.metadata.get("name") for layer in viewer.layers}
        assert {"V1_Adult_Mouse_Brain_image", "histosge_expression", "histosge_positions"} <= names
        expr = next(layer for layer in viewer.layers if layer.metadata.get("name") == "histosge_expression")
        he = next(layer for layer in viewer.layers if layer.metadata.get("name") == "V1_Adult_Mouse_Brain_image")
        # The gene stack lies over the H&E in napari-spatialdata's world frame too.
        (y0, x0), (y1, x1) = expr.extent.world[0][-2:], expr.extent.world[1][-2:]
        (hy0, hx0), (hy1, hx1) = he.extent.world[0][-2:], he.extent.world[1][-2:]
        assert hy0 - 50 <= y0 and y1 <= hy1 + 50 and hx0 - 50 <= x0 and x1 <= hx1 + 50
    finally:
        viewer.close()
        time.sleep(0.1)
