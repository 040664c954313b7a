"""Cells in the dock: nuclei segmented in the worker, cells coloured by a gene, a cell's values.

The worker test drives the controller without a viewer on the bundled sample (fitted at a
coarse resolution, as in ``test_trust.py``); the dock test clicks Segment cells.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from histosge_widget_utils import wait_idle, worker_steps


def labels_shape(cells) -> tuple[int, ...]:
    return np.load(cells.labels, mmap_mode="r").shape


def _world_to_map(maps, yx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rc = np.round((yx - np.asarray(maps.translate)) / np.asarray(maps.scale)).astype(int)
    return rc[:, 0], rc[:, 1]


def _check_exported_cells(out, cells, values: np.ndarray) -> None:
    """The store holds `histosge_nuclei` and `histosge_cells` with the dock's cells and values."""
    import spatialdata as sd
    from spatialdata.models import get_table_keys
    from spatialdata.transformations import get_transformation

    store = sd.read_zarr(out)
    labels = store.labels["histosge_nuclei"]
    table = store.tables["histosge_cells"]
    region, _, instance_key = get_table_keys(table)
    assert region == "histosge_nuclei"
    image = next(k for k in store.images if not k.startswith("histosge_"))
    image_cs = set(get_transformation(store.images[image], get_all=True))
    assert set(get_transformation(labels, get_all=True)) >= image_cs
    ids = np.unique(np.asarray(labels["scale0"]["image"].data.compute()))
    assert np.array_equal(np.sort(table.obs[instance_key].to_numpy()), ids[ids > 0])
    assert table.n_obs == cells.n_cells
    assert list(table.var_names) == list(cells.genes)
    np.testing.assert_allclose(np.asarray(table.X), values, rtol=1e-5, atol=1e-6)
    maps = store.images["histosge_expression"]
    maps = maps["scale0"]["image"] if "scale0" in getattr(maps, "children", {}) else maps
    assert {str(c) for c in maps.c.values} <= set(table.var_names)


def test_worker_segments_cells_and_averages_the_maps_over_them(tmp_path):
    from napari_histosge._widgets._controller import Controller
    from napari_histosge._widgets._worker_process import Runner

    c = Controller(runner=Runner(tmp_path / "session"))
    s = c.session

    run = worker_steps(c)

    try:
        run(c.open_sample())
        assert "super-resolution" in s.why_not("cells") or "Predict" in s.why_not("cells")
        run(c.train({"mode": "superres", "seed": 0}, 60, options={}, resolution_um=20.0))
        run(c.predict())
        genes = s.predictions.genes[:2]
        run(c.render(genes, 20.0))
        maps = s.maps
        # Export before any segmentation: no cells in the store.
        run(c.export(tmp_path / "before.zarr", overwrite=False, pitch_um=20.0))
        assert not (tmp_path / "before.zarr" / "labels" / "histosge_nuclei").exists()
        assert " cells;" not in s.status
        statuses: list[str] = []
        s.status_changed.connect(statuses.append)
        run(c.cells(genes[0], 20.0))
        assert [m for m in statuses if "tile " in m], statuses  # segmented here
        statuses.clear()
        cells = s.cells
        labels, values = np.load(cells.labels), np.load(cells.values)
        assert cells.gene == genes[0]
        assert values.shape == (cells.n_cells, len(cells.genes))
        assert set(genes) <= set(cells.genes)
        assert cells.n_cells > 100
        # The ids shown are the rows of the per-cell table (1..n); downsampling to the shown
        # grid may drop a few of the smallest nuclei, no more.
        ids = np.unique(labels[labels > 0])
        assert ids.min() >= 1
        assert ids.max() <= cells.n_cells
        assert len(ids) >= 0.95 * cells.n_cells
        # The colours are each cell's value of the gene, NaN off the cells.
        colour = np.load(cells.colour[0])[0]
        g = cells.genes.index(genes[0])
        assert colour.shape == labels.shape
        assert np.isnan(colour[labels == 0]).all()
        np.testing.assert_array_equal(colour[labels > 0], values[labels[labels > 0] - 1, g])
        lo, hi = cells.limits
        assert lo < hi
        # Each cell's value is the map averaged over the cell: against the map read at the
        # cell's nucleus pixels (the footprint adds a 3 µm rim, so not to the last digit).
        rows, cols = np.nonzero(labels)
        yx = np.column_stack([rows, cols]) * np.asarray(cells.scale) + cells.translate
        mr, mc = _world_to_map(maps, yx)
        plane = np.load(maps.path)[0]
        ok = (mr >= 0) & (mr < plane.shape[0]) & (mc >= 0) & (mc < plane.shape[1])
        ids_px, read = labels[rows[ok], cols[ok]], plane[mr[ok], mc[ok]]
        finite = np.isfinite(read)
        sums = np.bincount(ids_px[finite], read[finite], minlength=cells.n_cells + 1)
        counts = np.bincount(ids_px[finite], minlength=cells.n_cells + 1)
        seen = counts[1:] > 0
        from_map = sums[1:][seen] / counts[1:][seen]
        own = values[seen, g]
        assert np.corrcoef(from_map, own)[0, 1] > 0.95
        assert np.median(np.abs(from_map - own)) < 0.05 * (hi - lo)
        # Another gene recolours from the saved values, on the same ids.
        run(c.colour_cells(genes[1]))
        assert s.cells.labels == cells.labels
        assert s.cells.gene == genes[1]
        again = np.load(s.cells.colour[0])[0]
        g1 = cells.genes.index(genes[1])
        np.testing.assert_array_equal(again[labels > 0], values[labels[labels > 0] - 1, g1])
        # Export writes the cells segmented, as `histosge run --cells` does, without
        # segmenting again.
        statuses.clear()
        run(c.export(tmp_path / "out.zarr", overwrite=False, pitch_um=20.0))
        s.status_changed.disconnect(statuses.append)
        assert f"with {cells.n_cells} cells" in s.status
        assert not [m for m in statuses if "tile " in m], statuses
        _check_exported_cells(tmp_path / "out.zarr", cells, values)
        # A new fit forgets the cells.
        run(c.train({"mode": "superres", "seed": 1}, 60, options={}, resolution_um=20.0))
        assert s.cells is None
    finally:
        c.close()


def test_segment_cells_button_shows_the_cells_and_their_values(dock, qtbot, tmp_path):
    from qtpy.QtCore import QElapsedTimer, QTimer

    viewer, widget = dock
    session, section = widget.session, widget.cells_section
    titles = [s.title() for s in widget.sections]
    assert titles[4:] == ["5. Domains", "6. Cells", "7. Export"]
    assert not section.segment_button.enabled
    assert widget.open_sample()
    wait_idle(qtbot, widget)
    widget.predict_section.resolution_spin.value = 20.0
    widget.train_section.ngenes_spin.value = 60
    assert widget.train()
    wait_idle(qtbot, widget, timeout=600_000)
    assert widget.predict()
    wait_idle(qtbot, widget, timeout=600_000)
    genes = session.predictions.genes[:2]
    other = session.predictions.genes[1:3]
    widget.predict_section.select_genes(genes)
    assert widget.render()
    wait_idle(qtbot, widget, timeout=600_000)
    assert section.segment_button.enabled, section.segment_button.tooltip

    # The event loop's longest turn from the click until the cells are shown.
    gaps: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.elapsed()]

    def tick() -> None:
        now = clock.elapsed()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    section.segment_button.native.click()
    assert session.running is not None, session.status
    timer.start()
    qtbot.waitUntil(lambda: session.running is None, timeout=600_000)
    wait_idle(qtbot, widget, timeout=60_000)
    qtbot.wait(300)
    timer.stop()
    assert session.last_error is None, session.last_error
    cells = session.cells
    assert cells is not None
    assert cells.gene == genes[0]
    layer = widget.layer_view.trust.cells_layer
    assert layer is not None
    assert layer in viewer.layers
    assert layer.visible
    assert layer.metadata["name"] == "histosge_cells"
    assert tuple(layer.scale) == pytest.approx(cells.scale)
    assert f"{cells.n_cells} cells" in section.info_label.text()
    print(f"longest turns from the click to the layer shown: {sorted(gaps)[-5:]} ms")
    print(f"cells: {cells.n_cells}, shown grid {labels_shape(cells)}")
    assert max(gaps) < 100

    # The readout names the cell under the mouse and its values of the genes shown.
    labels, values = np.load(cells.labels), np.load(cells.values)
    r, c = np.argwhere(labels > 0)[len(np.argwhere(labels > 0)) // 2]
    cell = int(labels[r, c])
    yx = (cells.translate[0] + r * cells.scale[0], cells.translate[1] + c * cells.scale[1])
    t0 = time.perf_counter()
    text = widget.predict_section.readout.read(yx)
    read_ms = 1000 * (time.perf_counter() - t0)
    g = cells.genes.index(genes[0])
    assert f"cell {cell}: {genes[0]} {values[cell - 1, g]:.2f}" in text
    assert read_ms < 20

    # Other genes shown: the cells are recoloured by the first one (two genes again, so that
    # no map layer is removed: napari's removal of a layer is a long turn of its own).
    widget.predict_section.select_genes(other)
    gaps.clear()
    last[0] = clock.elapsed()
    timer.start()
    assert widget.render()
    qtbot.waitUntil(lambda: session.cells.gene == other[0], timeout=120_000)
    wait_idle(qtbot, widget)
    qtbot.wait(300)
    timer.stop()
    print(f"longest turns from Render to the cells recoloured: {sorted(gaps)[-5:]} ms")
    assert max(gaps) < 100
    assert layer.metadata["gene"] == other[0]
    assert layer.name == f"cells: {other[0]} (HisToSGE)"
    assert widget.layer_view.trust.cells_layer is layer

    # Export writes the cells too, in the worker: the event loop stays free meanwhile.
    out = tmp_path / "export.zarr"
    widget.export_section.path = str(out)
    gaps.clear()
    last[0] = clock.elapsed()
    timer.start()
    widget.export_section.export_button.native.click()
    assert session.running is not None, session.status
    qtbot.waitUntil(lambda: session.running is None, timeout=600_000)
    timer.stop()
    assert session.last_error is None, session.last_error
    print(f"longest turns during the export: {sorted(gaps)[-5:]} ms")
    # The export takes seconds; no turn comes near (it adds no layer, so the bound is loose).
    assert max(gaps) < 250
    assert f"with {cells.n_cells} cells" in session.status
    qtbot.waitUntil(lambda: f"with {cells.n_cells} cells" in widget.status.text(), timeout=2_000)
    _check_exported_cells(out, cells, values)
