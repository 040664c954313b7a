"""Regenerate the user guide's screenshots from the bundled sample.

Run from the repository root under a display, for example::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/images/make_screenshots.py
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch._dynamo  # noqa: F401  - load triton before any GL context exists

# isort: split
import napari
from PIL import Image
from qtpy.QtWidgets import QApplication

from napari_histosge._widgets import HisToSGEWidget

HERE = Path(__file__).resolve().parent
WIDTH = 1100


def wait_until(condition: Callable[[], bool], timeout: float = 300.0) -> None:
    """Process Qt events until ``condition`` holds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("step did not finish in time")
        QApplication.processEvents()
        time.sleep(0.02)


def idle(widget: HisToSGEWidget) -> None:
    """Wait for the running step, failing on errors."""
    wait_until(lambda: widget.running is None)
    if widget.last_error:
        raise RuntimeError(widget.last_error)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)


def save(viewer: napari.Viewer, name: str) -> None:
    """Screenshot the whole window, scaled to ``WIDTH`` pixels."""
    shot = viewer.screenshot(canvas_only=False, flash=False)
    img = Image.fromarray(shot[..., :3])
    img = img.resize((WIDTH, round(img.height * WIDTH / img.width)), Image.LANCZOS)
    img.save(HERE / name, optimize=True)


def main() -> None:
    """Run every step of the dock on the sample and save a screenshot after each."""
    viewer = napari.Viewer(title="napari-histosge", show=True)
    viewer.window._qt_window.resize(1500, 950)
    widget = HisToSGEWidget(viewer)
    viewer.window.add_dock_widget(widget, name="HisToSGE", area="right")
    widget.setMinimumWidth(420)

    widget.open_sample()
    idle(widget)
    viewer.reset_view()
    save(viewer, "step1_data.png")

    widget.extract()
    idle(widget)
    widget.scroll_area.ensureWidgetVisible(widget.features_box)
    save(viewer, "step2_features.png")

    widget.epochs_spin.setValue(60)
    widget.train()
    widget.scroll_area.ensureWidgetVisible(widget.loss_plot)
    wait_until(lambda: len(widget.loss_plot.train) >= 40 or widget.running is None)
    save(viewer, "step3_training.png")
    widget.grab().save(str(HERE / "dock_training.png"))
    idle(widget)

    widget.predict()
    idle(widget)
    spots = viewer.layers[widget.slide.keys.spots_key]
    spots.visible = False
    widget.select_genes(widget.predictions.top_genes(2, distinct=True))
    widget.render()
    idle(widget)
    widget.scroll_area.ensureWidgetVisible(widget.predict_box)
    save(viewer, "gene_map.png")

    gene = "Nrgn" if "Nrgn" in widget.predictions.genes else widget.predictions.top_genes(1)[0]
    widget.select_genes([gene])
    widget.render()
    idle(widget)
    save(viewer, "step4_gene_map.png")

    widget.measured_check.setChecked(True)
    idle(widget)
    save(viewer, "step4_measured.png")

    out = Path(tempfile.gettempdir()) / "mouse_brain_histosge.zarr"
    shutil.rmtree(out, ignore_errors=True)
    widget.export_edit.setText(str(out))
    widget.export()
    idle(widget)
    widget.scroll_area.ensureWidgetVisible(widget.export_box)
    save(viewer, "step5_export.png")
    shutil.rmtree(out, ignore_errors=True)
    viewer.close()


if __name__ == "__main__":
    main()
