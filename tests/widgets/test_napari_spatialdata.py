"""The exported store opens in napari-spatialdata, next to this plugin."""

from __future__ import annotations

import time

import spatialdata as sd

from napari_histosge import run_generator
from napari_histosge.io import load_sample
from napari_histosge.models import TrainConfig
from napari_histosge.pipeline import (
    ExtractOptions,
    Slide,
    export_slide,
    iter_extract,
    iter_train,
    predict_slide,
    render_maps,
)


def test_export_opens_in_napari_spatialdata(tmp_path, qtbot):
    from napari_spatialdata import Interactive

    slide = Slide.open(load_sample())
    feats = run_generator(iter_extract(slide, options=ExtractOptions()))
    cfg = TrainConfig(epochs=2, ensemble=1)
    model = run_generator(iter_train(slide, features=feats, config=cfg, n_top_genes=20))
    preds = predict_slide(slide, features=feats, model=model)
    maps = render_maps(slide, predictions=preds)
    out = export_slide(slide, predictions=preds, maps=maps, out=tmp_path / "out.zarr")

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
