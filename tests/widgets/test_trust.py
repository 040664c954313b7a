"""How far to trust the maps, in the dock: reliability in the gene list, the maps' standard
deviations next to them, value ± sd under the mouse, unit outlines and tissue domains.

The layers are driven from session records over small ``.npy`` files, as the worker writes
them, so these tests need no model.
"""

from __future__ import annotations

import numpy as np
import pytest
from histosge_widget_utils import wait_idle
from qtpy.QtCore import Qt

from napari_histosge._widgets._session import (
    DomainsInfo,
    MapsInfo,
    PredictionsInfo,
    SlideInfo,
)
from napari_histosge._widgets._trust_layers import DOMAINS_NAME, UNITS_NAME, sd_translate


def _maps(tmp_path, genes=("A", "B"), shape=(20, 30)) -> MapsInfo:
    values = np.full((len(genes), *shape), np.nan, dtype=np.float32)
    values[:, 2:18, 3:27] = np.arange(len(genes), dtype=np.float32)[:, None, None] + 1.0
    sd = np.where(np.isfinite(values), 0.5, np.nan).astype(np.float32)
    np.save(tmp_path / "maps.npy", values)
    np.save(tmp_path / "sd.npy", sd)
    return MapsInfo(
        path=str(tmp_path / "maps.npy"),
        genes=list(genes),
        scale=(4.0, 4.0),
        translate=(10.0, 20.0),
        limits=[(0.0, 3.0)] * len(genes),
        pitch_um=8.0,
        levels=[str(tmp_path / "maps.npy")],
        sd_levels=[str(tmp_path / "sd.npy")],
        sd_limits=[(0.0, 1.0)] * len(genes),
        shape=shape,
    )


def _slide(tmp_path, n=5) -> SlideInfo:
    centers = np.column_stack([np.linspace(40, 100, n), np.linspace(30, 70, n)])  # (x, y)
    np.save(tmp_path / "centers.npy", centers)
    return SlideInfo(
        source=str(tmp_path / "store.zarr"),
        label="test",
        keys={"image_key": "he", "spots_key": "spots", "table_key": "table"},
        elements={},
        n_spots=n,
        n_genes=2,
        lattice="hexagonal",
        diameter_px=10.0,
        um_per_px=2.0,
        centers=str(tmp_path / "centers.npy"),
    )


def test_gene_list_shows_reliability_and_sorts_by_it(dock):
    _, widget = dock
    section = widget.predict_section
    assert not section.sort_check.enabled  # nothing to sort by yet
    reliability = {"Gfap": (0.12, 0.3), "Mbp": (0.81, 0.6), "Nrgn": (-0.2, 0.1)}
    preds = PredictionsInfo("p.npz", ["Gfap", "Mbp", "Nrgn", "Xist"], 10, reliability)
    widget.session.set_predictions(preds)
    model = section.gene_model
    assert model.stringList() == ["Gfap", "Mbp", "Nrgn", "Xist"]
    assert model.data(model.index(1, 0)) == "Mbp   r² 0.81"
    assert model.data(model.index(3, 0)) == "Xist"  # no score for this gene
    assert "R²" in model.data(model.index(0, 0), Qt.ItemDataRole.ToolTipRole)
    assert section.sort_check.enabled
    section.select_genes(["Nrgn"])
    section.render_timer.start()  # as if maps of Nrgn were shown
    section.sort_check.value = True
    assert not section.render_timer.isActive()  # reordering renders nothing
    assert model.stringList() == ["Mbp", "Gfap", "Nrgn", "Xist"]
    assert section.selected_genes() == ["Nrgn"]  # the selection follows the genes
    # The search box matches gene names, not the scores.
    section.gene_filter.setText("0.8")
    assert section.gene_proxy.rowCount() == 0
    section.gene_filter.setText("mb")
    assert section.gene_proxy.rowCount() == 1
    section.gene_filter.clear()
    section.sort_check.value = False
    assert model.stringList() == ["Gfap", "Mbp", "Nrgn", "Xist"]


def test_sorting_thousands_of_genes_by_reliability_is_quick(dock):
    import time

    _, widget = dock
    section = widget.predict_section
    genes = [f"Gene{i:05d}" for i in range(30000)]
    scores = np.random.default_rng(0).uniform(-0.5, 0.9, len(genes))
    reliability = {g: (float(r), 0.5) for g, r in zip(genes, scores, strict=True)}
    start = time.perf_counter()
    widget.session.set_predictions(PredictionsInfo("p.npz", genes, 10, reliability))
    section.select_genes(["Gene00007"])
    section.sort_check.value = True
    elapsed = time.perf_counter() - start
    shown = section.gene_model.stringList()
    assert shown[0] == genes[int(np.argmax(scores))]
    assert section.selected_genes() == ["Gene00007"]
    assert elapsed < 0.5


def test_sd_maps_next_to_the_maps_readout_outlines_and_domains(dock, qtbot, tmp_path):
    viewer, widget = dock
    session, section = widget.session, widget.predict_section
    session.set_slide(_slide(tmp_path))
    maps = _maps(tmp_path)
    session.set_maps(maps)
    wait_idle(qtbot, widget)
    shown = [viewer.layers[f"{g} (HisToSGE)"] for g in maps.genes]
    assert all(layer.blending == "translucent" for layer in shown)
    legend = section.legend  # the colour bars, with the limits and the units
    assert [row[0] for row in legend.rows] == maps.genes
    assert legend.rows[0][2:4] == maps.limits[0]
    assert legend.units == "log1p normalised counts"
    assert legend.height() > 0
    assert not widget.layer_view.trust.sd_layers  # off until asked

    section.sd_check.value = True
    wait_idle(qtbot, widget)
    sd_layers = [viewer.layers[f"{g} sd (HisToSGE)"] for g in maps.genes]
    assert [row[0] for row in legend.rows] == ["A", "B", "A sd", "B sd"]
    for slot, layer in enumerate(sd_layers):
        assert layer.metadata["name"] == "histosge_uncertainty"
        assert tuple(layer.translate) == pytest.approx(sd_translate(maps, slot))
        # Next to the map, not over it.
        assert layer.extent.world[0][1] > shown[0].extent.world[1][1]

    # Value ± sd under the mouse: over the maps every gene, over a gene's sd map that gene.
    readout = section.readout
    y, x = 10.0 + 4.0 * 5, 20.0 + 4.0 * 6  # map pixel (5, 6)
    assert readout.read((y, x)) == "A 1.00 ± 0.50, B 2.00 ± 0.50 (log1p normalised counts)"
    dy, dx = sd_translate(maps, 1)
    assert readout.read((dy + 4.0 * 5, dx + 4.0 * 6)).startswith("B 2.00 ± 0.50")
    assert readout.read((y, 20.0)) == ""  # off tissue (NaN)
    assert readout.read((-500.0, x)) == ""  # off the map

    section.units_check.value = True
    wait_idle(qtbot, widget)
    units = viewer.layers[UNITS_NAME]
    assert len(units.data) == 5 * 3  # over the maps and over each sd map
    assert viewer.layers.index(units) == len(viewer.layers) - 1  # on top
    # Turned off, layers are hidden (napari's removal of a layer is a long turn), and reused.
    section.sd_check.value = False
    wait_idle(qtbot, widget)
    assert not any(layer.visible for layer in sd_layers)
    assert len(viewer.layers[UNITS_NAME].data) == 5
    section.units_check.value = False
    wait_idle(qtbot, widget)
    assert not units.visible
    section.sd_check.value = True
    section.units_check.value = True
    wait_idle(qtbot, widget)
    assert all(layer.visible for layer in sd_layers)
    assert units.visible
    assert viewer.layers[UNITS_NAME] is units
    assert len(units.data) == 5 * 3
    # Other genes refill the same layers.
    session.set_maps(_maps(tmp_path, genes=("C",)))
    wait_idle(qtbot, widget)
    assert viewer.layers["C sd (HisToSGE)"] is sd_layers[0]
    assert "B sd (HisToSGE)" not in viewer.layers
    assert len(units.data) == 5 * 2
    # Hidden, then other maps: the stale sd layers go.
    section.sd_check.value = False
    wait_idle(qtbot, widget)
    session.set_maps(_maps(tmp_path, genes=("D",)))
    wait_idle(qtbot, widget)
    assert "C sd (HisToSGE)" not in viewer.layers
    assert len(units.data) == 5

    labels = np.zeros(maps.shape, dtype=np.int32)
    labels[2:18, 3:15], labels[2:18, 15:27] = 1, 2
    np.save(tmp_path / "domains.npy", labels)
    top = {1: ["Gfap", "Aqp4"], 2: ["Mbp"]}
    path = str(tmp_path / "domains.npy")
    session.set_domains(DomainsInfo(path, 2, maps.scale, maps.translate, top))  # same grid
    wait_idle(qtbot, widget)
    layer = viewer.layers[DOMAINS_NAME]
    assert tuple(layer.translate) == pytest.approx(maps.translate)
    assert layer.metadata["name"] == "histosge_domains"
    text = section.readout.read((y, x))  # map pixel (5, 6): domain 1
    assert text == "D 1.00 ± 0.50 (log1p normalised counts); domain 1"  # maps of gene D now
    low, high = layer.contrast_limits
    cmap = layer.colormap
    assert cmap.map([(0 - low) / (high - low)])[0][3] == 0  # off tissue: transparent
    assert cmap.map([(2 - low) / (high - low)])[0][3] == 1
    text = widget.domains_section.top_label.text()
    assert "1: Gfap, Aqp4" in text
    assert "2: Mbp" in text
    session.set_domains(None)
    wait_idle(qtbot, widget)
    assert not layer.visible


def test_domains_need_the_super_resolution_model(dock):
    _, widget = dock
    session = widget.session
    session.set_predictions(PredictionsInfo("p.npz", ["A"], 3))
    assert "Predict first" not in session.why_not("domains")
    assert "super-resolution" in session.why_not("domains")
    assert not widget.domains_section.find_button.enabled
    assert widget.domains_section.k_spin.value == 6


def test_worker_gives_reliability_sd_maps_and_domains_of_the_superres_fit(tmp_path):
    """The worker's side, on the bundled sample: no viewer, the controller drives the runner."""
    from histosge_widget_utils import worker_steps

    from napari_histosge._widgets._controller import Controller
    from napari_histosge._widgets._worker_process import Runner

    c = Controller(runner=Runner(tmp_path / "session"))
    s = c.session

    run = worker_steps(c)

    try:
        run(c.open_sample())
        run(c.train({"mode": "superres", "seed": 0}, 60, options={}, resolution_um=20.0))
        run(c.predict())
        reliability = s.predictions.reliability
        assert set(reliability) == set(s.predictions.genes)
        assert all(0.0 <= share <= 1.0 for _, share in reliability.values())
        genes = s.predictions.genes[:2]
        run(c.render(genes, 20.0))
        maps = s.maps
        values, sd = np.load(maps.path), np.load(maps.sd_levels[0])
        assert sd.shape == values.shape
        assert maps.shape == values.shape[1:]
        assert (sd[np.isfinite(values)] >= 0).all()
        assert all(lo == 0.0 < hi for lo, hi in maps.sd_limits)
        run(c.domains(4))
        labels = np.load(s.domains.path)
        assert labels.shape == values.shape[1:]
        assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
        assert len(set(np.unique(labels)) - {0}) == 4
        assert s.domains.scale == maps.scale
        assert s.domains.translate == pytest.approx(maps.translate)
        assert all(s.domains.top_genes[d] for d in range(1, 5))
        # The export holds the maps' uncertainty and the domains shown (same number and seed).
        import spatialdata as sd_io

        from napari_histosge.store import DOMAINS_KEY, UNCERTAINTY_KEY

        out = tmp_path / "out.zarr"
        run(c.export(out, overwrite=False, pitch_um=20.0))
        back = sd_io.read_zarr(out)
        assert UNCERTAINTY_KEY in back.images
        exported = back.labels[DOMAINS_KEY]
        level = exported["scale0"]["image"] if hasattr(exported, "keys") else exported
        np.testing.assert_array_equal(np.asarray(level), labels)
        # At another map resolution, the domains lie on that resolution's grid.
        run(c.render(genes[:1], 40.0))
        run(c.domains(3, 0, 40.0))
        assert np.load(s.domains.path).shape == s.maps.shape
        assert s.domains.scale == s.maps.scale
    finally:
        c.close()


def test_closing_the_dock_stops_the_mouse_readout(dock):
    viewer, widget = dock
    readout = widget.predict_section.readout
    assert readout.on_move in viewer.mouse_move_callbacks
    viewer.window.remove_dock_widget(widget)
    widget.close()
    widget.deleteLater()
    from qtpy.QtCore import QEvent
    from qtpy.QtWidgets import QApplication

    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert readout.on_move not in viewer.mouse_move_callbacks
