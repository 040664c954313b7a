"""A shown viewer renders a gene map over the tissue, where the spots are."""

from __future__ import annotations

import numpy as np
from histosge_widget_utils import wait_idle
from PIL import Image

from napari_histosge._widgets import HisToSGEWidget


def _screen_to_world(viewer, shape):
    """World (y, x) of every pixel of a canvas screenshot of ``shape``."""
    h, w = shape[:2]
    zoom = viewer.camera.zoom
    cy, cx = viewer.camera.center[-2:]
    rows, cols = np.mgrid[0:h, 0:w]
    return cy + (rows + 0.5 - h / 2) / zoom, cx + (cols + 0.5 - w / 2) / zoom


def test_screenshot_gene_map_over_tissue(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    widget = HisToSGEWidget(viewer)
    viewer.window.add_dock_widget(widget, name="HisToSGE")
    for step in (widget.open_sample, widget.extract):
        assert step()
        wait_idle(qtbot, widget)
    widget.train_section.mode_combo.value = "improved"
    widget.train_section.epochs_spin.value = 5
    widget.train_section.ngenes_spin.value = 200
    for step in (widget.train, widget.predict):
        assert step()
        wait_idle(qtbot, widget)
    gene = widget.session.predictions.genes[0]
    widget.predict_section.select_genes([gene])
    assert widget.render()
    wait_idle(qtbot, widget)
    layer = viewer.layers[f"{gene} (HisToSGE)"]
    viewer.layers[widget.session.slide.keys["spots_key"]].visible = False
    viewer.reset_view()

    layer.visible = False
    tissue = viewer.screenshot(canvas_only=True, flash=False).astype(int)
    layer.visible = True
    path = tmp_path / "gene_map.png"
    shot = viewer.screenshot(path=str(path), canvas_only=True, flash=False).astype(int)
    assert path.is_file()
    png = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert png.shape[:2] == shot.shape[:2]
    assert png.std() > 10  # not blank

    # Pixels the overlay changed, and where they lie in the H&E's pixel frame.
    changed = np.abs(shot[..., :3] - tissue[..., :3]).sum(-1) > 30
    assert changed.mean() > 0.02
    wy, wx = _screen_to_world(viewer, shot.shape)
    centres = np.load(widget.session.slide.centers)  # (x, y)
    diameter = widget.session.slide.diameter_px
    ys, xs = wy[changed], wx[changed]
    step = max(1, len(ys) // 4000)
    ys, xs = ys[::step], xs[::step]
    dist = np.sqrt(
        (xs[:, None] - centres[None, :, 0]) ** 2 + (ys[:, None] - centres[None, :, 1]) ** 2
    ).min(axis=1)
    # The coloured pixels lie on the measured tissue (within about a spot of a spot centre).
    assert (dist < 1.5 * diameter).mean() > 0.97
    # And the tissue under the spots is coloured: most spot centres show the overlay.
    h, w = changed.shape
    zoom = viewer.camera.zoom
    cy, cx = viewer.camera.center[-2:]
    rows = np.round((centres[:, 1] - cy) * zoom + h / 2 - 0.5).astype(int)
    cols = np.round((centres[:, 0] - cx) * zoom + w / 2 - 0.5).astype(int)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    assert inside.mean() > 0.9
    assert changed[rows[inside], cols[inside]].mean() > 0.6
