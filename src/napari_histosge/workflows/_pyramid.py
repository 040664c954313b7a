"""The coarser scales of a multiscale map, each computed from the scale before in one pass.

SpatialData builds an image's pyramid with xarray's ``coarsen(...).mean()``, a reduction over
small strided axes that costs several times the arithmetic. :func:`coarsen_mean` computes the
same values (the mean of the finite values of each 2x2 block, NaN where there are none, an odd
side's first row or column dropped) as four strided adds, and :func:`rebuild_pyramid` swaps it
in for every coarser scale of a parsed image: each block of a scale is computed from the block
of the scale before, so a lazy map is rendered once for all its scales.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["coarsen_mean", "keep_mantissa", "rebuild_pyramid"]

#: Largest side of a block of the scale before that one task coarsens (an even number).
_BLOCK = 2048


def keep_mantissa(a: np.ndarray, bits: int) -> np.ndarray:
    """Round float32 ``a`` to ``bits`` mantissa bits (the others zero), in place; ``a``.

    To the nearest such value, ties away from zero: the relative error is at most
    ``2**-(bits + 1)``. NaN stays NaN, and finite values of ``a`` must stay below the largest
    float32 once rounded.

    Examples
    --------
    >>> keep_mantissa(np.array([1.2345678, 0.0, np.nan], dtype=np.float32), 7).tolist()
    [1.234375, 0.0, nan]
    """
    if not 0 <= bits <= 22:
        raise ValueError(f"Expected 0 to 22 mantissa bits to keep, found `{bits}`.")
    view = a.view(np.uint32)
    view += np.uint32(1 << (22 - bits))
    view &= np.uint32((0xFFFFFFFF << (23 - bits)) & 0xFFFFFFFF)
    return a


def coarsen_mean(a: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Halve the last two axes of float32 ``a``: the mean of each 2x2 block's finite values.

    Equal to xarray's ``coarsen(y=2, x=2, boundary="trim", side="right").mean()`` (which
    drops the first row or column of an odd side): NaN where a block holds no finite value.
    ``bits`` keeps that many mantissa bits of the result (see :func:`keep_mantissa`). Where
    every channel has its NaN at the same pixels (a map's: off its grid), the blocks are
    plain sums and only those on the grid's edge are counted (twice as fast, same values).

    Examples
    --------
    >>> a = np.array([[[1.0, 3.0], [np.nan, 5.0]]], dtype=np.float32)
    >>> coarsen_mean(a).tolist()
    [[[3.0]]]
    """
    h, w = a.shape[-2] // 2 * 2, a.shape[-1] // 2 * 2
    oy, ox = a.shape[-2] - h, a.shape[-1] - w
    q = [[a[..., oy + i : oy + h : 2, ox + j : ox + w : 2] for j in (0, 1)] for i in (0, 1)]
    nan = np.isnan(a).reshape(-1, *a.shape[-2:])
    if len(nan) and (nan == nan[:1]).all():
        total = _mean_shared_nan(q, ~nan[0, oy:, ox:])
    else:
        total = _mean_finite(q)
    return total if bits is None else keep_mantissa(total, bits)


def _mean_finite(q: list[list[np.ndarray]]) -> np.ndarray:
    """Mean of the finite values of the four quarters ``q``, summed in xarray's order."""
    shape = q[0][0].shape
    count = np.zeros(shape, np.float32)
    rows = []
    for i in (0, 1):  # each row's pair first, then the two rows: xarray's order of the sums
        part = np.zeros(shape, np.float32)
        for j in (0, 1):
            finite = ~np.isnan(q[i][j])
            np.add(part, q[i][j], out=part, where=finite)
            count += finite
        rows.append(part)
    total = rows[0]
    total += rows[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        total /= count
    return total


def _mean_shared_nan(q: list[list[np.ndarray]], finite: np.ndarray) -> np.ndarray:
    """:func:`_mean_finite` where every channel is finite at ``finite`` (2-D) and NaN elsewhere.

    Plain sums in the same order (NaN wherever a quarter is), then the blocks with one to three
    finite quarters summed again without their NaN.
    """
    total = q[0][0] + q[0][1]
    total += q[1][0] + q[1][1]
    total *= np.float32(0.25)  # exact, as the division by a count of 4
    f = [finite[i::2, j::2][: total.shape[-2], : total.shape[-1]] for i in (0, 1) for j in (0, 1)]
    count = f[0].astype(np.float32) + f[1] + f[2] + f[3]
    rows, cols = np.nonzero((count > 0) & (count < 4))
    if len(rows):
        part = np.stack([q[i][j][..., rows, cols] for i in (0, 1) for j in (0, 1)])
        part[np.isnan(part)] = 0.0
        edge = (part[0] + part[1]) + (part[2] + part[3])
        edge /= count[rows, cols]
        total[..., rows, cols] = edge
    return total


def _even_blocks(size: int) -> tuple[int, ...]:
    """Blocks of an even ``size``: ``_BLOCK`` long, the last one shorter (still even)."""
    return tuple(min(_BLOCK, size - s) for s in range(0, size, _BLOCK)) or (0,)


def _coarsen_lazy(prev: Any, bits: int | None) -> Any:
    """Coarsen the dask array ``prev`` ``(c, y, x)`` block by block (its blocks of genes)."""
    _, h, w = prev.shape
    even = prev[:, h % 2 :, w % 2 :]
    if any(s % 2 for s in even.chunks[1] + even.chunks[2]):
        even = even.rechunk({1: _even_blocks(even.shape[1]), 2: _even_blocks(even.shape[2])})
    halved = (even.chunks[0], *(tuple(s // 2 for s in c) for c in even.chunks[1:]))
    return even.map_blocks(
        coarsen_mean, bits=bits, chunks=halved, dtype=np.float32, meta=np.empty((0, 0, 0), "f4")
    )


def _gene_chunks(chunks: Any, block: int, tile_bytes: int, chunk_bytes: int) -> Any:
    """``chunks`` with as many genes per chunk as fit in ``chunk_bytes`` (divides ``block``)."""
    n = sum(chunks[0])
    fit = max(1, min(block, chunk_bytes // max(tile_bytes, 1)))
    genes = max(d for d in range(1, fit + 1) if block % d == 0)
    if genes <= max(chunks[0]):
        return chunks
    return (tuple(min(genes, n - g) for g in range(0, n, genes)), *chunks[1:])


def rebuild_pyramid(
    tree: Any, bits: int | None = None, *, source: Any = None, chunk_bytes: int | None = None
) -> Any:
    """Compute each coarser scale of the parsed image ``tree`` from the scale before it.

    Every scale below the finest is :func:`coarsen_mean` of the one above; ``tree`` is changed
    in place and returned. Shapes, coordinates and transformations stay those that SpatialData
    parsed; ``bits`` keeps that many mantissa bits of the coarser scales (the finest is left
    as it is). ``source``, a dask array of the finest scale's values (the lazy maps before
    SpatialData chunked them), is coarsened a block of its genes at a time rather than a
    chunk of the finest scale at a time (the same values). ``chunk_bytes`` lets a coarser
    scale's chunks hold several genes, as many as fit in that many bytes (a divisor of the
    source's block of genes); otherwise each scale keeps the chunks SpatialData parsed.

    Examples
    --------
    >>> from spatialdata.models import Image2DModel
    >>> img = Image2DModel.parse(np.ones((1, 64, 64), "float32"), scale_factors=[2])
    >>> float(rebuild_pyramid(img)["scale1"]["image"].mean())
    1.0
    """
    names = sorted(tree.children, key=lambda s: int(s.removeprefix("scale")))
    prev = tree[names[0]]["image"].data
    if source is not None and hasattr(source, "dask") and source.shape == prev.shape:
        prev = source
    block = max(prev.chunks[0])
    for name in names[1:]:
        arr = tree[name]["image"]
        data = _coarsen_lazy(prev, bits)
        if data.shape != arr.shape:
            raise ValueError(f"Expected scale `{name}` of shape {arr.shape}, found {data.shape}.")
        chunks = arr.data.chunks
        if chunk_bytes:
            tile = 4 * max(chunks[1]) * max(chunks[2])
            chunks = _gene_chunks(chunks, block, tile, chunk_bytes)
        tree[name]["image"] = arr.copy(data=data if data.chunks == chunks else data.rechunk(chunks))
        prev = data
    return tree
