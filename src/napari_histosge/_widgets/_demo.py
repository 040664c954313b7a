"""``histosge demo``: the whole workflow on the bundled sample, driven through the dock."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_histosge._widgets._display import start_virtual_display

__all__ = ["run_demo"]


def run_demo(out_dir: Path, *, headless: bool = False, genes: list[str] | None = None) -> int:
    """Open napari with the sample, run every step in the dock and show the gene maps.

    Without a display (or with ``headless``) the viewer runs on a virtual display, and the
    exported store and a screenshot are written to ``out_dir``; their paths are printed.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    xvfb = None
    if headless or not os.environ.get("DISPLAY"):
        headless = True
        xvfb = start_virtual_display(99, 130)
        if xvfb is None:
            print(  # noqa: T201
                "histosge demo: no display and no Xvfb; install xvfb (scripts/setup.sh does) "
                "or run `histosge run` for the command-line workflow.",
                file=sys.stderr,
            )
            return 2
    os.environ.pop("QT_QPA_PLATFORM", None)
    import napari

    from ._dock import HisToSGEWidget

    viewer = napari.Viewer(title="napari-histosge demo", show=True)
    widget = HisToSGEWidget(viewer)
    viewer.window.add_dock_widget(widget, name="HisToSGE", area="right")
    store = out_dir / "sample_histosge.zarr"
    screenshot = out_dir / "screenshot.png"
    widget.build_all()
    widget.export_section.path = str(store)
    widget.export_section.overwrite_check.value = True
    widget.predict_section.measured_check.value = False

    def pick_genes() -> None:
        ranked = widget.session.predictions.genes
        chosen = [g for g in (genes or []) if g in ranked]
        widget.predict_section.select_genes(chosen or ranked[:2])
        widget.render()

    steps: list[Callable[[], Any]] = [
        widget.open_sample,
        widget.extract,
        widget.train,
        widget.predict,
        pick_genes,
        widget.export,
    ]
    state = {"step": 0, "rc": 0}

    from qtpy.QtCore import QTimer

    timer = QTimer()

    def finish() -> None:
        timer.stop()
        for layer in viewer.layers:
            if layer.name.endswith("_spots"):
                layer.visible = False
        viewer.reset_view()
        viewer.screenshot(path=str(screenshot), canvas_only=False, flash=False)
        print(f"histosge demo: exported store {store}")  # noqa: T201
        print(f"histosge demo: screenshot {screenshot}")  # noqa: T201
        if headless:
            viewer.close()

    def advance() -> None:
        if widget.busy:
            return
        if widget.session.last_error:
            message = widget.session.last_error
            print(f"histosge demo: error: {message}", file=sys.stderr)  # noqa: T201
            state["rc"] = 1
            timer.stop()
            if headless:
                viewer.close()
            return
        if state["step"] >= len(steps):
            finish()
            return
        steps[state["step"]]()
        state["step"] += 1

    timer.timeout.connect(advance)
    timer.start(200)
    napari.run()
    if xvfb is not None:
        xvfb.terminate()
    return int(state["rc"])
