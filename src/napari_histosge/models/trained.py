"""A fitted model: its preprocessing, weights and provenance, and prediction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import get_model_kind
from .base import Arrays, scale_features
from .config import Reference, TrainConfig

if TYPE_CHECKING:
    import torch

__all__ = ["TrainedModel"]


@dataclass
class TrainedModel:
    """A fitted model with everything needed to predict and to check its inputs.

    ``arrays`` holds the preprocessing fitted on the training spots (feature scaling and
    projection, gene mean and low-rank basis) and the reference set the improved model attends
    to (the training spots' positions, features and expression).
    """

    config: TrainConfig
    genes: list[str]
    feature_meta: dict[str, Any]
    arrays: Arrays
    states: list[dict[str, torch.Tensor]]
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    _modules: list[torch.nn.Module] | None = field(default=None, repr=False)

    def config_dict(self) -> dict[str, Any]:
        """Return the config as a plain dict, with the learning rate in use."""
        out = asdict(self.config)
        out["learning_rate"] = self.config.learning_rate
        return out

    def modules(self) -> list[torch.nn.Module]:
        """Return the ensemble's networks in eval mode, built from the states once."""
        if self._modules is None:
            kind = get_model_kind(self.config.mode)
            mods = []
            for state in self.states:
                m = kind.new_module(self.config, self.info)
                m.load_state_dict(dict(state))
                m.eval()
                mods.append(m)
            self._modules = mods
        return self._modules

    def _reference_arrays(self, ref: Reference) -> Arrays:
        """Arrays with a user reference set (scaled features, low-rank coefficients)."""
        xy = np.asarray(ref.xy_um, dtype=np.float64)
        feats = np.asarray(ref.features, dtype=np.float32)
        vals = np.asarray(ref.values, dtype=np.float32)
        width = int(self.arrays["feat_mu"].shape[0])
        n = len(xy)
        if (
            n < 1
            or xy.shape != (n, 2)
            or feats.shape != (n, width)
            or vals.shape != (n, len(self.genes))
        ):
            raise ValueError(
                f"Expected a reference of positions (n, 2), features (n, {width}) and values "
                f"(n, {len(self.genes)}) in the model's gene order, found {xy.shape}, "
                f"{feats.shape} "
                f"and {vals.shape}."
            )
        if not (np.isfinite(feats).all() and np.isfinite(vals).all() and np.isfinite(xy).all()):
            raise ValueError("Expected a finite reference set, found NaN or inf values.")
        kind = get_model_kind(self.config.mode)
        return kind.reference_arrays(self.arrays, ref, scale_features(self.arrays, feats))

    def predict(
        self,
        features: np.ndarray,
        xy_um: np.ndarray,
        *,
        reference: Literal["train"] | Reference | None = "train",
    ) -> np.ndarray:
        """Predict expression (target space) at positions with these features.

        Parameters
        ----------
        features
            ``(m, d)`` features from the same encoder and patch sizes as in training.
        xy_um
            ``(m, 2)`` positions in µm, in the same frame as the training spots.
        reference
            ``"train"``: attend to the measured training spots (same section). A
            :class:`Reference`: attend to these measured spots instead (for example another
            section's). ``None``: image features and positions alone, for a section without
            measured spots. The ``faithful`` model never attends to measured spots.

        Returns
        -------
        ``(m, genes)`` float32, non-negative.
        """
        import torch

        feats = np.asarray(features, dtype=np.float32)
        xy = np.asarray(xy_um, dtype=np.float64)
        expected = int(self.arrays["feat_mu"].shape[0])
        if feats.ndim != 2 or feats.shape[1] != expected:
            raise ValueError(
                f"Expected features of width {expected} ({self.feature_meta.get('encoder_id')}), "
                f"found shape {feats.shape}."
            )
        if not np.isfinite(feats).all():
            raise ValueError("Expected finite features, found NaN or inf values.")
        if xy.shape != (len(feats), 2):
            raise ValueError(f"Expected positions of shape ({len(feats)}, 2), found {xy.shape}.")
        if isinstance(reference, Reference):
            ref_arrays: Arrays | None = self._reference_arrays(reference)
        elif reference == "train":
            ref_arrays = self.arrays
        elif reference is None:
            ref_arrays = None
        else:
            raise ValueError(
                f"Expected `reference` to be 'train', None or a Reference, found `{reference!r}`."
            )
        kind = get_model_kind(self.config.mode)
        z = scale_features(self.arrays, feats)
        with torch.inference_mode():
            out = np.mean(
                [
                    kind.predict(m, self.arrays, len(self.genes), z, xy, ref_arrays, self.config)
                    for m in self.modules()
                ],
                axis=0,
            )
        return np.maximum(out, 0.0).astype(np.float32)
