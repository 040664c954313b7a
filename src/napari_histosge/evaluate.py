"""Metrics, no-image baselines, hold-out splits and the recovery / super-resolution protocols.

Every score here is computed on held-out spots only: genes are selected, features scaled and
models trained on the training spots, and the held-out spots are only ever predicted.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._progress import Progress

if TYPE_CHECKING:
    import pandas as pd

    from .pipeline import ExtractOptions, Slide
    from .train import TrainConfig

__all__ = [
    "HoldoutResult",
    "SmoothLowRank",
    "checkerboard_mask",
    "evaluate_holdout",
    "knn_interpolate",
    "metrics",
    "pearson_per_gene",
    "pool_pseudospots",
    "random_mask",
    "recovery",
    "smooth_lowrank",
    "spatial_shuffle",
    "superresolution",
]


# --------------------------------------------------------------------------------------------
# Metrics


def pearson_per_gene(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r of each gene (column) over spots; NaN where either side is constant.

    Examples
    --------
    >>> pearson_per_gene(np.array([[1.0, 0], [2, 0], [3, 0]]), np.array([[2.0, 1], [4, 2], [6, 3]]))
    array([ 1., nan])
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(
            f"Expected predictions and truth of one shape, found {p.shape} and {t.shape}."
        )
    pc = p - p.mean(0)
    tc = t - t.mean(0)
    den = np.sqrt((pc**2).sum(0) * (tc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(0) / den
    r[~np.isfinite(r) | (den < 1e-12)] = np.nan
    return r


def metrics(
    pred: np.ndarray, true: np.ndarray, genes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per-gene Pearson r, MSE and MAE and their summaries (NaN genes excluded from means).

    Examples
    --------
    >>> m = metrics(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.5], [3.0]]))
    >>> round(m["mean_r"], 3), m["n_genes_r_gt_0.3"]
    (0.961, 1)
    """
    r = pearson_per_gene(pred, true)
    err = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    mse = (err**2).mean(0)
    mae = np.abs(err).mean(0)
    names = list(genes) if genes is not None else [str(i) for i in range(len(r))]
    return {
        "mean_r": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
        "median_r": float(np.nanmedian(r)) if np.isfinite(r).any() else float("nan"),
        "mse": float(mse.mean()),
        "mae": float(mae.mean()),
        "n_genes_r_gt_0.3": int(np.nansum(r > 0.3)),
        "n_genes_scored": int(np.isfinite(r).sum()),
        "per_gene": {
            g: {"r": (None if not np.isfinite(ri) else float(ri)), "mse": float(m), "mae": float(a)}
            for g, ri, m, a in zip(names, r, mse, mae, strict=True)
        },
    }


# --------------------------------------------------------------------------------------------
# Splits


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
    from .geometry import lattice_pitch

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


# --------------------------------------------------------------------------------------------
# Baselines that use no image


def knn_interpolate(
    train_xy: np.ndarray, train_values: np.ndarray, query_xy: np.ndarray, k: int = 4
) -> np.ndarray:
    """Inverse-distance weighted mean of the ``k`` nearest training spots.

    Examples
    --------
    >>> knn_interpolate(np.array([[0.0, 0], [2, 0]]), np.array([[0.0], [2.0]]), np.array([[1.0, 0]]), k=2)
    array([[1.]])
    """
    from scipy.spatial import cKDTree

    k = min(k, len(train_xy))
    dist, idx = cKDTree(train_xy).query(query_xy, k=k)
    dist = np.atleast_2d(dist).reshape(len(query_xy), k)
    idx = np.atleast_2d(idx).reshape(len(query_xy), k)
    w = 1.0 / np.maximum(dist, 1e-9)
    w /= w.sum(1, keepdims=True)
    return np.einsum("qk,qkg->qg", w, np.asarray(train_values)[idx])


@dataclass(frozen=True)
class SmoothLowRank:
    """Gaussian spatial smoothing of training spots plus a projection onto their top PCs."""

    train_xy: np.ndarray
    train_values: np.ndarray
    bandwidth: float
    rank: int
    mean: np.ndarray
    basis: np.ndarray  # (g, rank)

    def predict(self, query_xy: np.ndarray, exclude_self: bool = False) -> np.ndarray:
        """Predictions at ``query_xy`` (``exclude_self`` drops zero-distance spots: LOO)."""
        sm = _gaussian_smooth(
            self.train_xy, self.train_values, query_xy, self.bandwidth, exclude_self
        )
        return self.mean + (sm - self.mean) @ self.basis @ self.basis.T


def _gaussian_weights(
    train_xy: np.ndarray, query_xy: np.ndarray, bandwidth: float, exclude_self: bool
) -> Any:
    """Sparse row-normalised Gaussian weights (cut at 4 bandwidths) from queries to spots."""
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    q = np.atleast_2d(np.asarray(query_xy, dtype=float))
    t = np.asarray(train_xy, dtype=float)
    pairs = cKDTree(q).sparse_distance_matrix(cKDTree(t), 4.0 * bandwidth, output_type="ndarray")
    i, j, d = pairs["i"], pairs["j"], pairs["v"]
    if exclude_self:
        keep = d > 1e-9
        i, j, d = i[keep], j[keep], d[keep]
    # Queries with no spot within reach take their nearest spot (beyond the kernel's support).
    lonely = np.setdiff1d(np.arange(len(q)), i)
    if len(lonely):
        k = 2 if exclude_self else 1
        dist, idx = cKDTree(t).query(q[lonely], k=k)
        pick = np.asarray(idx).reshape(len(lonely), k)[:, -1]
        i = np.concatenate([i, lonely])
        j = np.concatenate([j, pick])
        d = np.concatenate([d, np.zeros(len(lonely))])
    w = np.exp(-0.5 * (d / bandwidth) ** 2)
    mat = sp.csr_matrix((w, (i, j)), shape=(len(q), len(t)))
    rows = np.asarray(mat.sum(1)).ravel()
    return sp.diags(1.0 / np.maximum(rows, 1e-300)) @ mat


def _gaussian_smooth(
    train_xy: np.ndarray,
    values: np.ndarray,
    query_xy: np.ndarray,
    bandwidth: float,
    exclude_self: bool,
) -> np.ndarray:
    return np.asarray(_gaussian_weights(train_xy, query_xy, bandwidth, exclude_self) @ values)


def _pca_basis(values: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    mean = values.mean(0)
    _, _, vt = np.linalg.svd(values - mean, full_matrices=False)
    return mean, vt[: max(1, min(rank, vt.shape[0]))].T


def smooth_lowrank(
    train_xy: np.ndarray,
    train_values: np.ndarray,
    *,
    bandwidths: Sequence[float] = (0.5, 0.7, 1.0, 1.4, 2.0),
    ranks: Sequence[int] = (2, 4, 8, 16, 32, 64),
) -> SmoothLowRank:
    """Fit the smoothing + low-rank baseline, choosing bandwidth and rank by leave-one-out.

    Bandwidths are in lattice pitches; the choice maximises the leave-one-out mean Pearson r
    over genes on the training spots.

    Examples
    --------
    >>> rng = np.random.default_rng(0); xy = rng.random((30, 2)) * 10
    >>> smooth_lowrank(xy, rng.random((30, 5))).rank >= 1
    True
    """
    from .geometry import lattice_pitch

    xy = np.asarray(train_xy, dtype=float)
    vals = np.asarray(train_values, dtype=np.float64)
    pitch = lattice_pitch(xy)
    best: tuple[float, float, int] | None = None
    mean, full_basis = _pca_basis(vals, min(vals.shape))
    for bw in bandwidths:
        # Leave-one-out smoothing once per bandwidth; ranks only change the projection.
        sm = _gaussian_smooth(xy, vals, xy, bw * pitch, True) - mean
        for rank in ranks:
            if rank > min(vals.shape) - 1 and rank != ranks[0]:
                continue
            basis = full_basis[:, : max(1, min(rank, full_basis.shape[1]))]
            pred = mean + sm @ basis @ basis.T
            score = np.nanmean(pearson_per_gene(pred, vals))
            if best is None or score > best[0]:
                best = (float(score), bw * pitch, rank)
    assert best is not None
    mean, basis = _pca_basis(vals, best[2])
    return SmoothLowRank(xy, vals, best[1], best[2], mean, basis)


def spatial_shuffle(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """Control: the given predictions permuted over positions (same values, no spatial link).

    In :func:`recovery` the model's held-out predictions are permuted over the held-out
    spots with one seeded permutation shared by all genes; its mean r (near 0) is what a model
    with the right value distribution but no spatial or image information scores.

    Examples
    --------
    >>> spatial_shuffle(np.arange(4.0)[:, None], seed=0).shape
    (4, 1)
    """
    rng = np.random.default_rng(seed)
    return np.asarray(values)[rng.permutation(len(values))]


def pool_pseudospots(
    xy: np.ndarray, counts: Any, factor: int = 2
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

    from .geometry import lattice_pitch

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


# --------------------------------------------------------------------------------------------
# Held-out evaluation of a slide


@dataclass
class HoldoutResult:
    """Held-out predictions (spots x genes, target space) and metrics of every method."""

    predictions: pd.DataFrame
    metrics: dict[str, Any]


def evaluate_holdout(
    slide: Slide,
    *,
    holdout: Sequence[str] | np.ndarray,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 1000,
    extract: ExtractOptions | None = None,
    config: TrainConfig | None = None,
) -> Generator[Progress, None, HoldoutResult]:
    """Recovery: train on the other spots, predict the held-out ones, score only those.

    Gene selection uses the training spots only; the model, kNN (k=4), smoothing + low-rank and
    a spatial-shuffle control of the model's predictions are scored on the same split.

    Parameters
    ----------
    slide
        The slide.
    holdout
        Held-out spot ids (table ``obs_names``) or a boolean mask of held-out spots.
    genes
        Genes to score; highly variable genes of the training spots when ``None``.
    n_top_genes
        Number of highly variable genes.
    extract
        Feature settings (as ``histosge run``).
    config
        Training settings (as ``histosge run``).

    Returns
    -------
    Predictions for the held-out spots and the metrics.

    Examples
    --------
    >>> res = run_generator(evaluate_holdout(slide, holdout=ids))  # doctest: +SKIP
    """
    import pandas as pd

    from .features import iter_extract_features
    from .pipeline import ExtractOptions
    from .train import TrainConfig, iter_fit

    ids = np.asarray(slide.geometry.spot_ids, dtype=str)
    if isinstance(holdout, np.ndarray) and holdout.dtype == bool:
        if holdout.shape != ids.shape:
            raise ValueError(
                f"Expected a held-out mask of {len(ids)} spots, found {holdout.shape}."
            )
        held = holdout
    else:
        wanted = [str(h) for h in holdout]
        unknown = sorted(set(wanted) - set(ids))
        if unknown:
            raise ValueError(
                f"Expected held-out spot ids of the table, found {len(unknown)} unknown, e.g. {unknown[:5]}."
            )
        held = np.isin(ids, wanted)
    train = ~held
    if held.sum() < 1:
        raise ValueError("Expected at least one held-out spot, found none.")
    if train.sum() < 10:
        raise ValueError(f"Expected at least 10 training spots, found {int(train.sum())}.")
    opts = extract or ExtractOptions()
    cfg = config or TrainConfig()
    targets = slide.targets(genes=genes, n_top_genes=n_top_genes, fit_mask=train)
    geom = slide.geometry
    kwargs: dict[str, Any] = {}
    if opts.patch_sizes is not None:
        kwargs["patch_sizes"] = opts.patch_sizes
    feats = yield from iter_extract_features(
        slide.sdata,
        geom.centers_px,
        image_key=slide.keys.image_key,
        geometry=geom,
        encoder=opts.encoder,
        weights=opts.weights,
        device=opts.device,
        bf16=opts.bf16,
        batch_size=opts.batch_size,
        cache_name="spots",
        **kwargs,
    )
    xy_um = geom.centers_um
    y = targets.values
    model = yield from iter_fit(
        feats.features[train],
        xy_um[train],
        y[train],
        genes=targets.genes,
        config=cfg,
        feature_meta=feats.meta,
    )
    pred = model.predict(feats.features[held], xy_um[held], reference="train")
    methods = _score_all(
        pred, xy_um[train], y[train], xy_um[held], y[held], targets.genes, cfg.seed
    )
    summary = {
        "n_train": int(train.sum()),
        "n_heldout": int(held.sum()),
        "genes": list(targets.genes),
        "values": "log1p of counts normalised to 1e4 per spot over all genes",
        "encoder": feats.meta.get("encoder_id"),
        "config": model.config_dict(),
        "methods": methods,
    }
    frame = pd.DataFrame(pred, index=pd.Index(ids[held], name="spot_id"), columns=targets.genes)
    return HoldoutResult(predictions=frame, metrics=summary)


# --------------------------------------------------------------------------------------------
# Array-level protocols


def _score_all(
    model_pred: np.ndarray,
    train_xy: np.ndarray,
    train_values: np.ndarray,
    query_xy: np.ndarray,
    truth: np.ndarray,
    genes: Sequence[str],
    seed: int,
) -> dict[str, Any]:
    return {
        "model": metrics(model_pred, truth, genes),
        "knn": metrics(knn_interpolate(train_xy, train_values, query_xy, k=4), truth, genes),
        "smooth_lowrank": metrics(
            smooth_lowrank(train_xy, train_values).predict(query_xy), truth, genes
        ),
        "spatial_shuffle": metrics(spatial_shuffle(model_pred, seed=seed), truth, genes),
    }


def recovery(
    adata: Any,
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
    ``{"methods": {name: metrics}, "genes", "n_train", "n_heldout", "predictions"}``.

    Examples
    --------
    >>> res = recovery(adata, feats, xy_um, checkerboard_mask(xy_um))  # doctest: +SKIP
    >>> res["methods"]["model"]["mean_r"]  # doctest: +SKIP
    """
    from .expression import prepare_targets
    from .train import fit

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
        "methods": _score_all(pred, xy[train], y[train], xy[held], y[held], targets.genes, seed),
        "genes": list(targets.genes),
        "n_train": int(train.sum()),
        "n_heldout": int(held.sum()),
        "predictions": pred,
    }


def superresolution(
    adata: Any,
    features: np.ndarray,
    xy_um: np.ndarray,
    *,
    featurize: Any = None,
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

    from .expression import prepare_targets
    from .train import fit

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
        "methods": _score_all(pred, centres, py, xy, truth, targets.genes, seed),
        "genes": list(targets.genes),
        "n_pseudo": int(len(centres)),
        "n_heldout": int(len(xy)),
        "predictions": pred,
    }
