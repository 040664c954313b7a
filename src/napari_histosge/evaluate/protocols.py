"""Held-out protocols on arrays: splits, recovery and super-resolution from pooled pseudo-spots."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.expression import prepare_targets
from napari_histosge.geometry.lattice import lattice_pitch
from napari_histosge.metrics import metrics
from napari_histosge.models.smoothing import smooth_lowrank
from napari_histosge.train import TrainConfig, fit

from .baselines import knn_interpolate, spatial_shuffle

if TYPE_CHECKING:
    import scipy.sparse as sp
    from anndata import AnnData

__all__ = [
    "checkerboard_mask",
    "pool_pseudospots",
    "random_mask",
    "recovery",
    "score_all",
    "superresolution",
]


def checkerboard_mask(xy: np.ndarray) -> np.ndarray:
    """Training mask of a checkerboard over the spot lattice (``True`` = train).

    Spots are put on integer lattice indices by rounding their coordinates in units of the
    lattice pitch along x and y; parity of the sum decides.

    Examples
    --------
    >>> xs, ys = np.meshgrid(np.arange(4.0), np.arange(4.0))
    >>> int(checkerboard_mask(np.c_[xs.ravel(), ys.ravel()]).sum())
    8
    """
    xy = np.asarray(xy, dtype=float)
    pitch = lattice_pitch(xy)
    rel = (xy - xy.min(0)) / pitch
    ix = np.rint(rel[:, 0]).astype(int)
    # Hexagonal rows are pitch * sqrt(3)/2 apart; round rows by their own spacing.
    dy = np.diff(np.unique(np.round(rel[:, 1], 1)))
    row_step = float(np.median(dy[dy > 0.3])) if (dy > 0.3).any() else 1.0
    iy = np.rint(rel[:, 1] / row_step).astype(int)
    return (ix + iy) % 2 == 0


def random_mask(n: int, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Seeded random training mask holding out ``fraction`` of ``n`` spots.

    Examples
    --------
    >>> int(random_mask(10, 0.5, 0).sum())
    5
    """
    if not 0 < fraction < 1:
        raise ValueError(f"Expected `fraction` in (0, 1), found `{fraction}`.")
    rng = np.random.default_rng(seed)
    held = rng.choice(n, size=int(round(n * fraction)), replace=False)
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    return mask


def pool_pseudospots(
    xy: np.ndarray, counts: np.ndarray | sp.spmatrix, factor: int = 2
) -> tuple[np.ndarray, Any, np.ndarray]:
    """Sum the counts of ``factor`` x ``factor`` lattice blocks into coarser pseudo-spots.

    Returns the pseudo-spot centres (mean of members), summed counts and the block label of
    every spot.

    Examples
    --------
    >>> xs, ys = np.meshgrid(np.arange(4.0), np.arange(4.0))
    >>> c, x, lab = pool_pseudospots(np.c_[xs.ravel(), ys.ravel()], np.ones((16, 2)))
    >>> c.shape, np.asarray(x).sum(0).tolist()
    ((4, 2), [16.0, 16.0])
    """
    import scipy.sparse as sp

    xy = np.asarray(xy, dtype=float)
    pitch = lattice_pitch(xy)
    cell = np.floor((xy - xy.min(0)) / (pitch * factor) + 0.25).astype(int)
    _, labels = np.unique(cell, axis=0, return_inverse=True)
    labels = labels.ravel()
    n_blocks = labels.max() + 1
    member = sp.csr_matrix(
        (np.ones(len(xy)), (labels, np.arange(len(xy)))), shape=(n_blocks, len(xy))
    )
    sizes = np.asarray(member.sum(1)).ravel()
    centres = (member @ xy) / sizes[:, None]
    pooled = member @ (counts if sp.issparse(counts) else np.asarray(counts, dtype=float))
    return centres, pooled, labels


def score_all(
    model_pred: np.ndarray,
    train_xy: np.ndarray,
    train_values: np.ndarray,
    query_xy: np.ndarray,
    truth: np.ndarray,
    genes: Sequence[str],
    seed: int,
) -> dict[str, Any]:
    """Score the model and the no-image baselines on the same held-out spots."""
    return {
        "model": metrics(model_pred, truth, genes),
        "knn": metrics(knn_interpolate(train_xy, train_values, query_xy, k=4), truth, genes),
        "smooth_lowrank": metrics(
            smooth_lowrank(train_xy, train_values).predict(query_xy), truth, genes
        ),
        "spatial_shuffle": metrics(spatial_shuffle(model_pred, seed=seed), truth, genes),
    }


def recovery(
    adata: AnnData,
    features: np.ndarray,
    xy_um: np.ndarray,
    train_mask: np.ndarray,
    *,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 250,
    flavor: str = "seurat_v3",
    config: TrainConfig | None = None,
    feature_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Recovery protocol on arrays: train on ``train_mask`` spots, score the others only.

    Genes are selected on the training spots only, targets are ``log1p(normalize_total)``, the
    model (feature scaling included) is fitted on the training spots only, and kNN (k=4),
    smoothing + low-rank and the spatial-shuffle control are scored on the same held-out spots.

    Parameters
    ----------
    adata
        Spot table (counts in ``X`` or ``layers["counts"]``), spots in the order of ``features``.
    features
        ``(n, d)`` image features of every spot.
    xy_um
        ``(n, 2)`` spot positions in µm.
    train_mask
        ``True`` for training spots (see :func:`checkerboard_mask`, :func:`random_mask`).
    genes
        Genes to score; highly variable genes of the training spots when ``None``.
    n_top_genes
        Number of highly variable genes.
    flavor
        Gene ranking (``"seurat_v3"`` or ``"variance"``, see ``expression.select_genes``).
    config
        Training options.
    feature_meta
        Provenance of the features.

    Returns
    -------
    ``{"methods": {name: metrics}, "genes", "n_train", "n_heldout", "predictions"}``, plus
    ``"targets"`` (every spot, target space) and the fitted ``"model"``.

    Examples
    --------
    >>> res = recovery(adata, feats, xy_um, checkerboard_mask(xy_um))  # doctest: +SKIP
    >>> res["methods"]["model"]["mean_r"]  # doctest: +SKIP
    """
    train = np.asarray(train_mask, dtype=bool)
    feats = np.asarray(features, dtype=np.float32)
    xy = np.asarray(xy_um, dtype=np.float64)
    if (
        train.shape != (adata.n_obs,)
        or feats.shape[0] != adata.n_obs
        or xy.shape != (adata.n_obs, 2)
    ):
        raise ValueError(
            f"Expected a mask, features and positions for the table's {adata.n_obs} spots, found "
            f"{train.shape}, {feats.shape} and {xy.shape}."
        )
    held = ~train
    if held.sum() < 2:
        raise ValueError(f"Expected at least 2 held-out spots, found {int(held.sum())}.")
    targets = prepare_targets(
        adata,
        genes=genes,
        n_top_genes=n_top_genes,
        fit_mask=train,
        flavor=flavor,  # type: ignore[arg-type]
    )
    y = targets.values
    model = fit(
        feats[train],
        xy[train],
        y[train],
        genes=targets.genes,
        config=config,
        feature_meta=feature_meta,
    )
    pred = model.predict(feats[held], xy[held], reference="train")
    seed = model.config.seed
    return {
        "methods": score_all(pred, xy[train], y[train], xy[held], y[held], targets.genes, seed),
        "genes": list(targets.genes),
        "n_train": int(train.sum()),
        "n_heldout": int(held.sum()),
        "predictions": pred,
        "targets": y,
        "model": model,
    }


def superresolution(
    adata: AnnData,
    features: np.ndarray,
    xy_um: np.ndarray,
    *,
    featurize: Callable[[np.ndarray], np.ndarray] | None = None,
    factor: int = 2,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 250,
    flavor: str = "seurat_v3",
    config: TrainConfig | None = None,
    feature_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Super-resolution protocol: train on pooled pseudo-spots, predict and score real spots.

    Counts of ``factor`` x ``factor`` lattice blocks are summed into pseudo-spots (placed at
    the mean of their members), genes are chosen and targets normalised on the pseudo-spots,
    the model is trained on them and predicts every real spot from its own image features.

    Parameters
    ----------
    adata
        Spot table with raw counts.
    features
        ``(n, d)`` image features of the real spots.
    xy_um
        ``(n, 2)`` real spot positions in µm.
    featurize
        ``callable(xy_um) -> (m, d)`` features at the pseudo-spot centres (patches cut there);
        when ``None``, the mean of the members' features.
    factor
        Block size in lattice steps.
    genes, n_top_genes, flavor, config, feature_meta
        As in :func:`recovery`.

    Returns
    -------
    As :func:`recovery`, with ``n_pseudo`` instead of ``n_train``.

    Examples
    --------
    >>> res = superresolution(adata, feats, xy_um)  # doctest: +SKIP
    """
    import anndata as ad
    import scipy.sparse as sp

    feats = np.asarray(features, dtype=np.float32)
    xy = np.asarray(xy_um, dtype=np.float64)
    if feats.shape[0] != adata.n_obs or xy.shape != (adata.n_obs, 2):
        raise ValueError(
            f"Expected features and positions for the table's {adata.n_obs} spots, found "
            f"{feats.shape} and {xy.shape}."
        )
    counts = adata.layers.get("counts", adata.X)
    centres, pooled, labels = pool_pseudospots(xy, counts, factor)
    if len(centres) < 10:
        raise ValueError(
            f"Expected at least 10 pseudo-spots, found {len(centres)}; use a smaller `factor`."
        )
    pooled_ad = ad.AnnData(
        sp.csr_matrix(pooled) if not sp.issparse(pooled) else sp.csr_matrix(pooled)
    )
    pooled_ad.var_names = [str(g) for g in adata.var_names]
    targets = prepare_targets(pooled_ad, genes=genes, n_top_genes=n_top_genes, flavor=flavor)  # type: ignore[arg-type]
    if featurize is None:
        member = sp.csr_matrix(
            (np.ones(len(xy)), (labels, np.arange(len(xy)))), shape=(len(centres), len(xy))
        )
        pfeats = np.asarray((member @ feats) / np.asarray(member.sum(1)), dtype=np.float32)
    else:
        pfeats = np.asarray(featurize(centres), dtype=np.float32)
    truth = prepare_targets(adata, genes=targets.genes).values
    py = targets.values
    model = fit(pfeats, centres, py, genes=targets.genes, config=config, feature_meta=feature_meta)
    pred = model.predict(feats, xy, reference="train")
    seed = model.config.seed
    return {
        "methods": score_all(pred, centres, py, xy, truth, targets.genes, seed),
        "genes": list(targets.genes),
        "n_pseudo": int(len(centres)),
        "n_heldout": int(len(xy)),
        "predictions": pred,
    }
