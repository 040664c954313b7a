"""Worker tasks for the super-resolution mode: fit, predict, maps and export.

Runs in the worker process, like :mod:`._tasks_steps`: the module imports only the standard
library at the top. The super-resolution model (:mod:`~.workflows.superres`) is fitted to one
slide's units and is not saved; the session's context names its settings, so a fresh worker
refits it (deterministically, from the superpixel features cached in the store).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._task_job import Job

__all__ = [
    "fit_superres",
    "superres_at",
    "superres_export",
    "superres_maps_for",
    "superres_predict",
    "superres_result",
]


# ---------------------------------------------------------------------------------------------
# Super-resolution


def superres_spec(payload: dict[str, Any]) -> dict[str, Any]:
    """Return the settings that define a fit (what a fresh worker refits from)."""
    options = dict(payload.get("options") or {})
    return {
        "seed": int(payload.get("seed", 0)),
        "n_top_genes": int(payload.get("n_top_genes", 1000)),
        "resolution_um": payload.get("resolution_um") or None,
        "encoder": str(options.get("encoder") or "histology"),
        "weights": options.get("weights"),
        "device": options.get("device"),
    }


def superres_result(state: Any, slide: Any, spec: dict[str, Any], job: Job) -> Any:
    """Return the fitted model for ``spec`` (kept in the worker; refitted when missing)."""
    from napari_histosge.workflows.superres import SuperResOptions, iter_superres

    key = repr(sorted(spec.items()))
    cache = getattr(state, "superres", None)
    if cache is None or cache[0] is not slide or key not in cache[1]:
        opts = SuperResOptions.from_seed(
            spec["seed"],
            resolution_um=spec["resolution_um"],
            encoder=spec["encoder"],
            weights=spec["weights"],
            device=spec["device"],
        )
        gen = iter_superres(slide, n_top_genes=spec["n_top_genes"], options=opts)
        result = job.run(gen)
        # One slide's fits, one per resolution (rendering at another resolution refits).
        state.superres = (slide, {**({} if cache is None or cache[0] is not slide else cache[1])})
        state.superres[1][key] = result
    return state.superres[1][key]


def fit_superres(state: Any, job: Job, slide: Any) -> dict[str, Any]:
    """Fit the super-resolution model (superpixel features are cached in the store)."""
    spec = superres_spec(job.payload)
    result = superres_result(state, slide, spec, job)
    info = {
        "mode": "superres",
        "resolution_um": float(result.resolution_um),
        "n_superpixels": int(result.grid.n),
        "n_train": len(slide.geometry.spot_ids),
    }
    return {"path": "", "n_genes": len(result.genes), "info": info, "superres": spec}


def superres_predict(state: Any, job: Job, slide: Any) -> Any:
    """Predict each unit: the fitted map's mean over the unit's footprint."""
    from napari_histosge.workflows.superres import superres_predictions

    result = superres_result(state, slide, job.context["superres"], job)
    return superres_predictions(slide, result)


def _at(spec: dict[str, Any], resolution_um: float | None) -> dict[str, Any]:
    return spec if not resolution_um else {**spec, "resolution_um": float(resolution_um)}


def superres_at(job: Job, resolution_um: float | None) -> dict[str, Any]:
    """Return the session's fit settings at ``resolution_um`` (``None``: as fitted)."""
    return _at(job.context["superres"], resolution_um)


def superres_maps_for(
    state: Any, job: Job, slide: Any, genes: list[str] | None, resolution_um: float | None
) -> Any:
    """Render ``genes`` (all: ``None``) from a fit at ``resolution_um`` (``None``: as fitted)."""
    from napari_histosge.workflows.superres import superres_maps

    spec = _at(job.context["superres"], resolution_um)
    return superres_maps(superres_result(state, slide, spec, job), genes=genes)


def superres_export(state: Any, job: Job, slide: Any) -> str:
    """Write the per-unit predictions and every gene's superpixel maps into a store."""
    import inspect

    from napari_histosge.workflows.superres import export_superres

    spec = _at(job.context["superres"], job.payload.get("pitch_um"))
    result = superres_result(state, slide, spec, job)
    job.say("export", 1, 2, "Writing the store…")
    # The domains shown in the dock, found again with the same number and seed.
    found, extra = job.payload.get("domains"), {}
    if found and "domains" in inspect.signature(export_superres).parameters:
        extra = {"domains": int(found["k"]), "seed": int(found["seed"])}
    path, _ = export_superres(
        slide, result, out=job.payload["path"], overwrite=bool(job.payload["overwrite"]), **extra
    )
    return str(Path(path).resolve())
