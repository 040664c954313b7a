"""Settings of the super-resolution model (:mod:`napari_histosge.models.superres`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["SuperResConfig"]


@dataclass(frozen=True)
class SuperResConfig:
    """Settings of the super-resolution model (defaults chosen by leave-one-section-out).

    Parameters
    ----------
    bandwidth
        Gaussian kernel sigma of the smooth field, in unit pitches (median distance between
        neighbouring unit centroids).
    nugget
        Ridge on the footprint kernel system, relative to its mean diagonal: 0 interpolates
        the units exactly, larger values smooth across units.
    image_weight
        Scale of the image term (0: no image, a footprint-consistent smoother only).
    aggregate
        ``"log"``: footprint means of log-normalised values match the units'; ``"counts"``:
        footprint means of normalised expression (count space) match.
    exact
        Finish with the least-norm correction that makes every footprint mean equal its unit.
    image_fit
        ``"local"``: the image term is fitted on local contrasts (each unit minus the
        Gaussian-weighted mean of its neighbours, in values and in features), the scale of
        the detail it adds inside footprints; ``"global"``: on the unit values themselves.
    per_gene
        Choose the ridge penalty of each gene by GCV (else one penalty for all genes).
    gene_shrink
        Scale each gene's image term by its leave-one-unit-out R² (clipped to [0, 1]) raised
        to ``shrink_power``.
    shrink_power
        Exponent of that R² (1: in proportion to R²; 0.5: to the correlation, a milder
        shrinkage of the genes the image predicts weakly).
    n_components
        Principal components of the standardised superpixel features used by the image term.
    alphas
        Ridge penalties tried by generalised cross-validation over the units.
    coarse
        Spacing of the kernel's nodes, in bandwidths.
    truncate
        Kernel support, in bandwidths.
    measurement
        What :meth:`SuperResModel.predict_units` returns for a query footprint: ``"mean"``,
        the map's mean over it; ``"poisson"``, the expected log-normalised measurement of a
        unit with that footprint (the map's count-weighted rate and the footprint's depth
        from the count-density map, through :func:`expected_log1p`; needs unit depths).
    depth_image
        Let the count-density map follow the image (else uniform inside each footprint).
    depth_components
        Principal components of the features used by the count-density map.
    depth_weight
        Scale of the image term of the count-density map.
    target_sum
        Normalisation target of the units' log values (``log1p(target_sum * k / depth)``).
    uncertainty
        Also fit the map's standard deviation and each gene's reliability
        (:mod:`._superres_uncertainty`; ``aggregate="log"`` only).
    uncertainty_scale
        Calibration factor of the standard deviations (chosen by leave-one-section-out on
        the pooled-footprint protocol).
    uncertainty_bandwidth
        Kernel bandwidth of the field's covariance for the uncertainty, in unit pitches
        (``None``: ``bandwidth``). The uncertainty defaults (0.5 pitch, amplitude by
        leave-one-unit-out, scale 0.35) were chosen by leave-one-section-out on her2st C2–C5,
        pooled 2x2 and 3x3, for the coverage of the measurement model's count intervals
        (``bench/superres_calibration.py``).
    uncertainty_amplitude
        ``"cv"`` (leave-one-unit-out) or ``"moments"``: how each gene's field amplitude is
        estimated.
    uncertainty_length_um
        Length of the field's covariance for the uncertainty in µm, not tied to the units'
        pitch (``None``: ``uncertainty_bandwidth`` pitches).
    uncertainty_shape
        ``"gaussian"`` or ``"exponential"`` (Matérn 1/2, rough): the shape of that covariance.
    seed
        Recorded for provenance; the fit is deterministic.
    """

    bandwidth: float = 1.0
    nugget: float = 3.0
    image_weight: float = 0.5
    aggregate: Literal["log", "counts"] = "log"
    exact: bool = True
    image_fit: Literal["local", "global"] = "global"
    per_gene: bool = False
    gene_shrink: bool = True
    shrink_power: float = 0.5
    n_components: int = 8
    alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 5, 15))
    coarse: float = 0.25
    truncate: float = 3.0
    measurement: Literal["mean", "poisson"] = "poisson"
    depth_image: bool = True
    depth_components: int = 8
    depth_weight: float = 1.0
    target_sum: float = 1e4
    uncertainty: bool = True
    uncertainty_scale: float = 0.35
    uncertainty_bandwidth: float | None = 0.5
    uncertainty_amplitude: Literal["cv", "moments"] = "cv"
    uncertainty_length_um: float | None = None
    uncertainty_shape: Literal["gaussian", "exponential"] = "gaussian"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("bandwidth", "coarse", "truncate"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"Expected a positive `{name}`, found `{v}`.")
        if not (np.isfinite(self.nugget) and self.nugget >= 0):
            raise ValueError(f"Expected a non-negative `nugget`, found `{self.nugget}`.")
        if not (np.isfinite(self.image_weight) and self.image_weight >= 0):
            raise ValueError(
                f"Expected a non-negative `image_weight`, found `{self.image_weight}`."
            )
        if not (np.isfinite(self.shrink_power) and self.shrink_power > 0):
            raise ValueError(f"Expected a positive `shrink_power`, found `{self.shrink_power}`.")
        if self.aggregate not in ("log", "counts"):
            raise ValueError(f"Expected `aggregate` 'log' or 'counts', found `{self.aggregate}`.")
        if self.image_fit not in ("local", "global"):
            raise ValueError(f"Expected `image_fit` 'local' or 'global', found `{self.image_fit}`.")
        if self.measurement not in ("mean", "poisson"):
            raise ValueError(
                f"Expected `measurement` 'mean' or 'poisson', found `{self.measurement}`."
            )
        if not (np.isfinite(self.depth_weight) and self.depth_weight >= 0):
            raise ValueError(
                f"Expected a non-negative `depth_weight`, found `{self.depth_weight}`."
            )
        if not (np.isfinite(self.uncertainty_scale) and self.uncertainty_scale > 0):
            raise ValueError(
                f"Expected a positive `uncertainty_scale`, found `{self.uncertainty_scale}`."
            )
        length = self.uncertainty_length_um
        if length is not None and not (np.isfinite(length) and length > 0):
            raise ValueError(f"Expected a positive `uncertainty_length_um`, found `{length}`.")
        if self.uncertainty_shape not in ("gaussian", "exponential"):
            raise ValueError(
                "Expected `uncertainty_shape` 'gaussian' or 'exponential', found "
                f"`{self.uncertainty_shape}`."
            )
        if not (np.isfinite(self.target_sum) and self.target_sum > 0):
            raise ValueError(f"Expected a positive `target_sum`, found `{self.target_sum}`.")
        if self.n_components < 1 or self.depth_components < 1:
            raise ValueError(
                "Expected `n_components` and `depth_components` >= 1, found "
                f"`{self.n_components}` and `{self.depth_components}`."
            )
