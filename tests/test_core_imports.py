"""Core modules import no Qt, napari or magicgui, and `import napari_histosge` stays light."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "napari_histosge",
    "napari_histosge.io",
    "napari_histosge.geometry",
    "napari_histosge.images",
    "napari_histosge.store",
    "napari_histosge.features",
    "napari_histosge.features.patches",
    "napari_histosge.features.registry",
    "napari_histosge.expression",
    "napari_histosge.models",
    "napari_histosge.models.attention",
    "napari_histosge.models.faithful",
    "napari_histosge.train",
    "napari_histosge.models.checkpoints",
    "napari_histosge.predict",
    "napari_histosge.maps",
    "napari_histosge.evaluate",
    "napari_histosge.workflows.export",
    "napari_histosge.workflows.pipeline",
    "napari_histosge.cli",
]


def test_core_imports_no_qt():
    code = (
        "import sys\n"
        f"for m in {CORE!r}:\n"
        "    __import__(m)\n"
        "bad = [m for m in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'napari')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_top_level_import_is_lazy():
    code = (
        "import sys, napari_histosge\n"
        "heavy = [m for m in ('torch', 'timm', 'scanpy', 'spatialdata') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
