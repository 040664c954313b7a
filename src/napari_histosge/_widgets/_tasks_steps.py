"""The dock's heavy work, run in a worker process of its own.

Every import of the core, torch, timm, scanpy and spatialdata that the dock needs happens in this
module, inside the worker process that :class:`~napari_histosge._widgets._worker_process.Runner`
starts with ``spawn``: the viewer's process never shares an interpreter lock or an OpenGL context
with this work. The module itself imports only the standard library at the top, so the viewer can
name it as the worker's entry point without loading anything.

Each task is ``task(state, job) -> dict`` (see :class:`~._task_job.Job`) and returns small values;
arrays go into ``.npy`` files in the session folder. The job's context describes the session's
slide, features, model and predictions, so a fresh worker (after a Cancel that had to stop the
process, or a crash) rebuilds what it needs from the store and the session folder.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._files import save_pyramid
from ._task_job import Job, plain
from ._tasks_cells import colour_cells, export_cells, segment_cells
from ._tasks_open import model_features, open_image_only, open_slide
from ._tasks_superres import (
    fit_superres,
    superres_at,
    superres_export,
    superres_maps_for,
    superres_predict,
    superres_result,
)
from ._tasks_trust import find_domains, superres_reliability, uncertainty_files

__all__ = ["TASKS", "WorkerState", "train_form_defaults", "warm_up"]


class WorkerState:
    """What the worker holds between tasks, each with the context entry it was built from."""

    def __init__(self, session_dir: Path) -> None:
        self.session_dir = Path(session_dir)
        self.slide: Any = None
        self.slide_spec: Any = None
        self.features: Any = None
        self.features_spec: Any = None
        self.model: Any = None
        self.model_path: str | None = None
        self.predictions: Any = None
        self.predictions_path: str | None = None
        self.superres: Any = None

    def new_path(self, stem: str, suffix: str = "") -> Path:
        """Return a new file name in the session folder."""
        return self.session_dir / f"{stem}-{uuid.uuid4().hex[:8]}{suffix}"


def warm_up() -> dict[str, Any]:
    """Import the core and its heavy libraries, before the first task needs them."""
    import os

    import scipy.linalg  # noqa: F401 - loads scipy's own BLAS, limited below
    import torch
    from threadpoolctl import threadpool_limits

    import napari_histosge.expression  # noqa: F401
    import napari_histosge.features  # noqa: F401
    import napari_histosge.models.attention  # noqa: F401
    import napari_histosge.train  # noqa: F401
    import napari_histosge.workflows.pipeline  # noqa: F401

    # Leave a core to the viewer: torch's threads and those of the BLAS and OpenMP libraries
    # loaded so far (the superres fit is numpy and scipy), for the worker's lifetime.
    threads = max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)
    return {"pid": os.getpid()}


def train_form_defaults() -> tuple[dict[str, Any], list[str]]:
    """Return the training options' defaults and the model modes (light: no torch import).

    Examples
    --------
    >>> defaults, modes = train_form_defaults()
    >>> "improved" in modes
    True
    """
    import typing
    from dataclasses import asdict

    from napari_histosge.models import TrainConfig

    hint = typing.get_type_hints(TrainConfig)["mode"]
    modes = [str(m) for m in typing.get_args(hint)] or [TrainConfig().mode]
    return asdict(TrainConfig()), modes


# ---------------------------------------------------------------------------------------------
# Rebuilding the session's objects


def _slide(state: WorkerState, context: dict[str, Any]) -> Any:
    from napari_histosge.workflows.pipeline import Slide

    spec = context.get("slide")
    if spec is None:
        raise ValueError("Open a slide first.")
    if spec.get("image_only"):
        # Without spots, the positions are a lattice sized by the model: part of the slide.
        model = _model(state, context) if context.get("model") else None
        spec = {**spec, "model": context.get("model")}
    if state.slide is None or state.slide_spec != spec:
        if spec.get("image_only"):
            state.slide = open_image_only(spec, model)
        else:
            state.slide = Slide.open(Path(spec["source"]), **spec["keys"])
        state.slide_spec = spec
        state.features = state.features_spec = None
        state.predictions = state.predictions_path = None
    return state.slide


def _features(state: WorkerState, job: Job, context: dict[str, Any] | None = None) -> Any:
    from napari_histosge.workflows.pipeline import ExtractOptions, iter_extract

    context = job.context if context is None else context
    slide = _slide(state, context)
    spec = context.get("features")
    if spec is None and context.get("model") and job.payload.get("options") is not None:
        model = _model(state, context)
        spec = {"model": context["model"], **job.payload["options"]}
        if state.features is None or state.features_spec != spec:
            state.features = model_features(slide, model, job.payload["options"], job)
            state.features_spec = spec
        return state.features
    if spec is None:
        raise ValueError("Extract features first.")
    if state.features is None or state.features_spec != spec:
        options = ExtractOptions(**_extract_kwargs(spec))
        state.features = job.run(iter_extract(slide, options=options))
        state.features_spec = spec
    return state.features


def _model(state: WorkerState, context: dict[str, Any]) -> Any:
    from napari_histosge.models.checkpoints import load_checkpoint

    path = context.get("model")
    if path is None:
        raise ValueError("Train or load a model first.")
    if state.model is None or state.model_path != path:
        state.model = load_checkpoint(Path(path))
        state.model_path = path
    return state.model


def _predictions(state: WorkerState, context: dict[str, Any]) -> Any:
    from napari_histosge.predict import Predictions

    path = context.get("predictions")
    if path is None:
        raise ValueError("Predict first.")
    if state.predictions is None or state.predictions_path != path:
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            values: dict[str, Any] = {k: z[k] for k in z.files}
        values["genes"] = [str(g) for g in values["genes"]]
        values["spot_diameter_px"] = float(values["spot_diameter_px"])
        values["meta"] = json.loads(str(values["meta"]))
        if "gene_info" in values:
            info = json.loads(str(values["gene_info"]))
            values["gene_info"] = {k: np.asarray(v) for k, v in info.items()}
        state.predictions = Predictions(**values)
        state.predictions_path = path
    return state.predictions


def _extract_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(spec)
    if kwargs.get("patch_sizes") is not None:
        kwargs["patch_sizes"] = tuple(float(s) for s in kwargs["patch_sizes"])
    return kwargs


# ---------------------------------------------------------------------------------------------
# Tasks


def extract(state: WorkerState, job: Job) -> dict[str, Any]:
    """Embed the spots and the new positions (features are cached in the store)."""
    state.features = None
    features = _features(state, job, {**job.context, "features": job.payload["options"]})
    spots = features.spots
    return {
        "options": job.payload["options"],
        "from_cache": bool(features.from_cache),
        "n_spots": len(spots.features),
        "n_positions": len(features.positions_px),
        "dims": int(spots.features.shape[1]),
        "encoder_id": str(spots.meta.get("encoder_id", "")),
    }


def train(state: WorkerState, job: Job) -> dict[str, Any]:
    """Train a model with a live loss curve; Cancel discards the run."""
    from napari_histosge import Cancelled
    from napari_histosge.models import TrainConfig
    from napari_histosge.models.checkpoints import save_checkpoint
    from napari_histosge.workflows.pipeline import iter_train

    slide = _slide(state, job.context)
    if job.payload["config"].get("mode") == "superres":
        return fit_superres(state, job, slide)
    features = _features(state, job)
    config, n_genes = TrainConfig(**job.payload["config"]), int(job.payload["n_top_genes"])
    gen = iter_train(
        slide, features=features, config=config, n_top_genes=n_genes, should_stop=job.stop
    )
    model = job.run(gen)
    if job.stop():
        raise Cancelled("training was cancelled")
    path = save_checkpoint(model, state.new_path("model"))
    state.model, state.model_path = model, str(path)
    return {"path": str(path), "n_genes": len(model.genes), "info": plain(model.info)}


def save_model(state: WorkerState, job: Job) -> dict[str, Any]:
    """Save the session's model as a checkpoint folder."""
    from napari_histosge.models.checkpoints import save_checkpoint

    # The file dialog asked before an existing folder is chosen; the store's overwrite rule
    # still refuses anything that is not a checkpoint this tool wrote.
    path = save_checkpoint(_model(state, job.context), Path(job.payload["path"]), overwrite=True)
    return {"path": str(path)}


def load_model(state: WorkerState, job: Job) -> dict[str, Any]:
    """Load a checkpoint folder."""
    model = _model(state, {"model": str(Path(job.payload["path"]).resolve())})
    return {"path": state.model_path, "n_genes": len(model.genes), "info": plain(model.info)}


def predict(state: WorkerState, job: Job) -> dict[str, Any]:
    """Predict at the spots and the new positions; genes come back ranked by variability."""
    from dataclasses import fields

    import numpy as np

    from napari_histosge.workflows.pipeline import predict_slide

    slide = _slide(state, job.context)
    job.say("predict", 0, 1, "Predicting…")
    if job.context.get("superres"):
        preds = superres_predict(state, job, slide)
    else:
        features = _features(state, job)
        model = _model(state, job.context)
        # A slide without a table has no measured spots for the model to attend to.
        measured = not job.context["slide"].get("image_only")
        preds = predict_slide(slide, features=features, model=model, use_measured=measured)
    path = state.new_path("predictions", ".npz")
    arrays = {f.name: getattr(preds, f.name) for f in fields(preds)}
    arrays["meta"] = json.dumps(preds.meta, default=str)
    # Per-gene values (reliability) as JSON text: the file loads without pickle.
    info = getattr(preds, "gene_info", None) or {}
    arrays["gene_info"] = json.dumps({k: np.asarray(v).tolist() for k, v in info.items()})
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    state.predictions, state.predictions_path = preds, str(path)
    ranked = preds.top_genes(len(preds.genes))
    out = {"path": str(path), "genes": ranked, "n_positions": len(preds.positions_px)}
    if job.context.get("superres"):
        out["reliability"] = superres_reliability(state, job, slide, preds, ranked)
    return out


def _pitch_px(slide: Any, pitch_um: float | None) -> float | None:
    return float(pitch_um) / float(slide.geometry.um_per_px) if pitch_um else None


def render(state: WorkerState, job: Job) -> dict[str, Any]:
    """Rasterise the chosen genes at the chosen resolution into a ``.npy`` stack."""
    from napari_histosge._layers import map_limits
    from napari_histosge.workflows.pipeline import render_maps

    slide = _slide(state, job.context)
    preds = _predictions(state, job.context)
    genes, pitch_px = list(job.payload["genes"]), _pitch_px(slide, job.payload.get("pitch_um"))
    job.say("render", 0, 1, "Rendering…")
    sd: dict[str, Any] = {}
    if job.context.get("superres"):
        maps = superres_maps_for(state, job, slide, genes, job.payload.get("pitch_um"))
        result = superres_result(state, slide, superres_at(job, job.payload.get("pitch_um")), job)
        sd = uncertainty_files(state, result, list(maps.genes))
    else:
        maps = render_maps(slide, predictions=preds, genes=genes, pitch_px=pitch_px, smooth=True)
    stem = state.new_path("maps")
    levels = save_pyramid(maps.data, lambda i: stem.with_name(f"{stem.name}-{i}.npy"))
    out: dict[str, Any] = {
        "path": levels[0],
        "levels": levels,
        "genes": list(maps.genes),
        "scale": list(maps.scale),
        "translate": list(maps.translate),
        "limits": [list(map_limits(plane)) for plane in maps.data],
        "pitch_um": float(maps.pitch_px) * float(slide.geometry.um_per_px),
        "measured": None,
        "shape": list(maps.data.shape[1:]),
        **sd,
    }
    if job.payload.get("measured"):
        out["measured"] = _measured_file(state, slide, genes[0])
    return out


def _measured_file(state: WorkerState, slide: Any, gene: str) -> dict[str, Any]:
    import numpy as np

    from napari_histosge._layers import contrast_limits

    values = np.asarray(slide.measured([gene])[:, 0], dtype=np.float64)
    path = state.new_path("measured", ".npy")
    np.save(path, values)
    return {"gene": gene, "path": str(path), "limits": list(contrast_limits(values))}


def domains(state: WorkerState, job: Job) -> dict[str, Any]:
    """Cluster the super-resolved expression into tissue domains (a label image)."""
    return find_domains(state, job, _slide(state, job.context))


def cells(state: WorkerState, job: Job) -> dict[str, Any]:
    """Segment the nuclei and average the maps over each cell (ids, values, one gene's colours)."""
    return segment_cells(state, job, _slide(state, job.context))


def measured(state: WorkerState, job: Job) -> dict[str, Any]:
    """Measured expression of one gene at the spots, as a ``.npy`` file."""
    return _measured_file(state, _slide(state, job.context), str(job.payload["gene"]))


def export(state: WorkerState, job: Job) -> dict[str, Any]:
    """Render every predicted gene and write predictions, maps and features into a store."""
    from napari_histosge.workflows.pipeline import export_slide, render_maps

    slide = _slide(state, job.context)
    if job.context.get("superres"):
        job.say("export", 0, 2, "Rendering all genes…")
        path = superres_export(state, job, slide)
        if not job.payload.get("cells"):
            return {"path": path}
        info = export_cells(state, job, slide, path)  # the cells segmented in the dock go in too
        return {"path": path, "n_cells": int(info["n_cells"])}
    preds = _predictions(state, job.context)
    job.say("export", 0, 2, "Rendering all genes…")
    pitch_px = _pitch_px(slide, job.payload.get("pitch_um"))
    maps = render_maps(slide, predictions=preds, pitch_px=pitch_px, smooth=True)
    job.say("export", 1, 2, "Writing the store…")
    out = export_slide(
        slide,
        predictions=preds,
        maps=maps,
        out=job.payload["path"],
        overwrite=bool(job.payload["overwrite"]),
    )
    return {"path": str(Path(out).resolve())}


TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    "open": open_slide,
    "extract": extract,
    "train": train,
    "save_model": save_model,
    "load_model": load_model,
    "predict": predict,
    "render": render,
    "measured": measured,
    "export": export,
    "domains": domains,
    "cells": cells,
    "cells_colour": colour_cells,
}
