"""Counts to genes to normalised targets (scanpy): the model's expression space."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from napari_histosge.base.validation import assert_one_of
from napari_histosge.store import SLIDE_META_KEY

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "count_matrix",
    "counts_or_lognorm",
    "is_log_normalized",
    "prepare_targets",
    "select_genes",
    "Targets",
]


def is_log_normalized(adata: AnnData) -> bool:
    """Whether the table holds already normalised (e.g. log1p) values rather than raw counts.

    Raw counts are non-negative integers: any non-integer or negative value means the matrix
    was transformed (for example ``log1p`` after ``normalize_total``). The counts are read from
    ``layers["counts"]`` when present, else from ``X``.

    Parameters
    ----------
    adata
        The spot table.

    Returns
    -------
    ``True`` when the values are not raw counts.

    Examples
    --------
    >>> import anndata as ad
    >>> is_log_normalized(ad.AnnData(np.array([[0.0, 1.5], [2.0, 0.3]])))
    True
    >>> is_log_normalized(ad.AnnData(np.array([[0.0, 1.0], [2.0, 7.0]])))
    False
    """
    import scipy.sparse as sp

    x, _ = count_matrix(adata)
    data = x.data if sp.issparse(x) else np.asarray(x).ravel()
    if data.size == 0 or not np.issubdtype(data.dtype, np.number):
        return False
    if np.issubdtype(data.dtype, np.integer):
        return bool((data < 0).any())
    finite = data[np.isfinite(data)]
    return bool((finite < 0).any() or np.any(np.abs(finite - np.round(finite)) > 1e-6))


def count_matrix(adata: AnnData) -> tuple[Any, str]:
    """Return the count matrix (``layers['counts']`` when present, else ``X``) and where it was."""
    if "counts" in adata.layers:
        return adata.layers["counts"], "layers['counts']"
    return adata.X, "X"


def counts_or_lognorm(adata: AnnData) -> tuple[Any, bool]:
    """Return the expression matrix and whether it is already log-normalised.

    Raw counts (``layers["counts"]`` when present, else ``X``) are returned as they are with
    ``False``. Non-integer values are returned with ``True`` and a ``UserWarning`` (unless the
    slide's metadata declares them ``"log1p-normalised"``, as the bundled sample does): they
    must be used as they are, never normalised a second time.

    Parameters
    ----------
    adata
        The spot table.

    Returns
    -------
    The matrix (dense or sparse, not copied) and ``is_lognorm``.

    Examples
    --------
    >>> import anndata as ad
    >>> _, lognorm = counts_or_lognorm(ad.AnnData(np.ones((3, 2))))
    >>> lognorm
    False
    """
    import scipy.sparse as sp

    x, where = count_matrix(adata)
    data = x.data if sp.issparse(x) else np.asarray(x)
    if np.issubdtype(data.dtype, np.floating) and np.isnan(data).any():
        raise ValueError(
            f"Expected expression values without NaN in the table's {where}, found "
            f"{int(np.isnan(data).sum())} NaN values."
        )
    lognorm = is_log_normalized(adata)
    if lognorm and (data < 0).any():
        raise ValueError(
            "Expected raw counts or log-normalised values (never negative) in the table's "
            f"{where}, found {int((data < 0).sum())} negative values (scaled data?); store raw "
            "counts in X or layers['counts']."
        )
    declared = (adata.uns.get(SLIDE_META_KEY) or {}).get("values") == "log1p-normalised"
    if lognorm and not declared:
        warnings.warn(
            f"The table's {where} holds non-integer values: treated as already log-normalised "
            "expression and used as is (no second normalisation).",
            UserWarning,
            stacklevel=2,
        )
    return x, lognorm


#: The fewest genes a model can be trained on.
MIN_GENES = 2


def check_fit_counts(x: Any) -> None:
    """Raise ``ValueError`` unless ``x`` is finite and not all zero.

    scanpy's ``seurat_v3`` ranking crashes the process (in its loess fit) on all-zero counts,
    so this runs before it.

    Examples
    --------
    >>> check_fit_counts(np.ones((3, 2)))
    """
    import scipy.sparse as sp

    data = x.data if sp.issparse(x) else np.asarray(x)
    if data.size and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise ValueError(
            "Expected finite counts in the spots used for gene selection, found NaN or "
            "infinite values; fix those entries of the table."
        )
    if data.size == 0 or not np.any(data):
        raise ValueError(
            "Expected some non-zero counts in the spots used for gene selection, found only "
            "zeros; check the table's counts."
        )


@dataclass(frozen=True)
class Targets:
    """What the model learns and predicts.

    Parameters
    ----------
    values
        ``(n, g)`` float32: log1p of counts normalised to 1e4 per spot over all genes.
    genes
        The ``g`` gene names.
    log_normalized_input
        Whether the input was already log-normalised and used as is.
    """

    values: np.ndarray
    genes: list[str]
    log_normalized_input: bool


def select_genes(
    adata: AnnData,
    *,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 1000,
    fit_mask: np.ndarray | None = None,
    lognorm: bool = False,
    flavor: Literal["seurat_v3", "variance"] = "seurat_v3",
) -> list[str]:
    """Genes to model: the user's list (checked) or the top highly variable genes.

    Highly variable genes come from scanpy's ``seurat_v3`` flavour on raw counts (``seurat`` on
    log-normalised input), or with ``flavor="variance"`` the genes of highest variance after
    ``normalize_total(1e4)`` and ``log1p``; either way computed on the ``fit_mask`` spots only.

    Examples
    --------
    >>> import anndata as ad
    >>> a = ad.AnnData(np.random.default_rng(0).poisson(2, (30, 50)).astype(float))
    >>> len(select_genes(a, n_top_genes=10))
    10
    """
    import scanpy as sc

    score: np.ndarray | None
    names = [str(g) for g in adata.var_names]
    if genes is not None:
        genes = [str(g) for g in genes]
        known = set(names)
        missing = [g for g in genes if g not in known]
        if missing:
            hints = {g: difflib.get_close_matches(g, names, n=2) for g in missing[:3]}
            raise ValueError(
                f"Expected genes of the table ({len(names)} genes), found {len(missing)} unknown: "
                f"{missing[:5]}; close matches: {hints}."
            )
        if len(set(genes)) != len(genes):
            raise ValueError("Expected each gene once in the gene list, found duplicates.")
        if len(genes) < MIN_GENES:
            raise ValueError(
                f"Expected at least {MIN_GENES} genes in the gene list, found {len(genes)}; the "
                "model predicts several genes at once, so add genes to the list."
            )
        return genes
    if n_top_genes < MIN_GENES:
        raise ValueError(
            f"Expected `n_top_genes` (--n-top-genes) >= {MIN_GENES}, found `{n_top_genes}`; the "
            "model predicts several genes at once."
        )
    if len(names) < MIN_GENES:
        raise ValueError(
            f"Expected a table with at least {MIN_GENES} genes, found {len(names)}; the model "
            "predicts several genes at once."
        )
    assert_one_of("flavor", flavor, ["seurat_v3", "variance"])
    if n_top_genes >= len(names):
        return names
    sub = adata if fit_mask is None else adata[np.asarray(fit_mask, dtype=bool)]
    sub = sub.copy()
    if "counts" in sub.layers:
        sub.X = sub.layers["counts"]
    check_fit_counts(sub.X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if flavor == "variance":
            if not lognorm:
                sc.pp.normalize_total(sub, target_sum=1e4)
                sc.pp.log1p(sub)
            x = sub.X
            mean = np.asarray(x.mean(0)).ravel()
            sq = (
                np.asarray(x.multiply(x).mean(0)).ravel()
                if hasattr(x, "multiply")
                else (np.asarray(x) ** 2).mean(0)
            )
            score = sq - mean**2
        elif lognorm:
            hv = sc.pp.highly_variable_genes(
                sub, n_top_genes=n_top_genes, flavor="seurat", inplace=False
            )
            score = np.nan_to_num(np.asarray(hv["dispersions_norm"], dtype=float), nan=-np.inf)
        else:
            try:
                hv = sc.pp.highly_variable_genes(
                    sub, n_top_genes=n_top_genes, flavor="seurat_v3", inplace=False
                )
                score = -np.asarray(hv["highly_variable_rank"].fillna(np.inf), dtype=float)
            except ValueError:
                # seurat_v3's loess fit fails when gene means hardly vary (tiny or flat tables).
                score = None
    if score is None:
        warnings.warn(
            "scanpy's seurat_v3 ranking failed on these counts (too little spread of gene means); "
            "ranking genes by the variance of log1p(normalised counts) instead.",
            UserWarning,
            stacklevel=2,
        )
        return select_genes(
            adata, n_top_genes=n_top_genes, fit_mask=fit_mask, lognorm=lognorm, flavor="variance"
        )
    order = np.argsort(-score, kind="stable")[:n_top_genes]
    return [names[i] for i in order]


def prepare_targets(
    adata: AnnData,
    *,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 1000,
    fit_mask: np.ndarray | None = None,
    flavor: Literal["seurat_v3", "variance"] = "seurat_v3",
) -> Targets:
    """Expression the model predicts, computed on a copy of ``adata``.

    Raw counts (``X`` or ``layers["counts"]``) are normalised to 1e4 per spot over all genes and
    log1p-transformed; already log-normalised input is used as is, with a warning.

    Parameters
    ----------
    adata
        The spot table; not modified.
    genes
        Genes to keep; the top ``n_top_genes`` highly variable genes when ``None``.
    n_top_genes
        Number of highly variable genes.
    fit_mask
        Spots that may inform gene selection (the training spots).
    flavor
        How highly variable genes are ranked (see :func:`select_genes`).

    Returns
    -------
    The targets.

    Examples
    --------
    >>> import anndata as ad
    >>> a = ad.AnnData(np.random.default_rng(0).poisson(2, (30, 50)).astype(float))
    >>> prepare_targets(a, n_top_genes=5).values.shape
    (30, 5)
    """
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    x, lognorm = counts_or_lognorm(adata)
    chosen = select_genes(
        adata,
        genes=genes,
        n_top_genes=n_top_genes,
        fit_mask=fit_mask,
        lognorm=lognorm,
        flavor=flavor,
    )
    work = ad.AnnData(X=x.copy() if sp.issparse(x) else np.array(x, dtype=np.float32))
    work.var_names = [str(g) for g in adata.var_names]
    if not lognorm:
        work.X = work.X.astype(np.float32)
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
    cols = work[:, chosen].X
    values = cols.toarray() if sp.issparse(cols) else np.asarray(cols)
    return Targets(
        values=values.astype(np.float32), genes=list(chosen), log_normalized_input=lognorm
    )
