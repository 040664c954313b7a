"""The HisToSGE dock in a viewer, on the bundled real sample (Visium mouse brain crop)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import spatialdata as sd
from histosge_widget_utils import TIMEOUT_MS, wait_idle

from napari_histosge._widgets import HisToSGEWidget
from napari_histosge.store import EXPRESSION_KEY, PREDICTIONS_KEY


def _train(qtbot, widget, epochs=3):
    widget.train_section.mode_combo.value = "improved"
    widget.train_section.epochs_spin.value = epochs
    widget.train_section.ngenes_spin.value = 200
    assert widget.train()
    wait_idle(qtbot, widget)
    assert widget.session.model is not None, widget.session.last_error


def test_sections_built_from_parts_and_buttons_disabled_until_possible(dock):
    _, widget = dock
    features, train, predict = widget.features_section, widget.train_section, widget.predict_section
    for button in (features.extract_button, train.train_button, predict.render_button):
        assert not button.enabled
        assert button.tooltip
    assert "Open a slide" in features.extract_button.tooltip
    assert "Extract" in train.train_button.tooltip
    assert not widget.cancel_button.isEnabled()
    assert {"improved", "faithful"} <= set(train.mode_combo.choices)
    assert train.lr_spin.native.decimals() >= 6
    train.lr_spin.value = 2.5e-5
    assert train.config()["lr"] == pytest.approx(2.5e-5)
    # The map resolution box keeps fractions of a µm, and 0 means automatic.
    predict.resolution_spin.value = 7.5
    assert predict.pitch_um == 7.5
    predict.resolution_spin.value = 0.0
    assert predict.pitch_um is None
    assert predict.resolution_spin.native.text() == "auto"


def test_open_store_fills_element_choices_and_shows_lazy_layers(dock, qtbot, sample_store):
    import dask.array as da

    viewer, widget = dock
    widget.data_section.path_edit.value = str(sample_store)
    assert widget.data_section.open_path()
    assert not widget.data_section.open_button.enabled  # busy while reading
    wait_idle(qtbot, widget)
    slide = widget.session.slide
    assert slide is not None, widget.session.last_error
    assert widget.data_section.image_combo.value == slide.keys["image_key"]
    assert widget.data_section.table_combo.choices == (slide.keys["table_key"],)
    image = viewer.layers[slide.keys["image_key"]]
    spots = viewer.layers[slide.keys["spots_key"]]
    assert image.rgb
    levels = image.data if image.multiscale else [image.data]
    assert all(isinstance(level, da.Array) for level in levels)  # read lazily from the store
    assert np.ravel(spots.size)[0] == pytest.approx(slide.diameter_px)
    # Show again with the chosen elements: the layers are not duplicated.
    assert widget.data_section.apply_elements()
    wait_idle(qtbot, widget)
    assert len(viewer.layers) == 2


def test_superres_is_the_default_mode_with_a_table_and_needs_no_extract(dock, qtbot):
    _, widget = dock
    train = widget.train_section
    assert widget.open_sample()
    wait_idle(qtbot, widget)
    assert train.mode_combo.value == "superres"
    assert train.train_button.enabled  # no Extract needed
    assert not train.epochs_spin.enabled
    train.mode_combo.value = "improved"
    assert not train.train_button.enabled
    assert "Extract" in train.train_button.tooltip
    assert train.epochs_spin.enabled


def test_use_a_slide_opened_by_another_reader(dock, qtbot):
    viewer, widget = dock
    viewer.open_sample("napari-histosge", "mouse_brain")
    assert widget.data_section.open_from_layers()
    wait_idle(qtbot, widget)
    assert widget.session.slide is not None
    assert len(viewer.layers) == 2  # nothing added twice
    assert widget.features_section.extract_button.enabled


def test_full_workflow_alignment_and_export(extracted, qtbot, tmp_path, monkeypatch):
    viewer, widget = extracted
    session = widget.session
    he = viewer.layers[session.slide.keys["image_key"]]
    # A second extraction reuses the cache and says so.
    assert widget.extract()
    wait_idle(qtbot, widget)
    assert session.features.from_cache
    qtbot.waitUntil(lambda: "reused" in widget.status.text(), timeout=2_000)
    _train(qtbot, widget)
    plot = widget.train_section.loss_plot
    assert len(plot.train) >= 3
    assert len(plot.val) == len(plot.train)
    # Checkpoint round trip.
    assert widget.controller.save_model(tmp_path / "model")
    wait_idle(qtbot, widget)
    assert (tmp_path / "model" / "model.json").is_file(), session.last_error
    trained = session.model
    assert widget.controller.load_model(tmp_path / "model")
    wait_idle(qtbot, widget)
    assert session.model.path == str((tmp_path / "model").resolve())
    assert session.model.n_genes == trained.n_genes

    assert widget.predict()
    wait_idle(qtbot, widget)
    preds = session.predictions
    assert preds is not None, session.last_error
    section = widget.predict_section
    assert section.gene_model.rowCount() == len(preds.genes)
    genes = preds.genes[:2]
    section.select_genes(genes)
    assert section.selected_genes() == genes
    section.resolution_spin.value = 20.0
    section.measured_check.value = True
    assert widget.render()
    wait_idle(qtbot, widget)
    # The maps the core renders from the same predictions, in the test's process (no torch).
    import json

    from napari_histosge.predict import Predictions
    from napari_histosge.workflows.pipeline import Slide, render_maps

    with np.load(preds.path) as z:
        fields = {k: z[k] for k in z.files}
    fields["genes"] = [str(g) for g in fields["genes"]]
    fields["spot_diameter_px"] = float(fields["spot_diameter_px"])
    fields["meta"] = json.loads(str(fields["meta"]))
    fields["gene_info"] = {
        k: np.asarray(v) for k, v in json.loads(str(fields["gene_info"])).items()
    }
    predictions = Predictions(**fields)
    slide = Slide.open(session.slide.source, **session.slide.keys)
    pitch = 20.0 / session.slide.um_per_px
    core = render_maps(slide, predictions=predictions, genes=genes, pitch_px=pitch, smooth=True)
    spot_xy = predictions.positions_px[predictions.kind == "spot"]
    he_ext = he.extent.world
    for gi, gene in enumerate(genes):
        layer = viewer.layers[f"{gene} (HisToSGE)"]
        assert layer.blending == "translucent"
        assert layer.colormap.colors[0][3] == 0.0  # low values leave the H&E as it is
        assert layer.scale[0] == pytest.approx(pitch)
        # Alignment: under each spot centre the layer shows the core map's pixel at that spot.
        for (x, y), (r0, c0) in zip(spot_xy, core.pixel_of(spot_xy), strict=True):
            r, c = np.round(layer.world_to_data((y, x))).astype(int)
            assert (r, c) == (r0, c0)
            assert layer.data[r, c] == pytest.approx(core.data[gi, r0, c0], rel=1e-5, abs=1e-6)
        ext = layer.extent.world
        pad = layer.scale[0]
        assert (ext[0] >= he_ext[0] - pad).all()
        assert (ext[1] <= he_ext[1] + pad).all()
    measured = widget.layer_view.measured_layer
    assert measured is not None
    assert measured.name == f"{genes[0]} (measured)"
    # Choosing another gene re-renders from the kept predictions, reusing the layers.
    shown = set(map(id, widget.layer_view.gene_layers.values()))
    other = preds.genes[2]
    section.select_genes([other])
    qtbot.waitUntil(lambda: f"{other} (HisToSGE)" in viewer.layers, timeout=TIMEOUT_MS)
    wait_idle(qtbot, widget)
    assert f"{genes[1]} (HisToSGE)" not in viewer.layers
    assert id(viewer.layers[f"{other} (HisToSGE)"]) in shown
    assert widget.layer_view.measured_layer.name == f"{other} (measured)"
    section.measured_check.value = False
    wait_idle(qtbot, widget)
    assert widget.layer_view.measured_layer is None

    out = tmp_path / "export.zarr"
    widget.export_section.path = str(out)
    assert widget.export()
    wait_idle(qtbot, widget)
    assert session.last_export == str(out.resolve()), session.last_error
    qtbot.waitUntil(lambda: str(out.resolve()) in widget.status.text(), timeout=2_000)
    back = sd.read_zarr(out)
    assert EXPRESSION_KEY in back
    assert back.tables[PREDICTIONS_KEY].n_vars == len(preds.genes)
    # Exporting again asks first; declining changes nothing.
    asked = []
    monkeypatch.setattr(
        widget.export_section, "confirm_overwrite", lambda what: asked.append(what) or False
    )
    assert not widget.export()
    assert asked
    assert session.running is None
    qtbot.waitUntil(lambda: "skipped" in widget.status.text(), timeout=2_000)
    monkeypatch.setattr(widget.export_section, "confirm_overwrite", lambda what: True)
    assert widget.export()
    wait_idle(qtbot, widget)
    assert session.last_error is None


def test_error_from_core_reaches_user_and_dock_recovers(extracted, qtbot, monkeypatch):
    _, widget = extracted
    shown = []
    monkeypatch.setattr(
        "napari.utils.notifications.show_error", lambda message: shown.append(message)
    )
    before = widget.session.features
    section = widget.features_section
    section.encoder = "timm:test_vit"
    section.weights = "/nonexistent/weights.pth"
    assert widget.extract()
    wait_idle(qtbot, widget)
    assert "weights.pth" in widget.session.last_error
    assert shown
    assert "weights.pth" in shown[0]
    assert widget.session.features is before  # the earlier features are kept
    assert section.extract_button.enabled
    assert widget.train_section.train_button.enabled
    # A bad value in a control is reported before anything starts.
    section.encoder = "histology"
    section.weights = None
    section.patch_edit.value = "1, two"
    assert not widget.extract()
    assert "patch sizes" in widget.session.last_error
    assert widget.session.features is before


def test_cancel_training_returns_control_within_a_second_and_keeps_the_model(extracted, qtbot):
    _, widget = extracted
    _train(qtbot, widget)
    model = widget.session.model
    curve = list(widget.train_section.loss_plot.train)
    widget.train_section.epochs_spin.value = 100000
    assert widget.train()
    assert not widget.train()  # a second click while running starts nothing
    qtbot.waitUntil(
        lambda: len(widget.train_section.loss_plot.train) >= 2,
        timeout=TIMEOUT_MS,
    )
    start = time.perf_counter()
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.cancel_button.isEnabled(), timeout=5_000)
    assert time.perf_counter() - start < 1.0
    assert widget.session.model is model
    assert widget.train_section.loss_plot.train == curve
    qtbot.waitUntil(lambda: "cancelled" in widget.status.text(), timeout=2_000)
    assert widget.predict_section.predict_button.enabled


def test_cancel_extraction_keeps_the_features(extracted, qtbot):
    _, widget = extracted
    before = widget.session.features
    widget.features_section.positions = "grid:5"
    widget.features_section.batch_spin.value = 2
    assert widget.extract()
    qtbot.waitUntil(lambda: widget.progress_bar.value() > 0, timeout=TIMEOUT_MS)
    start = time.perf_counter()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.session.running is None, timeout=5_000)
    assert time.perf_counter() - start < 1.0
    assert widget.session.features is before


def test_a_worker_crash_is_reported_and_napari_stays_up(extracted, qtbot, monkeypatch):
    viewer, widget = extracted
    shown = []
    monkeypatch.setattr(
        "napari.utils.notifications.show_error", lambda message: shown.append(message)
    )
    widget.train_section.mode_combo.value = "improved"
    widget.train_section.epochs_spin.value = 100000
    assert widget.train()
    qtbot.waitUntil(lambda: len(widget.session.losses) >= 1, timeout=TIMEOUT_MS)
    os.kill(widget.controller.runner.pid, signal.SIGSEGV)
    qtbot.waitUntil(lambda: widget.session.running is None, timeout=10_000)
    assert shown
    assert "SIGSEGV" in shown[0]
    assert widget.session.features is not None
    # A fresh worker rebuilds the slide and the features from the store and goes on.
    _train(qtbot, widget)
    assert viewer.layers


def test_closing_the_dock_stops_the_worker(dock, qtbot):
    viewer, widget = dock
    runner = widget.controller.runner
    qtbot.waitUntil(lambda: runner.pid is not None, timeout=10_000)
    process = runner._process
    viewer.window.remove_dock_widget(widget)
    widget.close()
    assert not process.is_alive()


def test_closing_the_viewer_stops_the_worker(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = HisToSGEWidget(viewer)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.controller.runner.pid is not None, timeout=10_000)
    process = widget.controller.runner._process
    viewer.close()
    qtbot.waitUntil(lambda: not process.is_alive(), timeout=10_000)


def test_gene_list_stays_responsive_with_thousands_of_genes(dock):
    _, widget = dock
    section = widget.predict_section
    genes = [f"Gene{i:05d}" for i in range(30000)]
    start = time.perf_counter()
    section.gene_model.setStringList(genes)
    section.gene_filter.setText("gene012")
    filtered = section.gene_proxy.rowCount()
    elapsed = time.perf_counter() - start
    assert filtered == 100
    assert elapsed < 0.5
    section.select_genes(["Gene29999", "Gene00001"])
    assert section.selected_genes() == ["Gene00001", "Gene29999"]
