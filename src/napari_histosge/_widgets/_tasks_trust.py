"""Worker tasks that tell how far to trust a map: uncertainty, per-gene reliability, domains.

Runs in the worker process, like :mod:`._tasks_steps`: the module imports only the standard library
at the top. The numbers come from the super-resolution model (:mod:`~.workflows.superres`).
"""

from __future__ import annotations

from typing import Any

from ._files import save_pyramid
from ._task_job import Job
from ._tasks_superres import superres_at, superres_result

__all__ = ["find_domains", "superres_reliability", "uncertainty_files"]


def superres_reliability(
    state: Any, job: Job, slide: Any, preds: Any, genes: list[str]
) -> list[tuple[str, float, float]]:
    """Return ``(gene, reliability_r2, image_share)`` per gene of the fit (none without them).

    Taken from the predictions' per-gene values where they hold them, else from the model.
    """
    info = getattr(preds, "gene_info", None) or {}
    if "reliability_r2" in info and "image_share" in info:
        index = {str(g): i for i, g in enumerate(preds.genes)}
        r2, share = info["reliability_r2"], info["image_share"]
        return [(g, float(r2[index[g]]), float(share[index[g]])) for g in genes if g in index]
    result = superres_result(state, slide, job.context["superres"], job)
    scores = getattr(result.model, "reliability", None)
    if scores is None:
        return []
    job.say("predict", 0, 1, "Scoring each gene's reliability…")
    table = scores()
    rows = []
    for gene in genes:
        if gene in table.index:
            r2, share = table.at[gene, "reliability_r2"], table.at[gene, "image_share"]
            rows.append((str(gene), float(r2), float(share)))
    return rows


def uncertainty_files(state: Any, result: Any, genes: list[str]) -> dict[str, Any]:
    """Save the standard deviations of ``genes``' maps as ``.npy`` levels, with their limits."""
    from napari_histosge._layers import map_limits
    from napari_histosge.workflows.superres import superres_uncertainty_maps

    sd = superres_uncertainty_maps(result, genes=genes)
    stem = state.new_path("sd")
    levels = save_pyramid(sd.data, lambda i: stem.with_name(f"{stem.name}-{i}.npy"))
    return {
        "sd_levels": levels,
        "sd_limits": [list(map_limits(p, from_zero=True)) for p in sd.data],
    }


def find_domains(state: Any, job: Job, slide: Any) -> dict[str, Any]:
    """Cluster the fit's super-resolved expression into ``k`` domains, saved as ``.npy``."""
    import numpy as np

    from napari_histosge.models.domains import superres_domains

    if not job.context.get("superres"):
        raise ValueError("Domains come from the super-resolution model: fit it (Train, superres).")
    # On the grid of the maps shown (a map resolution other than the fit's refits there).
    spec = superres_at(job, job.payload.get("pitch_um"))
    result = superres_result(state, slide, spec, job)
    k, seed = int(job.payload["k"]), int(job.payload.get("seed", 0))
    job.say("domains", 0, 1, f"Clustering the superpixels into {k} domains…")
    domains = superres_domains(result, k=k, seed=seed)
    path = state.new_path("domains", ".npy")
    np.save(path, np.asarray(domains.labels, dtype=np.int32))
    pitch, (x0, y0) = float(domains.pitch_px), domains.origin_px
    return {
        "path": str(path),
        "k": k,
        "seed": seed,
        "scale": [pitch, pitch],
        "translate": [float(y0), float(x0)],
        "top_genes": {int(d): [str(g) for g in genes] for d, genes in domains.top_genes.items()},
    }
