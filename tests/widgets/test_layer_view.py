"""The dock's layer changes: one per turn, napari's parts of an insertion on turns of their own."""

from __future__ import annotations

import numpy as np


def _hidden_image(name: str):
    from napari.layers import Image

    return Image(np.zeros((8, 8), np.float32), name=name, visible=False)


def test_layer_changes_run_one_per_turn_in_order(dock, qtbot):
    _, widget = dock
    view = widget.layer_view
    ran: list[int] = []
    view.queue(lambda: ran.append(1), lambda: ran.append(2))
    assert view.pending == 2
    assert ran == []
    qtbot.waitUntil(lambda: view.pending == 0, timeout=2_000)
    assert ran == [1, 2]


def test_a_layer_is_inserted_hidden_then_shown(dock, qtbot):
    viewer, widget = dock
    view = widget.layer_view
    layer = _hidden_image("map")
    view.add_next(layer, lambda: True)
    qtbot.waitUntil(lambda: view.pending == 0, timeout=2_000)
    assert layer in viewer.layers
    assert layer.visible


def test_a_layer_removed_before_its_parts_are_built(dock, qtbot):
    # napari's removal of a layer expects its visuals and controls; the viewer closing right
    # after a map appeared raised a KeyError in napari's controls.
    viewer, widget = dock
    view = widget.layer_view
    layer = _hidden_image("early")
    view._insert(layer, lambda: True)  # its parts are queued
    assert layer in viewer.layers
    viewer.layers.remove(layer)
    assert layer not in viewer.layers
    view.queue(lambda: None)
    qtbot.waitUntil(lambda: view.pending == 0, timeout=2_000)
    # Closing the view builds the parts of the layers it inserted; they can be removed later.
    other = _hidden_image("late")
    view._insert(other, lambda: True)
    view.close()
    viewer.layers.remove(other)
    assert len(viewer.layers) == 0
