"""Training options and the measured reference set: plain data shared by every model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from napari_histosge.base.validation import (
    assert_at_least,
    assert_in_range,
    assert_one_of,
    assert_positive,
)

__all__ = ["MODES", "Reference", "TrainConfig"]

#: Model modes, each one module of :mod:`napari_histosge.models`.
MODES = ("improved", "faithful")


@dataclass(frozen=True)
class TrainConfig:
    """Training options.

    Parameters
    ----------
    mode
        ``"improved"`` (neighbour attention in µm, low-rank output; the default) or
        ``"faithful"`` (the published HisToSGE settings).
    epochs
        Maximum epochs per ensemble member.
    lr
        Adam learning rate; ``None`` means 1e-3 (the published setting).
    weight_decay
        Adam weight decay.
    seed
        Seed for torch, numpy and random.
    val_fraction
        Fraction of the training spots used for validation and early stopping.
    patience
        Epochs without validation improvement before stopping.
    n_neighbors
        Measured spots each position attends to (``improved``).
    heads
        Attention heads.
    feature_dims
        Image features are reduced to this many principal components (``improved``).
    rank
        Width of the low-rank gene space; chosen by leave-one-out on the training spots when
        ``None``.
    ensemble
        Members averaged (different initialisations).
    image_loss_weight
        Weight of the image-only head's loss (``improved``).
    group_size
        Spots per attention group (``faithful``).
    device
        Torch device; CUDA when available, else CPU, when ``None``.
    cpu_threads
        Torch CPU threads while fitting (restored afterwards). One thread keeps the small
        batches fast and the results bit-identical; ``None`` leaves torch's setting.
    """

    mode: Literal["improved", "faithful"] = "improved"
    epochs: int = 100
    lr: float | None = None
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.15
    patience: int = 20
    n_neighbors: int = 8
    heads: int = 4
    feature_dims: int = 16
    rank: int | None = None
    ensemble: int = 3
    image_loss_weight: float = 0.5
    group_size: int = 50
    device: str | None = None
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        assert_one_of("mode", self.mode, MODES)
        for name in ("epochs", "ensemble", "n_neighbors", "heads", "patience", "group_size"):
            assert_at_least(name, getattr(self, name), 1)
        assert_in_range("val_fraction", self.val_fraction, 0.0, 0.9, include_max=False)
        if self.lr is not None:
            assert_positive("lr", self.lr)

    @property
    def learning_rate(self) -> float:
        """The learning rate in use."""
        if self.lr is not None:
            return float(self.lr)
        return 1e-3


@dataclass(frozen=True)
class Reference:
    """Measured spots the improved model attends to at prediction time.

    Parameters
    ----------
    xy_um
        ``(n, 2)`` positions in µm, in the frame of the positions to predict.
    features
        ``(n, d)`` their image features (same encoder and patch sizes as in training).
    values
        ``(n, g)`` their measured expression in target space, genes in the model's order.

    Examples
    --------
    >>> ref = Reference(np.zeros((3, 2)), np.zeros((3, 4)), np.zeros((3, 2)))
    >>> ref.values.shape
    (3, 2)
    """

    xy_um: np.ndarray
    features: np.ndarray
    values: np.ndarray
