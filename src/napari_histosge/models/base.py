"""The interface every model mode implements, so that training and prediction are written once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

    from .config import Reference, TrainConfig

__all__ = ["Arrays", "ModelKind", "scale_features"]

#: Named arrays fitted on the training spots (scaling, projections, reference set).
Arrays = dict[str, np.ndarray]


def scale_features(arrays: Arrays, features: np.ndarray) -> np.ndarray:
    """Standardise features with the training spots' statistics (and project, when fitted).

    Examples
    --------
    >>> a = {"feat_mu": np.zeros(2, np.float32), "feat_sd": np.ones(2, np.float32)}
    >>> scale_features(a, np.ones((1, 2))).tolist()
    [[1.0, 1.0]]
    """
    z = (np.asarray(features, dtype=np.float32) - arrays["feat_mu"]) / arrays["feat_sd"]
    if "feat_proj" in arrays:
        z = z @ arrays["feat_proj"]
    return z.astype(np.float32)


class ModelKind(Protocol):
    """One model mode: how it prepares the data, builds, initialises, trains and predicts.

    ``z`` are the standardised image features of the training spots, ``xy`` their positions
    in µm, ``y`` their expression targets; ``fit_idx`` the spots fitted (the rest validate).
    """

    name: str

    def prepare(
        self,
        z: np.ndarray,
        xy: np.ndarray,
        y: np.ndarray,
        fit_idx: np.ndarray,
        arrays: Arrays,
        info: dict[str, Any],
        cfg: TrainConfig,
    ) -> np.ndarray:
        """Fit the mode's preprocessing into ``arrays``/``info``; return the model's features."""
        ...

    def new_module(self, cfg: TrainConfig, info: dict[str, Any]) -> torch.nn.Module:
        """Build an untrained network for ``info``'s sizes."""
        ...

    def initialise(
        self,
        module: torch.nn.Module,
        arrays: Arrays,
        info: dict[str, Any],
        z: np.ndarray,
        xy: np.ndarray,
        fit_idx: np.ndarray,
        cfg: TrainConfig,
    ) -> None:
        """Set the network's starting weights (closed-form fits), in place."""
        ...

    def loss(
        self,
        module: torch.nn.Module,
        arrays: Arrays,
        batch: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        device: str,
        cfg: TrainConfig,
        cache: dict[Any, Any],
    ) -> torch.Tensor:
        """Loss of ``batch = (z, xy, y, query, ref)``: predict ``query`` spots from ``ref``."""
        ...

    def predict(
        self,
        module: torch.nn.Module,
        arrays: Arrays,
        genes: int,
        z: np.ndarray,
        xy: np.ndarray,
        reference: Arrays | None,
        cfg: TrainConfig,
    ) -> np.ndarray:
        """Target-space expression ``(m, genes)`` at positions ``xy`` with features ``z``."""
        ...

    def reference_arrays(self, arrays: Arrays, ref: Reference, z: np.ndarray) -> Arrays:
        """``arrays`` with the measured reference set replaced by ``ref`` (scaled ``z``)."""
        ...
