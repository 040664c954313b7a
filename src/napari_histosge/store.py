"""Names of the elements this package writes, and atomic writes of stores and folders.

Every folder this package writes (exported stores, converted stores, checkpoints) goes through
:func:`write_folder_atomic`: it is written to a hidden temporary sibling and moved into place
only when complete, so a failure or an interrupt leaves whatever was at the target untouched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = [
    "EXPRESSION_KEY",
    "OUTPUT_KEYS",
    "POSITIONS_KEY",
    "PREDICTIONS_KEY",
    "SLIDE_META_KEY",
    "write_atomic",
    "write_folder_atomic",
]

#: ``uns`` key of the table holding the slide's provenance (technology, µm per pixel, ...).
SLIDE_META_KEY = "histosge_slide"
#: The gene maps (image element, one channel per gene).
EXPRESSION_KEY = "histosge_expression"
#: The super-resolution positions (circles element).
POSITIONS_KEY = "histosge_positions"
#: The predictions at the spots and positions (table annotating ``POSITIONS_KEY``).
PREDICTIONS_KEY = "histosge_predictions"
#: Every element an export writes.
OUTPUT_KEYS = (EXPRESSION_KEY, POSITIONS_KEY, PREDICTIONS_KEY)


def write_folder_atomic(out: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``out``, then move it into place.

    ``write`` must create ``tmp`` (a folder). A failure while writing removes the partial copy
    and leaves whatever was at ``out`` untouched; an existing ``out`` is swapped out by renames
    and removed only once the new folder is in place. The caller decides whether replacing
    ``out`` is allowed.

    Examples
    --------
    >>> write_folder_atomic("model", lambda tmp: tmp.mkdir())  # doctest: +SKIP
    PosixPath('/data/model')
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = out.parent / f".{out.name}.tmp-{token}"
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        backup = out.parent / f".{out.name}.old-{token}"
        os.replace(out, backup)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(backup, out)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def write_atomic(sdata: SpatialData, out: str | Path) -> Path:
    """Write ``sdata`` as a zarr store at ``out`` with :func:`write_folder_atomic`.

    Examples
    --------
    >>> write_atomic(sdata, "slide.zarr")  # doctest: +SKIP
    """
    return write_folder_atomic(
        out, lambda tmp: sdata.write(tmp, overwrite=False, update_sdata_path=False)
    )
