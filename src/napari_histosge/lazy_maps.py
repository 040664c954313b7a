"""Gene maps as dask arrays, computed one block of genes at a time.

The placement of every map pixel (which position it takes its value from, or none: off
tissue) does not depend on the gene, so it is computed once, as an integer index map, by
:func:`~napari_histosge.maps.rasterize` itself. The maps of all genes are then a lazy
``(genes, y, x)`` dask array whose blocks gather that index map from the predictions: writing
them to a store computes one block at a time, so memory holds the predictions plus a few
blocks, whatever the number of genes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .maps import GeneMaps, rasterize
from .predict import Predictions

if TYPE_CHECKING:
    from .geometry import SpotGeometry

__all__ = ["block_genes", "rasterize_lazy"]


def block_genes(
    predictions: Predictions, genes: Sequence[str] | None, genes_per_block: int
) -> tuple[list[str], np.ndarray]:
    """Check the genes of a lazy map, a block of ``genes_per_block`` at a time; names, columns.

    Examples
    --------
    >>> p = Predictions(["a", "b"], np.zeros((1, 2)), np.zeros((1, 2)), np.array(["spot"]),
    ...                 np.array(["s"]), 1.0)
    >>> block_genes(p, ["b"], 8)
    (['b'], array([1]))
    """
    names = list(predictions.genes) if genes is None else list(genes)
    if not names:
        raise ValueError("Expected at least one gene to render, found none.")
    if genes_per_block < 1:
        raise ValueError(f"Expected `genes_per_block` >= 1, found `{genes_per_block}`.")
    return names, predictions.gene_index(names)


def _gather(values: np.ndarray, index: np.ndarray, g0: int, g1: int) -> np.ndarray:
    """Render genes ``g0:g1``: each pixel copies its position's value; NaN off tissue."""
    h, w = index.shape
    flat = index.reshape(-1)
    inside = np.flatnonzero(flat >= 0)
    out = np.full((g1 - g0, h * w), np.nan, dtype=np.float32)
    out[:, inside] = values[flat[inside], g0:g1].T
    return out.reshape(g1 - g0, h, w)


def rasterize_lazy(
    predictions: Predictions,
    *,
    genes: Sequence[str] | None = None,
    pitch_px: float | None = None,
    method: Literal["nearest", "gaussian"] = "nearest",
    geometry: SpotGeometry | None = None,
    genes_per_block: int = 8,
) -> GeneMaps:
    """Rasterise like :func:`~napari_histosge.maps.rasterize`, into a lazy dask array.

    The ``"nearest"`` maps are identical to ``rasterize``'s, computed block by block of
    ``genes_per_block`` genes when read or written; ``"gaussian"`` (and more than 2**24
    positions, beyond float32's exact integers) falls back to the eager ``rasterize``.

    Parameters
    ----------
    predictions
        Predictions at the positions.
    genes
        Genes to render; all predicted genes by default.
    pitch_px
        Map pixel size in H&E pixels; a quarter of the position spacing by default.
    method
        Interpolation between positions.
    geometry
        Bounds the map to the image when given.
    genes_per_block
        Genes per dask block.

    Returns
    -------
    The maps; ``data`` is a dask array of chunks ``(genes_per_block, h, w)``.

    Examples
    --------
    >>> xy = np.array([[10.0, 10.0], [30.0, 10.0], [10.0, 30.0], [30.0, 30.0]])
    >>> p = Predictions(["g"], xy, np.arange(4.0)[:, None], np.array(["spot"] * 4),
    ...                 np.array(list("abcd")), 20.0)
    >>> lazy = rasterize_lazy(p, pitch_px=5.0)
    >>> bool(np.array_equal(np.asarray(lazy.data), rasterize(p, pitch_px=5.0).data,
    ...                     equal_nan=True))
    True
    """
    import dask.array as da

    if method != "nearest" or len(predictions.positions_px) >= 2**24:
        return rasterize(
            predictions, genes=genes, pitch_px=pitch_px, method=method, geometry=geometry
        )
    names, cols = block_genes(predictions, genes, genes_per_block)
    m = len(predictions.positions_px)
    probe = Predictions(
        genes=["index"],
        positions_px=predictions.positions_px,
        values=np.arange(m, dtype=np.float64)[:, None],
        kind=predictions.kind,
        ids=predictions.ids,
        spot_diameter_px=predictions.spot_diameter_px,
    )
    placed = rasterize(probe, pitch_px=pitch_px, method="nearest", geometry=geometry)
    plane = placed.data[0]
    index = np.rint(np.nan_to_num(plane, nan=-1.0)).astype(np.int32)
    values: Any = np.asarray(predictions.values)
    if not np.array_equal(cols, np.arange(values.shape[1])):
        values = values[:, cols]
    h, w = index.shape
    g = len(names)
    step = int(genes_per_block)
    chunks = (tuple(min(step, g - g0) for g0 in range(0, g, step)), (h,), (w,))

    def block(block_info: dict[Any, Any] | None = None) -> np.ndarray:
        assert block_info is not None
        g0, g1 = block_info[None]["array-location"][0]
        return _gather(values, index, int(g0), int(g1))

    data = da.map_blocks(block, chunks=chunks, dtype=np.float32, meta=np.empty((0, 0, 0), "f4"))
    return GeneMaps(data=data, genes=names, pitch_px=placed.pitch_px, origin_px=placed.origin_px)
