"""Regenerate the screenshots of docs/user-guide.md from the bundled sample.

    .venv/bin/python docs/make_screenshots.py          # needs a display or Xvfb
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from napari_histosge._widgets._demo import _virtual_display

OUT = Path(__file__).resolve().parent / "images"


def main() -> int:
    xvfb = None if os.environ.get("DISPLAY") else _virtual_display()
    import torch._dynamo  # noqa: F401  - load triton before any GL context exists

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QScrollArea

    from napari_histosge._widgets import HisToSGEWidget

    OUT.mkdir(exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    widget = HisToSGEWidget(viewer)
    viewer.window.add_dock_widget(widget, name="HisToSGE")
    scroll = widget.findChild(QScrollArea)
    state = {"i": 0}

    def shot(name: str, *, dock_only: bool = False, focus=None) -> None:
        if focus is not None:
            scroll.ensureWidgetVisible(focus)
        napari.qt.get_qapp().processEvents()
        if dock_only:
            widget.grab().save(str(OUT / name))
        else:
            viewer.screenshot(path=str(OUT / name), canvas_only=False, flash=False)

    def during_training() -> bool:
        if len(widget.loss_plot.train) >= 40:
            widget.loss_plot.finish()
            shot("dock_training.png", dock_only=True, focus=widget.loss_plot)
            return True
        return False

    def render() -> None:
        widget.select_genes(widget.predictions.top_genes(2, distinct=True))
        widget.render()

    steps = [
        (widget.open_sample, None),
        (lambda: shot("step1_data.png"), None),
        (widget.extract, None),
        (lambda: shot("step2_features.png", focus=widget.extract_button), None),
        (lambda: (widget.epochs_spin.setValue(100), widget.train()), during_training),
        (widget.predict, None),
        (render, None),
        (lambda: shot("gene_map.png", focus=widget.render_button), None),
        (lambda: (widget.export_edit.setText(str(OUT.parent / "_tmp_export.zarr")),
                  widget.overwrite_check.setChecked(True), widget.export()), None),
        (lambda: shot("step5_export.png", focus=widget.export_button), None),
    ]
    pending = {"check": None}
    timer = QTimer()

    def tick() -> None:
        check = pending["check"]
        if check is not None and widget.running is not None:
            if check():
                pending["check"] = None
            return
        if widget.running is not None:
            return
        if state["i"] >= len(steps):
            timer.stop()
            viewer.close()
            return
        action, check = steps[state["i"]]
        action()
        pending["check"] = check
        state["i"] += 1

    timer.timeout.connect(tick)
    timer.start(100)
    napari.run()
    import shutil

    shutil.rmtree(OUT.parent / "_tmp_export.zarr", ignore_errors=True)
    if xvfb is not None:
        xvfb.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
