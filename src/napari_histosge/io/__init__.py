"""Read slides into SpatialData, find their image, units and table, validate and convert them.

* :mod:`.read`: :func:`read_slide` (a SpatialData ``.zarr``, a Visium folder or an ST folder),
  with one module per format (:mod:`.her2st`, :mod:`.visium`);
* :mod:`.keys`: :func:`resolve_keys`; :mod:`.validate`: :func:`validate_slide`;
* :mod:`.conversion`: :func:`convert`; :mod:`.sample`: :func:`load_sample`, the bundled sample.
"""

from __future__ import annotations

from ._elements import SlideKeys
from .conversion import convert
from .her2st import read_her2st
from .keys import resolve_keys
from .read import read_slide
from .sample import load_sample
from .validate import validate_slide
from .visium import read_visium

__all__ = [
    "SlideKeys",
    "convert",
    "load_sample",
    "read_her2st",
    "read_slide",
    "read_visium",
    "resolve_keys",
    "validate_slide",
]
