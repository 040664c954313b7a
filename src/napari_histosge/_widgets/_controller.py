"""The dock's actions: build a task from the form's values, run it, record its result.

The controller joins a :class:`~._session.Session` and a :class:`~._worker_process.Runner`; it
imports neither Qt nor the core, so the whole workflow is driven and tested without a viewer.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ._session import (
    CellsInfo,
    DomainsInfo,
    FeaturesInfo,
    MapsInfo,
    MeasuredInfo,
    ModelInfo,
    PredictionsInfo,
    Session,
    SlideInfo,
)
from ._worker_process import Runner

__all__ = ["Controller"]

#: Labels of the tasks in the status line.
LABELS = {
    "open": "Reading the slide",
    "extract": "Extracting features",
    "train": "Training",
    "save_model": "Saving the model",
    "load_model": "Loading the model",
    "predict": "Predicting",
    "render": "Rendering",
    "measured": "Reading measured expression",
    "export": "Exporting",
    "domains": "Finding domains",
    "cells": "Segmenting cells",
    "cells_colour": "Colouring cells",
}


class Controller:
    """Runs the dock's steps in the worker and records their results in the session.

    Parameters
    ----------
    session
        The state the results go to; a new one when ``None``.
    runner
        The worker process; a new one when ``None``.
    """

    def __init__(self, session: Session | None = None, runner: Runner | None = None) -> None:
        self.session = session or Session()
        self.runner = runner or Runner()
        self._saved_losses: list[dict[str, Any]] = []
        self._render_request: dict[str, Any] | None = None
        self.runner.started.connect(self._on_started)
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)

    # Actions ----------------------------------------------------------------------------------

    def _submit(self, name: str, payload: dict[str, Any], action: str | None = None) -> bool:
        why = self.session.why_not(action or name)
        if why:
            self.session.set_status(why)
            return False
        return self.runner.submit(name, payload, self.session.context())

    def open(
        self,
        source: str | Path,
        keys: dict[str, str | None] | None = None,
        um_per_px: float | None = None,
    ) -> bool:
        """Read a store, a Visium folder or an ST folder (``"sample"``: the bundled sample).

        ``um_per_px`` is the scale of a slide with an image only (no spots to measure it from).
        """
        payload = {"source": str(source), "keys": dict(keys or {}), "um_per_px": um_per_px}
        return self._submit("open", payload, "open")

    def open_sample(self) -> bool:
        """Read the bundled sample."""
        return self.open("sample")

    def show(self, keys: dict[str, str | None], um_per_px: float | None = None) -> bool:
        """Use the chosen image, spots and table of the store read last."""
        if self.session.source is None:
            return False
        payload = {"source": self.session.source, "keys": keys, "um_per_px": um_per_px}
        return self._submit("open", payload, "show")

    def extract(self, options: dict[str, Any]) -> bool:
        """Embed spots and new positions (cached features are reused)."""
        return self._submit("extract", {"options": dict(options)})

    def train(
        self,
        config: dict[str, Any],
        n_top_genes: int = 1000,
        *,
        options: dict[str, Any] | None = None,
        resolution_um: float | None = None,
    ) -> bool:
        """Train with a live loss curve; Cancel keeps the previous model.

        With ``config["mode"] == "superres"``, fit the super-resolution model at
        ``resolution_um`` (``None``: its default) with the encoder of ``options``; it needs no
        extracted spot features.
        """
        payload = {"config": dict(config), "n_top_genes": int(n_top_genes)}
        action = "train"
        if config.get("mode") == "superres":  # no loss curve: the earlier one is cleared
            action = "fit"
            payload.update(
                seed=int(config.get("seed") or 0),
                options=dict(options or {}),
                resolution_um=resolution_um or None,
            )
        if self.session.why_not(action):
            return self._submit("train", payload, action)
        self._saved_losses = list(self.session.losses)
        self.session.clear_losses()
        if not self._submit("train", payload, action):
            self._restore_losses()
            return False
        return True

    def save_model(self, path: str | Path) -> bool:
        """Save the model as a checkpoint folder."""
        return self._submit("save_model", {"path": str(path)})

    def load_model(self, path: str | Path) -> bool:
        """Load a checkpoint folder (checked against the features when predicting)."""
        return self._submit("load_model", {"path": str(path)})

    def predict(self, options: dict[str, Any] | None = None) -> bool:
        """Predict at the spots and the new positions.

        Without extracted features, a loaded model extracts them with its own encoder and patch
        sizes (``options`` gives the weights, device, batch size and positions).
        """
        return self._submit("predict", {"options": dict(options or {})})

    def render(self, genes: list[str], pitch_um: float | None, measured: bool = False) -> bool:
        """Rasterise ``genes`` at ``pitch_um`` (``None``: automatic) and show them."""
        if not genes:
            self.session.set_status("Select one or more genes to render.")
            return False
        has_table = self.session.slide is None or self.session.slide.has_table
        measured = bool(measured and has_table)
        payload = {"genes": list(genes), "pitch_um": pitch_um or None, "measured": measured}
        return self._submit("render", payload)

    def show_measured(self, gene: str | None) -> bool:
        """Show one gene's measured values at the spots (``None``: hide them)."""
        if gene is None:
            self.session.set_measured(None)
            return True
        return self._submit("measured", {"gene": gene}, "render")

    def domains(self, k: int, seed: int = 0, pitch_um: float | None = None) -> bool:
        """Cluster the super-resolved expression at ``pitch_um`` into ``k`` tissue domains."""
        return self._submit("domains", {"k": int(k), "seed": int(seed), "pitch_um": pitch_um})

    def cells(self, gene: str | None = None, pitch_um: float | None = None) -> bool:
        """Segment the nuclei, average the maps over each cell and colour them by ``gene``."""
        return self._submit("cells", {"gene": gene, "pitch_um": pitch_um})

    def colour_cells(self, gene: str) -> bool:
        """Colour the segmented cells by ``gene`` (from their saved values)."""
        cells = self.session.cells
        if cells is None or gene == cells.gene or gene not in cells.genes:
            return False
        payload = {"labels": cells.labels, "values": cells.values, "genes": cells.genes}
        return self._submit("cells_colour", {**payload, "gene": gene}, "cells")

    def export(self, path: str | Path, *, overwrite: bool, pitch_um: float | None = None) -> bool:
        """Write predictions, maps and features (and the cells, once segmented) into a store."""
        payload = {"path": str(path), "overwrite": bool(overwrite), "pitch_um": pitch_um or None}
        found = self.session.domains  # the domains shown go into the store too
        payload["domains"] = None if found is None else {"k": found.k, "seed": found.seed}
        payload["cells"] = self.session.cells is not None  # and the cells segmented
        return self._submit("export", payload)

    def cancel(self) -> None:
        """Stop the running step; the session keeps what it had."""
        if self.session.running is not None:
            self.session.set_status("Cancelling…")
            self.runner.cancel()

    def poll(self) -> None:
        """Handle what the worker sent (called from a timer)."""
        self.runner.poll()

    def close(self) -> None:
        """Stop the worker."""
        self.runner.close()

    # Results ----------------------------------------------------------------------------------

    def _on_started(self, name: str) -> None:
        self.session.set_running(LABELS.get(name, name))
        self.session.set_progress(0.0)
        self.session.set_status(f"{LABELS.get(name, name)}…")

    def _on_progress(self, item: dict[str, Any]) -> None:
        total = item.get("total")
        if total:
            self.session.set_progress(min(1.0, float(item.get("step", 0)) / float(total)))
        if item.get("message"):
            self.session.set_status(str(item["message"]))
        info = item.get("info") or {}
        if "train_loss" in info:
            self.session.add_loss(info)

    def _on_finished(self, name: str, result: dict[str, Any]) -> None:
        handler = getattr(self, f"_done_{name}")
        self.session.set_running(None)
        self.session.set_progress(1.0)
        handler(result)

    def _on_failed(self, name: str, message: str) -> None:
        if name == "train":
            self._restore_losses()
        self.session.set_running(None)
        self.session.set_progress(None)
        self.session.fail(message)

    def _on_cancelled(self, name: str) -> None:
        if name == "train":
            self._restore_losses()
        self.session.set_running(None)
        self.session.set_progress(None)
        self.session.set_status(f"{LABELS.get(name, name)} cancelled; nothing was changed.")

    def _restore_losses(self) -> None:
        self.session.clear_losses()
        for info in self._saved_losses:
            self.session.add_loss(info)

    def _done_open(self, result: dict[str, Any]) -> None:
        if result.get("problem"):
            self.session.set_elements(result["source"], result["elements"])
            self.session.set_status(
                f"Choose the image, spots and table, then press Show. ({result['problem']})"
            )
            self.session.fail(result["problem"])
            return
        fields = SlideInfo.__dataclass_fields__
        slide = SlideInfo(**{k: v for k, v in result.items() if k in fields})
        self.session.set_slide(slide)
        self.session.set_status(
            f"{slide.n_spots} spots ({slide.lattice} lattice, {slide.diameter_px:.1f} px, "
            f"{slide.um_per_px:.3f} µm/px), {slide.n_genes} genes."
        )

    def _done_extract(self, result: dict[str, Any]) -> None:
        features = FeaturesInfo(**result)
        self.session.set_features(features)
        source = "reused from the cache" if features.from_cache else "computed and cached"
        self.session.set_status(
            f"Features {source}: {features.n_spots} spots + {features.n_positions} new "
            f"positions, {features.dims} values each ({features.encoder_id})."
        )

    def _done_train(self, result: dict[str, Any]) -> None:
        info = dict(result.get("info") or {})
        model = ModelInfo(result["path"], int(result["n_genes"]), info, result.get("superres"))
        self.session.set_model(model)
        if model.superres is not None:
            self.session.set_status(
                f"Fitted {model.n_genes} genes on {info.get('n_superpixels')} superpixels of "
                f"{info.get('resolution_um', 0):g} µm; press Predict."
            )
            return
        self.session.set_status(
            f"Trained on {model.info.get('n_train')} spots, {model.n_genes} genes."
        )

    def _done_save_model(self, result: dict[str, Any]) -> None:
        self.session.set_status(f"Model saved to {result['path']}.")

    def _done_load_model(self, result: dict[str, Any]) -> None:
        model = ModelInfo(result["path"], int(result["n_genes"]), dict(result.get("info") or {}))
        self.session.set_model(model)
        self.session.set_status(f"Loaded a model for {model.n_genes} genes.")

    def _done_predict(self, result: dict[str, Any]) -> None:
        reliability = {str(g): (float(r), float(s)) for g, r, s in result.get("reliability") or ()}
        preds = PredictionsInfo(
            result["path"], list(result["genes"]), int(result["n_positions"]), reliability
        )
        self.session.set_predictions(preds)
        self.session.set_status(
            f"Predicted {len(preds.genes)} genes at {preds.n_positions} positions; choose genes "
            "and press Render."
        )

    def _done_render(self, result: dict[str, Any]) -> None:
        maps = MapsInfo(
            path=result["path"],
            genes=list(result["genes"]),
            scale=tuple(result["scale"]),  # type: ignore[arg-type]
            translate=tuple(result["translate"]),  # type: ignore[arg-type]
            limits=[tuple(lim) for lim in result["limits"]],  # type: ignore[misc]
            pitch_um=float(result["pitch_um"]),
            levels=list(result.get("levels") or [result["path"]]),
            sd_levels=list(result.get("sd_levels") or []),
            sd_limits=[tuple(lim) for lim in result.get("sd_limits") or []],  # type: ignore[misc]
            shape=tuple(result.get("shape") or (0, 0)),  # type: ignore[arg-type]
        )
        measured = _measured(result.get("measured"))
        self.session.set_maps(maps, measured)
        self.session.set_status(
            f"Showing {', '.join(maps.genes)} over the tissue ({maps.pitch_um:.1f} µm pixels)."
        )

    def _done_domains(self, result: dict[str, Any]) -> None:
        top = {int(d): [str(g) for g in genes] for d, genes in result["top_genes"].items()}
        scale, translate = tuple(result["scale"]), tuple(result["translate"])
        k, seed = int(result["k"]), int(result.get("seed", 0))
        domains = DomainsInfo(result["path"], k, scale, translate, top, seed)  # type: ignore[arg-type]
        self.session.set_domains(domains)
        self.session.set_status(f"Showing {domains.k} tissue domains and their top genes.")

    def _done_cells(self, result: dict[str, Any]) -> None:
        colour = result["colour"]
        cells = CellsInfo(
            result["labels"],
            result["values"],
            list(result["genes"]),
            int(result["n_cells"]),
            tuple(result["scale"]),  # type: ignore[arg-type]
            tuple(result["translate"]),  # type: ignore[arg-type]
            colour["gene"],
            list(colour["levels"]),
            tuple(colour["limits"]),  # type: ignore[arg-type]
        )
        self.session.set_cells(cells)
        self.session.set_status(f"Showing {cells.n_cells} cells coloured by {cells.gene}.")

    def _done_cells_colour(self, result: dict[str, Any]) -> None:
        cells = self.session.cells
        if cells is None or cells.labels != result.get("labels"):
            return  # cells segmented again since
        limits = tuple(result["limits"])
        cells = replace(cells, gene=result["gene"], colour=list(result["levels"]), limits=limits)
        self.session.set_cells(cells)
        self.session.set_status(f"Showing the cells coloured by {cells.gene}.")

    def _done_measured(self, result: dict[str, Any]) -> None:
        measured = _measured(result)
        self.session.set_measured(measured)
        if measured is not None:
            self.session.set_status(f"Showing {measured.gene}: predicted map and measured spots.")

    def _done_export(self, result: dict[str, Any]) -> None:
        self.session.last_export = result["path"]
        cells = f" with {result['n_cells']} cells" if "n_cells" in result else ""
        self.session.set_status(
            f"Exported to {result['path']}{cells}; it opens with spatialdata.read_zarr and "
            "napari-spatialdata."
        )
        self.session.changed.emit("last_export")


def _measured(result: dict[str, Any] | None) -> MeasuredInfo | None:
    if not result:
        return None
    return MeasuredInfo(result["gene"], result["path"], tuple(result["limits"]))  # type: ignore[arg-type]
