"""Tissue domains: clusters of super-resolved expression, with each domain's top genes.

Every superpixel's predicted expression of the most variable genes is standardised, reduced
to principal components, smoothed over the superpixel's grid neighbours (so that a domain is a
region rather than speckle) and clustered by k-means (k chosen by the user). Each domain's top
genes are those whose mean log expression in it exceeds the mean over the other superpixels
the most.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_DOMAINS",
    "DomainResult",
    "Domains",
    "cluster_domains",
    "superres_domains",
]

#: Number of domains unless the user chooses.
DEFAULT_DOMAINS = 6


@dataclass
class DomainResult:
    """Domain of every superpixel (1..k) and each domain's summary."""

    labels: np.ndarray  # (superpixels,) int32, 1..k
    means: np.ndarray  # (k, genes) mean log expression in each domain
    sizes: np.ndarray  # (k,) superpixels in each domain
    top_genes: dict[int, list[str]]
    genes: list[str]


def _grid_smooth(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Mean of each superpixel and its 8 grid neighbours that are superpixels too."""
    h, w = int(rows.max()) + 1, int(cols.max()) + 1
    acc = np.zeros((h + 2, w + 2, values.shape[1]), np.float64)
    cnt = np.zeros((h + 2, w + 2), np.float64)
    acc[rows + 1, cols + 1] = values
    cnt[rows + 1, cols + 1] = 1.0
    tot = np.zeros_like(values, dtype=np.float64)
    n = np.zeros(len(values))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            tot += acc[rows + 1 + dy, cols + 1 + dx]
            n += cnt[rows + 1 + dy, cols + 1 + dx]
    return tot / n[:, None]


def cluster_domains(
    predict: Callable[[Sequence[str]], np.ndarray],
    genes: Sequence[str],
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    k: int = DEFAULT_DOMAINS,
    unit_values: np.ndarray | None = None,
    n_genes: int = 100,
    n_components: int = 15,
    n_top: int = 10,
    seed: int = 0,
    chunk: int = 64,
) -> DomainResult:
    """Cluster superpixels by their predicted expression.

    Parameters
    ----------
    predict
        Returns ``(superpixels, len(genes))`` log expression for a list of genes.
    genes
        Every gene of the map.
    rows, cols
        Grid row and column of every superpixel (for the neighbour smoothing).
    k
        Number of domains.
    unit_values
        ``(units, genes)`` measured values; the ``n_genes`` most variable among them are
        clustered (the first ``n_genes`` genes when ``None``).
    n_genes, n_components
        Genes clustered and principal components kept.
    n_top
        Top genes listed per domain.
    seed
        Seed of k-means.
    chunk
        Genes predicted at a time for the domain means.

    Returns
    -------
    The domains (labels 1..k, ordered by size, largest first).

    Examples
    --------
    >>> rows, cols = np.divmod(np.arange(100), 10)
    >>> x = np.where(cols[:, None] < 5, 0.0, 2.0) + np.zeros((100, 3))
    >>> res = cluster_domains(lambda g: x[:, : len(g)], ["a", "b", "c"], rows, cols, k=2)
    >>> sorted(np.bincount(res.labels).tolist())
    [0, 50, 50]
    """
    from sklearn.cluster import KMeans

    names = [str(g) for g in genes]
    n_sp = len(rows)
    if not 2 <= int(k) <= 50:
        raise ValueError(f"Expected between 2 and 50 domains, found `{k}`.")
    if n_sp < 2 * k:
        raise ValueError(f"Expected at least {2 * k} superpixels for {k} domains, found {n_sp}.")
    if unit_values is not None:
        order = np.argsort(-np.asarray(unit_values).var(0), kind="stable")[:n_genes]
    else:
        order = np.arange(min(n_genes, len(names)))
    x = np.asarray(predict([names[i] for i in order]), dtype=np.float64)
    x -= x.mean(0)
    sd = x.std(0)
    x /= np.where(sd > 1e-9, sd, 1.0)
    n_comp = max(1, min(n_components, x.shape[1], n_sp - 1))
    _, evecs = np.linalg.eigh(x.T @ x)
    z = x @ evecs[:, ::-1][:, :n_comp]
    del x
    z = _grid_smooth(z, np.asarray(rows), np.asarray(cols))
    km = KMeans(n_clusters=int(k), n_init=4, random_state=int(seed)).fit(z.astype(np.float32))
    raw = km.labels_
    sizes = np.bincount(raw, minlength=int(k))
    rank = np.empty(int(k), np.int64)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(int(k))
    labels = (rank[raw] + 1).astype(np.int32)
    sizes = np.bincount(labels, minlength=int(k) + 1)[1:]
    means = np.zeros((int(k), len(names)))
    total = np.zeros(len(names))
    for g0 in range(0, len(names), chunk):
        sub = names[g0 : g0 + chunk]
        v = np.asarray(predict(sub), dtype=np.float64)
        for d in range(int(k)):
            means[d, g0 : g0 + len(sub)] = v[labels == d + 1].sum(0)
        total[g0 : g0 + len(sub)] = v.sum(0)
    rest = (total[None, :] - means) / np.maximum(n_sp - sizes, 1)[:, None]
    means /= np.maximum(sizes, 1)[:, None]
    top = {
        d + 1: [names[i] for i in np.argsort(-(means[d] - rest[d]), kind="stable")[:n_top]]
        for d in range(int(k))
    }
    return DomainResult(labels=labels, means=means, sizes=sizes, top_genes=top, genes=names)


@dataclass
class Domains:
    """Tissue domains on the map's grid (placed on the H&E like :class:`~.maps.GeneMaps`)."""

    labels: np.ndarray  # (h, w) int32, 0 off the grid, 1..k
    pitch_px: float
    origin_px: tuple[float, float]
    top_genes: dict[int, list[str]]
    means: np.ndarray  # (k, genes) mean log expression per domain
    sizes: np.ndarray  # (k,) superpixels per domain
    genes: list[str]
    area_um2: float  # of one superpixel
    scale_factors: tuple[int, ...] = ()


def superres_domains(result: Any, k: int = DEFAULT_DOMAINS, seed: int = 0) -> Domains:
    """Cluster a superres result's maps (:class:`~.workflows.superres.SuperResResult`).

    See :func:`cluster_domains`; the labels are laid on the map's grid.

    Examples
    --------
    >>> dom = superres_domains(res, k=6)  # doctest: +SKIP
    >>> dom.top_genes[1][:3]  # doctest: +SKIP
    """
    from napari_histosge.maps import pyramid_factors

    model, grid = result.model, result.grid
    rows, cols = grid.rows_cols
    found = cluster_domains(
        model.predict, model.genes, rows, cols, k=k, unit_values=model.values, seed=seed
    )
    labels = np.zeros(grid.shape, dtype=np.int32)
    labels[rows, cols] = found.labels
    return Domains(
        labels=labels,
        pitch_px=float(grid.step),
        origin_px=(float(grid.origin[0]), float(grid.origin[1])),
        top_genes=found.top_genes,
        means=found.means,
        sizes=found.sizes,
        genes=found.genes,
        area_um2=float(result.resolution_um) ** 2,
        scale_factors=pyramid_factors(*grid.shape),
    )
