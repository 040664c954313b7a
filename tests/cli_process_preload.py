"""Imported once by the fork server of ``cli_process``: the modules its commands use.

Only imports: nothing here starts a thread or runs torch, so that forking afterwards is safe.
"""

from __future__ import annotations

import importlib

import torch  # noqa: F401

import napari_histosge.cli.main  # noqa: F401
from napari_histosge.workflows.batch import _OPTIONAL_MODULES, _TASK_MODULES

for _name in (*_TASK_MODULES, "napari_histosge.features.cache", "timm", "distributed"):
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError:
        if _name not in _OPTIONAL_MODULES:
            raise
