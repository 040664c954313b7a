"""Worker tasks for cells: nuclei segmented on the fit's area, each cell's values, their colours.

Runs in the worker process, like :mod:`._tasks_steps`: the module imports only the standard library
at the top. The nuclei come from :mod:`napari_histosge.cells` (segmented over the super-resolution
fit's grid, grown into cell footprints), and each cell's values are the super-resolved predictions
averaged over its footprint, as ``histosge run --cells`` writes them. What the viewer gets are
``.npy`` files: the cell ids on a coarser grid placed on the H&E, the ``(cells, genes)`` values, and
for one gene an image where every pixel of a cell holds its value (NaN off the cells), so that
colouring costs the viewer no computation.
"""

from __future__ import annotations

import math
from typing import Any

from ._files import save_pyramid
from ._task_job import Job
from ._tasks_superres import superres_at, superres_result

__all__ = ["colour_cells", "export_cells", "segment_cells"]

#: Pixel size (µm) of the cell ids shown (a nucleus of 4-15 µm is 2-7 pixels across), at most
#: ``MAX_SIDE`` pixels a side. The colours come with coarser levels (:func:`save_pyramid`):
#: the viewer's insertion of a layer grows with its finest texture (at 1 µm, 1514 x 744 pixels
#: of the sample, napari's two deferred parts took 56-86 ms each at load 4 on 2 cores; at 2 µm,
#: 505 x 248 pixels, 26-34 ms).
SHOWN_UM = 2.0
MAX_SIDE = 8192


def _grid_nuclei(state: Any, job: Job, slide: Any, grid: Any) -> Any:
    """Return the nuclei on ``grid``: kept from the last segmentation, cached, or segmented.

    Nuclei read from the store's cache are read there again (the cache may have been replaced
    since); segmented ones that the store could not cache (a slide held in memory) are kept
    in the worker, one set at a time, until the next segmentation or the worker's end.
    """
    from napari_histosge.cells.segment import NucleiOptions
    from napari_histosge.cells.table import grid_nuclei_key, iter_grid_nuclei

    opts = NucleiOptions()
    key, _ = grid_nuclei_key(slide, grid, opts)
    kept = getattr(state, "cells_nuclei", None)
    if kept is not None and kept[0] is slide and kept[1] == key and kept[2].temporary:
        return kept[2]  # segmented here and not cached: their temporary tiles are still there
    nuc = job.run(iter_grid_nuclei(slide, grid, opts))
    if kept is not None and kept[2] is not nuc:
        kept[2].close()
    state.cells_nuclei = (slide, key, nuc)
    return nuc


def segment_cells(state: Any, job: Job, slide: Any) -> dict[str, Any]:
    """Segment the nuclei over the fit's area; save the cell ids, values and one gene's colours.

    Payload: ``pitch_um`` (the maps' resolution; ``None``: the fit's) and ``gene`` (the gene
    coloured first; ``None``: the fit's first gene). Nuclei segmented before on the same grid
    and image, by this worker or into the store's cache, are not segmented again.
    """
    import numpy as np

    from napari_histosge.cells.segment import NucleiOptions
    from napari_histosge.cells.table import cell_values, iter_cell_membership

    if not job.context.get("superres"):
        raise ValueError("Cells take their values from the super-resolution model: fit it first.")
    result = superres_result(state, slide, superres_at(job, job.payload.get("pitch_um")), job)
    grid = result.grid
    nuc = _grid_nuclei(state, job, slide, grid)
    if nuc.n == 0:
        raise ValueError("Found no nuclei in the H&E under the map: there are no cells to show.")
    member, _ = job.run(iter_cell_membership(nuc, grid, NucleiOptions().expand_um))
    job.say("cells", 0, 1, f"Averaging the maps over {nuc.n} cells…")
    genes = [str(g) for g in result.genes]
    values = cell_values(member, result, None, genes)
    side = max(nuc.labels.shape)
    stride = max(1, round(SHOWN_UM / nuc.um_per_px), math.ceil(side / MAX_SIDE))
    labels = np.asarray(nuc.labels[::stride, ::stride].compute(), dtype=np.int32)
    factor, (ox, oy) = float(nuc.factor), nuc.offset_px
    labels_path, values_path = (
        state.new_path("cells", ".npy"),
        state.new_path("cell-values", ".npy"),
    )
    np.save(labels_path, labels)
    np.save(values_path, np.asarray(values, dtype=np.float32))
    pitch = stride * factor  # scale-0 pixels per shown pixel; its centres as the core reads them
    out = {
        "labels": str(labels_path),
        "values": str(values_path),
        "genes": genes,
        "n_cells": int(nuc.n),
        "scale": [pitch, pitch],
        "translate": [oy + 0.5 * factor, ox + 0.5 * factor],
    }
    gene = job.payload.get("gene") or genes[0]
    out["colour"] = _colour_file(state, labels, values, genes, str(gene))
    return out


def export_cells(state: Any, job: Job, slide: Any, out: str) -> dict[str, Any]:
    """Write ``histosge_nuclei`` and ``histosge_cells`` into the exported store ``out``.

    The same elements as ``histosge run --cells``, from the fit at the export's resolution;
    the nuclei the Cells section segmented are used again (segmented once more only when the
    export's grid differs from theirs and the store has none cached for it).
    """
    from napari_histosge.cells.table import iter_add_cells

    spec = superres_at(job, job.payload.get("pitch_um"))
    result = superres_result(state, slide, spec, job)
    nuc = _grid_nuclei(state, job, slide, result.grid)
    job.say("export", 1, 2, f"Writing {nuc.n} cells…")
    return job.run(iter_add_cells(out, slide, result, nuclei=nuc, seed=int(spec["seed"])))


def _colour_file(
    state: Any, labels: Any, values: Any, genes: list[str], gene: str
) -> dict[str, Any]:
    """Save an image of ``gene``'s value in each cell (NaN off the cells), with its limits.

    The image is saved as ``.npy`` levels, finest first (coarser ones average 2 x 2 blocks).
    """
    import numpy as np

    from napari_histosge._layers import map_limits

    if gene not in genes:
        raise ValueError(f"Expected a gene of the fit, found `{gene}`.")
    per_cell = np.asarray(values[:, genes.index(gene)], dtype=np.float32)
    lut = np.concatenate([np.array([np.nan], np.float32), per_cell])
    image = lut[np.asarray(labels)]
    stem = state.new_path("cell-colour")
    levels = save_pyramid(image[None], lambda i: stem.with_name(f"{stem.name}-{i}.npy"))
    limits = map_limits(per_cell) if len(per_cell) else (0.0, 1.0)
    return {"gene": gene, "levels": levels, "limits": [float(v) for v in limits]}


def colour_cells(state: Any, job: Job) -> dict[str, Any]:
    """Colour the segmented cells by another gene, from their saved ids and values."""
    import numpy as np

    p = job.payload
    labels = np.load(p["labels"], mmap_mode="r")
    values = np.load(p["values"], mmap_mode="r")
    colour = _colour_file(state, labels, values, list(p["genes"]), str(p["gene"]))
    return {**colour, "labels": p["labels"]}
