"""napari-histosge: super-resolved gene expression from H&E and spot transcriptomics."""

from __future__ import annotations

try:
    from ._version import version as __version__
except ImportError:  # pragma: no cover - source tree without a build
    __version__ = "0.0.0"

from .base.progress import Cancelled, Progress, run_generator

__all__ = ["Cancelled", "Progress", "__version__", "run_generator"]
