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

import napari
from PIL import Image
from qtpy.QtWidgets import QApplication

from napari_histosge._widgets._dock import HisToSGEWidget

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
    """Wait for the running step and its layers, failing on errors."""
    wait_until(lambda: not widget.busy)
    if widget.session.last_error:
        raise RuntimeError(widget.session.last_error)
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
    _, widget = viewer.window.add_plugin_dock_widget("napari-histosge", "HisToSGE")
    widget.setMinimumWidth(420)
    widget.build_all()

    widget.open_sample()
    idle(widget)
    viewer.reset_view()
    save(viewer, "step1_data.png")

    widget.extract()
    idle(widget)
    widget.scroll_area.ensureWidgetVisible(widget.features_section)
    save(viewer, "step2_features.png")

    # The loss curve of a trained model (improved), then the default super-resolution model.
    widget.train_section.mode_combo.value = "improved"
    widget.train_section.epochs_spin.value = 60
    widget.train()
    widget.scroll_area.ensureWidgetVisible(widget.train_section.loss_plot)
    wait_until(lambda: len(widget.train_section.loss_plot.train) >= 40 or not widget.busy)
    save(viewer, "step3_training.png")
    widget.grab().save(str(HERE / "dock_training.png"))
    idle(widget)

    section = widget.predict_section
    section.resolution_spin.value = 10.0
    widget.train_section.mode_combo.value = "superres"
    widget.train()
    idle(widget)
    widget.scroll_area.ensureWidgetVisible(widget.train_section.train_button.native)
    widget.grab().save(str(HERE / "dock_superres.png"))

    widget.predict()
    idle(widget)
    spots = viewer.layers[widget.session.slide.keys["spots_key"]]
    spots.visible = False
    section.select_genes(distinct_genes(widget.session.predictions.path, 2))
    widget.render()
    idle(widget)
    widget.scroll_area.ensureWidgetVisible(section)
    save(viewer, "gene_map.png")

    ranked = widget.session.predictions.genes
    section.select_genes(["Nrgn" if "Nrgn" in ranked else ranked[0]])
    widget.render()
    idle(widget)
    save(viewer, "step4_gene_map.png")

    section.measured_check.value = True
    idle(widget)
    save(viewer, "step4_measured.png")
    section.measured_check.value = False

    # How far to trust the map: its standard deviation next to it, the units as outlines, the
    # genes by reliability; then the tissue domains.
    section.sd_check.value = True
    section.units_check.value = True
    section.sort_check.value = True
    idle(widget)
    viewer.reset_view()
    widget.scroll_area.ensureWidgetVisible(section.legend)
    idle(widget)
    save(viewer, "step4_uncertainty.png")
    section.sd_check.value = False
    section.units_check.value = False
    widget.domains_section.find()
    idle(widget)
    viewer.reset_view()
    widget.scroll_area.ensureWidgetVisible(widget.domains_section)
    idle(widget)
    save(viewer, "step5_domains.png")
    viewer.layers["domains (HisToSGE)"].visible = False

    out = Path(tempfile.gettempdir()) / "mouse_brain_histosge.zarr"
    shutil.rmtree(out, ignore_errors=True)
    widget.export_section.path = str(out)
    widget.export()
    idle(widget)
    widget.scroll_area.ensureWidgetVisible(widget.export_section)
    save(viewer, "step6_export.png")
    shutil.rmtree(out, ignore_errors=True)
    viewer.close()


def distinct_genes(path: str, n: int) -> list[str]:
    """Pick the most variable predicted genes whose patterns differ."""
    import numpy as np

    from napari_histosge.predict import Predictions

    with np.load(path) as z:
        preds = Predictions(
            [str(g) for g in z["genes"]], z["positions_px"], z["values"], z["kind"], z["ids"], 1.0
        )
    return preds.top_genes(n, distinct=True)


if __name__ == "__main__":
    main()
