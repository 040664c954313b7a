"""Widget tests run in a real (virtual) X display.

napari's image layers need OpenGL, which Qt's ``offscreen`` platform does not provide here. When
``DISPLAY`` is unset, an ``Xvfb`` server is started for the test session, so plain ``pytest``
works (``xvfb-run -a pytest`` works too). Nothing heavy is imported first: the dock runs torch
and the core in a worker process of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from histosge_widget_utils import wait_idle

from napari_histosge._widgets._display import start_virtual_display

_XVFB = start_virtual_display()
if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
    del os.environ["QT_QPA_PLATFORM"]  # offscreen has no OpenGL for napari's canvas


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _XVFB is not None:
        _XVFB.terminate()
        _XVFB.wait(timeout=10)


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    from napari_histosge._widgets import HisToSGEWidget

    viewer = make_napari_viewer()
    widget = HisToSGEWidget(viewer)
    viewer.window.add_dock_widget(widget, name="HisToSGE")
    qtbot.waitUntil(lambda: widget.sections_ready, timeout=10_000)
    widget.prefetch_thread.join(timeout=60)  # the readers' imports, in a thread
    yield viewer, widget
    widget.controller.close()


@pytest.fixture
def extracted(dock, qtbot):
    """The dock with the bundled sample opened and its features extracted."""
    viewer, widget = dock
    assert widget.open_sample()
    wait_idle(qtbot, widget)
    assert widget.session.slide is not None, widget.session.last_error
    assert widget.extract()
    wait_idle(qtbot, widget)
    assert widget.session.features is not None, widget.session.last_error
    return viewer, widget


@pytest.fixture
def sample_store(tmp_path: Path) -> Path:
    from napari_histosge.io import load_sample
    from napari_histosge.store import write_sdata

    path = tmp_path / "sample.zarr"
    write_sdata(load_sample(), path)
    return path


@pytest.fixture
def visium_folder(tmp_path: Path) -> Path:
    """A minimal Space Ranger output folder (12 spots, 3 genes)."""
    import pandas as pd
    import scipy.sparse as sp
    from PIL import Image
    from visium_testdata import write_10x_h5

    folder = tmp_path / "visium"
    (folder / "spatial").mkdir(parents=True)
    n, genes = 12, ["Gene1", "Gene2", "Gene3"]
    barcodes = [f"AAAC{i:04d}-1" for i in range(n)]
    rng = np.random.default_rng(0)
    m = sp.csc_matrix(rng.poisson(4, (len(genes), n)).astype(np.int32))
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", barcodes, genes, m)
    rows = [
        (b, 1, i // 4, (i % 4) * 2 + (i // 4) % 2, 400 + 80 * (i // 4), 400 + 92 * (i % 4))
        for i, b in enumerate(barcodes)
    ]
    pd.DataFrame(rows).to_csv(
        folder / "spatial" / "tissue_positions_list.csv", header=False, index=False
    )
    scalefactors = {
        "spot_diameter_fullres": 60.0,
        "tissue_hires_scalef": 0.5,
        "tissue_lowres_scalef": 0.1,
        "fiducial_diameter_fullres": 90.0,
    }
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    hires = rng.integers(0, 255, (600, 600, 3), dtype=np.uint8)
    Image.fromarray(hires).save(folder / "spatial" / "tissue_hires_image.png")
    lowres = rng.integers(0, 255, (120, 120, 3), dtype=np.uint8)
    Image.fromarray(lowres).save(folder / "spatial" / "tissue_lowres_image.png")
    return folder
