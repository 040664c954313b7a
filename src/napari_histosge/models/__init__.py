"""The models, one module per mode, behind :class:`~napari_histosge.models.base.ModelKind`.

* ``improved`` (:mod:`.attention`): neighbour attention in µm over the nearest measured spots.
* ``faithful`` (:mod:`.faithful`): the published HisToSGE settings.

:mod:`.smoothing` holds the spatial smoother (a baseline and the attention model's prior).
torch is imported only when a mode is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_histosge.base.validation import assert_one_of

from .config import MODES, Reference, TrainConfig

if TYPE_CHECKING:
    from .base import ModelKind

__all__ = ["MODES", "Reference", "TrainConfig", "get_model_kind"]


def get_model_kind(mode: str) -> ModelKind:
    """Return the implementation of a model mode.

    Examples
    --------
    >>> get_model_kind("faithful").name
    'faithful'
    """
    assert_one_of("mode", mode, MODES)
    if mode == "faithful":
        from .faithful import FAITHFUL

        return FAITHFUL
    from .attention import IMPROVED

    return IMPROVED
