"""The dock's session: what has been done on the current slide, with events. No Qt, no viewer.

Results of the worker are kept as small records (counts, names, file paths); the arrays stay in
the worker, the store and the session folder. Setting a step's result forgets what was built on
the previous one (new features forget the model, a new model forgets the predictions), and a
failed or cancelled step changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psygnal import Signal

__all__ = [
    "CellsInfo",
    "DomainsInfo",
    "FeaturesInfo",
    "MapsInfo",
    "ModelInfo",
    "PredictionsInfo",
    "Session",
    "SlideInfo",
]


@dataclass(frozen=True)
class SlideInfo:
    """An opened slide: the store the worker reads and what the viewer shows of it."""

    source: str
    label: str
    keys: dict[str, str]
    elements: dict[str, list[str]]
    n_spots: int
    n_genes: int
    lattice: str
    diameter_px: float
    um_per_px: float
    centers: str
    image_levels: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    has_table: bool = True
    um_per_px_given: float | None = None

    def spec(self) -> dict[str, Any]:
        """Return what the worker opens: the store, its elements (and scale, without a table)."""
        spec: dict[str, Any] = {"source": self.source}
        if not self.has_table:
            spec.update(image_only=True, um_per_px=self.um_per_px_given)
        return {**spec, "keys": dict(self.keys)}


@dataclass(frozen=True)
class FeaturesInfo:
    """Features of the spots and the new positions (cached in the store)."""

    options: dict[str, Any]
    from_cache: bool
    n_spots: int
    n_positions: int
    dims: int
    encoder_id: str


@dataclass(frozen=True)
class ModelInfo:
    """A trained or loaded model, saved as a checkpoint folder; or a super-resolution fit.

    A super-resolution model is fitted to this slide and not saved: ``superres`` holds its
    settings (the worker refits from them when needed) and ``path`` is empty.
    """

    path: str
    n_genes: int
    info: dict[str, Any] = field(default_factory=dict)
    superres: dict[str, Any] | None = None


@dataclass(frozen=True)
class PredictionsInfo:
    """Predictions at the spots and the new positions; genes ranked by variability.

    ``reliability`` maps each gene to its leave-one-unit-out R² of the map and the share of the
    map's variance carried by the image (super-resolution model; empty otherwise).
    """

    path: str
    genes: list[str]
    n_positions: int
    reliability: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class MapsInfo:
    """Rendered gene maps: ``(genes, y, x)`` float32 ``.npy`` levels and their placement.

    ``levels`` holds the finest level (``path``) first, then coarser ones for large maps;
    ``sd_levels`` and ``sd_limits`` the same for the maps' standard deviations (empty when the
    model gives none).
    """

    path: str
    genes: list[str]
    scale: tuple[float, float]
    translate: tuple[float, float]
    limits: list[tuple[float, float]]
    pitch_um: float
    levels: list[str] = field(default_factory=list)
    sd_levels: list[str] = field(default_factory=list)
    sd_limits: list[tuple[float, float]] = field(default_factory=list)
    shape: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class DomainsInfo:
    """Tissue domains: an int32 ``.npy`` label image (0 off tissue) placed like the maps."""

    path: str
    k: int
    scale: tuple[float, float]
    translate: tuple[float, float]
    top_genes: dict[int, list[str]]
    seed: int = 0


@dataclass(frozen=True)
class CellsInfo:
    """Segmented cells: ``.npy`` files of their ids, values and one gene's colours.

    ``labels``: int32 cell ids (0: none) placed on the H&E by ``scale`` and ``translate``;
    ``values``: ``(cells, genes)``; ``colour``: ``(1, y, x)`` levels, finest first, of ``gene``'s
    value in each cell (NaN off them) on the grid of ``labels``.
    """

    labels: str
    values: str
    genes: list[str]
    n_cells: int
    scale: tuple[float, float]
    translate: tuple[float, float]
    gene: str
    colour: list[str]
    limits: tuple[float, float]


@dataclass(frozen=True)
class MeasuredInfo:
    """Measured expression of one gene at the spots, as a ``.npy`` file."""

    gene: str
    path: str
    limits: tuple[float, float]


#: The actions of the dock and the results each one needs.
NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "show": (("elements", "Open a slide first."),),
    "extract": (("slide", "Open a slide first."),),
    "train": (("features", "Extract features first."),),
    "fit": (("slide", "Open a slide first."),),
    "load_model": (("slide", "Open a slide first."),),
    "save_model": (("model", "Train or load a model first."),),
    "predict": (("model", "Train or load a model first."),),
    "render": (("predictions", "Predict first."),),
    "export": (("predictions", "Predict first."),),
    "domains": (("predictions", "Predict first."),),
    "cells": (("predictions", "Predict first."),),
}


class Session:
    """State of one dock: the slide and the results built on it, plus what is running.

    Examples
    --------
    >>> s = Session()
    >>> s.why_not("extract")
    'Open a slide first.'
    """

    changed = Signal(str)  # name of the result that changed
    status_changed = Signal(str)
    progress_changed = Signal(object)  # fraction in [0, 1], or None when unknown
    busy_changed = Signal(object)  # name of the running step, or None
    loss_added = Signal(dict)
    loss_cleared = Signal()
    error = Signal(str)

    def __init__(self) -> None:
        self.elements: dict[str, list[str]] | None = None
        self.source: str | None = None
        self.slide: SlideInfo | None = None
        self.features: FeaturesInfo | None = None
        self.model: ModelInfo | None = None
        self.predictions: PredictionsInfo | None = None
        self.maps: MapsInfo | None = None
        self.measured: MeasuredInfo | None = None
        self.domains: DomainsInfo | None = None
        self.cells: CellsInfo | None = None
        self.show_uncertainty = False
        self.show_units = False
        self.running: str | None = None
        self.status = "Open a slide to start."
        self.last_error: str | None = None
        self.last_export: str | None = None
        self.losses: list[dict[str, Any]] = []

    # Results ---------------------------------------------------------------------------------

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            if getattr(self, name) is not value:
                setattr(self, name, value)
                self.changed.emit(name)

    def set_elements(self, source: str, elements: dict[str, list[str]]) -> None:
        """Record a store whose elements are not resolved yet."""
        self._set(slide=None, features=None, model=None, predictions=None, domains=None, cells=None)
        self.source = source
        self._set(elements=elements)

    def set_slide(self, slide: SlideInfo) -> None:
        """Use a new slide, forgetting everything computed before."""
        self.source = slide.source
        self._set(features=None, model=None, predictions=None, domains=None, cells=None)
        self._set(elements=slide.elements)
        self.clear_losses()
        self._set(slide=slide)

    def set_features(self, features: FeaturesInfo) -> None:
        """Use new features; a model trained on other ones no longer applies."""
        if self.features is None or self.features.options != features.options:
            self._set(model=None, predictions=None)
        self._set(features=features)

    def set_model(self, model: ModelInfo) -> None:
        """Use a new model; earlier predictions and domains no longer apply."""
        self._set(predictions=None, domains=None, cells=None, model=model)

    def set_predictions(self, predictions: PredictionsInfo) -> None:
        """Use new predictions."""
        self._set(predictions=predictions)

    def set_maps(self, maps: MapsInfo | None, measured: MeasuredInfo | None = None) -> None:
        """Show rendered maps (and the first gene's measured values, or none)."""
        self._set(maps=maps)
        self._set(measured=measured)

    def set_measured(self, measured: MeasuredInfo | None) -> None:
        """Show or hide measured values at the spots."""
        self._set(measured=measured)

    def set_domains(self, domains: DomainsInfo | None) -> None:
        """Show tissue domains (or none)."""
        self._set(domains=domains)

    def set_cells(self, cells: CellsInfo | None) -> None:
        """Show segmented cells, coloured by one gene (or none)."""
        self._set(cells=cells)

    def set_shown(self, *, uncertainty: bool | None = None, units: bool | None = None) -> None:
        """Show or hide the maps' standard deviations and the measured units' outlines."""
        for name, value in (("show_uncertainty", uncertainty), ("show_units", units)):
            if value is not None and bool(value) != getattr(self, name):
                setattr(self, name, bool(value))
                self.changed.emit(name)

    def context(self) -> dict[str, Any]:
        """Describe what the worker needs to rebuild this session's objects."""
        return {
            "slide": None if self.slide is None else self.slide.spec(),
            "features": None if self.features is None else dict(self.features.options),
            "model": None if self.model is None else (self.model.path or None),
            "superres": None if self.model is None else self.model.superres,
            "predictions": None if self.predictions is None else self.predictions.path,
        }

    # Running ---------------------------------------------------------------------------------

    def why_not(self, action: str) -> str:
        """Say why ``action`` cannot run now, or ``""`` when it can."""
        if self.running is not None:
            return f"Wait: {self.running} is running."
        if action == "save_model" and self.model is not None and self.model.superres is not None:
            return "A super-resolution fit belongs to this slide and is not saved."
        if action == "domains" and (self.model is None or self.model.superres is None):
            return "Domains come from the super-resolution model: fit it (Train, superres)."
        if action == "cells" and (self.model is None or self.model.superres is None):
            return "Cells take their values from the super-resolution model: fit it (superres)."
        slide = self.slide
        if slide is not None and not slide.has_table:
            if action in ("train", "fit"):
                return "This slide has no table to train on: load a trained model, then Predict."
            if action == "extract" and self.model is None and not slide.n_spots:
                return "Load a model first: it sets the positions on a slide with an image only."
        for name, why in NEEDS.get(action, ()):
            if getattr(self, name) is None:
                return why
        return ""

    def set_running(self, name: str | None) -> None:
        """Mark a step as running (or none)."""
        if name is not None:
            self.last_error = None
        if name != self.running:
            self.running = name
            self.busy_changed.emit(name)

    def set_status(self, text: str) -> None:
        """Set the status line."""
        self.status = text
        self.status_changed.emit(text)

    def set_progress(self, fraction: float | None) -> None:
        """Progress of the running step."""
        self.progress_changed.emit(fraction)

    def fail(self, message: str) -> None:
        """Report a failed step; nothing changes but the status."""
        self.last_error = message
        self.set_status(f"Error: {message}")
        self.error.emit(message)

    def add_loss(self, info: dict[str, Any]) -> None:
        """One epoch of the loss curve."""
        self.losses.append(dict(info))
        self.loss_added.emit(dict(info))

    def clear_losses(self) -> None:
        """Forget the loss curve."""
        self.losses = []
        self.loss_cleared.emit()
