"""JSON encoding of the numpy and path values found in provenance records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["json_default"]


def json_default(obj: Any) -> Any:
    """``default=`` hook for :func:`json.dumps`: numpy scalars and arrays, paths.

    Examples
    --------
    >>> import json
    >>> json.dumps({"a": np.float32(1.5), "b": np.arange(2)}, default=json_default)
    '{"a": 1.5, "b": [0, 1]}'
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Cannot serialise {type(obj).__name__}")
