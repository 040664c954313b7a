from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
from qtpy.QtCore import QTimer

from napari_histosge._widgets import HisToSGEWidget
from napari_histosge.export import EXPRESSION_KEY, PREDICTIONS_KEY

TIMEOUT = 120_000


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: widget.running is None and widget.worker is None, timeout=TIMEOUT)


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = HisToSGEWidget(viewer)
    viewer.window.add_dock_widget(widget, name="HisToSGE")
    return viewer, widget


def _load_and_extract(qtbot, widget):
    widget.open_sample()
    _wait(qtbot, widget)
    assert widget.slide is not None
    widget.extract()
    _wait(qtbot, widget)
    assert widget.features is not None


def _train(qtbot, widget, epochs=5):
    widget.epochs_spin.setValue(epochs)
    widget.train()
    _wait(qtbot, widget)
    assert widget.model is not None


def test_buttons_disabled_until_possible(dock):
    _, widget = dock
    assert not widget.extract_button.isEnabled()
    assert "Open a slide" in widget.extract_button.toolTip()
    assert not widget.train_button.isEnabled() and not widget.render_button.isEnabled()
    assert widget.lr_spin.decimals() >= 6 and widget.lr_spin.value() == pytest.approx(1e-3)


def test_full_workflow_alignment_and_export(dock, qtbot, tmp_path):
    viewer, widget = dock
    _load_and_extract(qtbot, widget)
    he = viewer.layers[widget.slide.keys.image_key]
    assert he.rgb and he.metadata["name"] == widget.slide.keys.image_key
    assert he.metadata["sdata"] is widget.sdata
    spots = viewer.layers[widget.slide.keys.spots_key]
    assert np.ravel(spots.size)[0] == pytest.approx(widget.slide.geometry.diameter_px)
    # Second extraction reuses the cache and says so.
    widget.extract()
    _wait(qtbot, widget)
    assert widget.features.from_cache and "reused" in widget.status.text()
    _train(qtbot, widget)
    assert len(widget.loss_plot.train) >= 5
    widget.predict()
    _wait(qtbot, widget)
    genes = widget.predictions.genes[:2]
    widget.select_genes(genes)
    assert widget.selected_genes() == genes
    widget.measured_check.setChecked(True)
    widget.render()
    _wait(qtbot, widget)
    for gene in genes:
        layer = viewer.layers[f"{gene} (HisToSGE)"]
        assert layer.blending == "additive" and layer.colormap.name in ("magenta", "green")
        # Alignment: the map pixel under each spot centre holds that spot's prediction.
        preds = widget.predictions
        gi = preds.genes.index(gene)
        for (x, y), value in zip(preds.spot_px[:10], preds.spot_values[:10, gi], strict=True):
            r, c = np.round(layer.world_to_data((y, x))).astype(int)
            assert layer.data[r, c] == pytest.approx(value)
        # The map's world extent lies over the H&E image.
        ext = layer.extent.world
        he_ext = he.extent.world
        assert ext[0][0] >= he_ext[0][0] - layer.scale[0] and ext[1][1] <= he_ext[1][1] + layer.scale[1]
    assert widget.measured_layer is not None
    out = tmp_path / "export.zarr"
    widget.export_edit.setText(str(out))
    widget.export()
    _wait(qtbot, widget)
    assert widget.last_export == out.resolve()
    back = sd.read_zarr(out)
    assert EXPRESSION_KEY in back and PREDICTIONS_KEY in back
    assert back.tables[PREDICTIONS_KEY].n_vars == len(widget.predictions.genes)
    # Exporting again without confirmation is refused, with the core's message, and nothing changes.
    widget.export()
    _wait(qtbot, widget)
    assert widget.last_error is not None and "overwrite" in widget.last_error
    assert widget.export_button.isEnabled()


def test_error_from_core_reaches_user_and_dock_recovers(dock, qtbot):
    _, widget = dock
    _load_and_extract(qtbot, widget)
    widget.encoder_combo.setCurrentText("timm:test_vit")
    widget.weights_edit.setText("/nonexistent/weights.pth")
    widget.extract()
    _wait(qtbot, widget)
    assert "weights.pth" in widget.last_error
    assert widget.features is not None  # the earlier features are kept
    assert widget.extract_button.isEnabled() and widget.train_button.isEnabled()


def test_double_click_starts_one_run_and_cancel_keeps_state(dock, qtbot):
    _, widget = dock
    _load_and_extract(qtbot, widget)
    widget.encoder_combo.setCurrentText("timm:test_vit")
    widget.weights_edit.setText("random")
    widget.positions_combo.setCurrentText("grid:5")
    widget.batch_spin.setValue(4)
    before = widget.features
    widget.extract()
    first = widget.worker
    widget.extract()  # a second click while running
    assert widget.worker is first
    assert not widget.extract_button.isEnabled()
    widget.cancel()
    _wait(qtbot, widget)
    assert widget.features is before
    assert "histosge_features_grid5um" not in widget.sdata.tables
    assert widget.extract_button.isEnabled()


def test_cancel_training_keeps_best_weights(dock, qtbot):
    _, widget = dock
    _load_and_extract(qtbot, widget)
    widget.epochs_spin.setValue(100000)
    widget.train()
    qtbot.waitUntil(lambda: len(widget.loss_plot.train) >= 3, timeout=TIMEOUT)
    widget.cancel()
    _wait(qtbot, widget)
    assert widget.model is not None and widget.model.info["cancelled"]


def test_event_loop_never_stalls(dock, qtbot):
    _, widget = dock
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(20)
    widget.open_sample()
    _wait(qtbot, widget)
    last[0] = time.perf_counter()
    gaps.clear()
    widget.extract()
    _wait(qtbot, widget)
    widget.epochs_spin.setValue(60)
    widget.train()
    _wait(qtbot, widget)
    timer.stop()
    assert widget.model is not None and len(gaps) > 10
    assert max(gaps) < 0.1, f"largest event-loop gap {max(gaps) * 1000:.0f} ms"


def test_closing_during_a_run_stops_the_worker(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = HisToSGEWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.open_sample()
    _wait(qtbot, widget)
    widget.epochs_spin.setValue(100000)
    widget.extract()
    _wait(qtbot, widget)
    widget.train()
    qtbot.waitUntil(lambda: len(widget.loss_plot.train) >= 2, timeout=TIMEOUT)
    worker = widget.worker
    widget.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=TIMEOUT)


def test_screenshot_gene_map_over_tissue(make_napari_viewer, qtbot, tmp_path):
    from PIL import Image

    viewer = make_napari_viewer(show=True)
    widget = HisToSGEWidget(viewer)
    viewer.window.add_dock_widget(widget, name="HisToSGE")
    _load_and_extract(qtbot, widget)
    _train(qtbot, widget, epochs=3)
    widget.predict()
    _wait(qtbot, widget)
    gene = widget.predictions.genes[0]
    widget.select_genes([gene])
    widget.render()
    _wait(qtbot, widget)
    viewer.layers[widget.slide.keys.spots_key].visible = False
    viewer.reset_view()
    path = tmp_path / "gene_map.png"
    shot = viewer.screenshot(path=str(path), canvas_only=True, flash=False)
    assert path.is_file()
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.std() > 5  # not blank
    # Where the map is, the additive overlay brightens the tissue; the map lies inside the image.
    layer = viewer.layers[f"{gene} (HisToSGE)"]
    assert np.isfinite(layer.data).mean() > 0.3
    assert shot.shape[0] > 100
