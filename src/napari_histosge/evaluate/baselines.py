"""Baselines that use no image: kNN interpolation and a spatial shuffle.

The third, smoothing + low rank, lives with the models (:mod:`napari_histosge.models.smoothing`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["knn_interpolate", "ridge_image", "spatial_shuffle"]


def knn_interpolate(
    train_xy: np.ndarray, train_values: np.ndarray, query_xy: np.ndarray, k: int = 4
) -> np.ndarray:
    """Inverse-distance weighted mean of the ``k`` nearest training spots.

    Examples
    --------
    >>> xy, q = np.array([[0.0, 0], [2, 0]]), np.array([[1.0, 0]])
    >>> knn_interpolate(xy, np.array([[0.0], [2.0]]), q, k=2)
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


def ridge_image(
    train_features: np.ndarray,
    train_values: np.ndarray,
    query_features: np.ndarray,
    *,
    n_components: int = 64,
) -> np.ndarray:
    """Predict from image features alone: standardise, PCA, ridge (penalty by generalised CV).

    The image-only baseline of HEST-Benchmark; it uses no position and no measured neighbour.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> f, y = rng.random((20, 5)), rng.random((20, 3))
    >>> ridge_image(f, y, f[:2]).shape
    (2, 3)
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV

    mu, sd = train_features.mean(0), train_features.std(0) + 1e-6
    zt, zq = (train_features - mu) / sd, (query_features - mu) / sd
    n_pc = min(n_components, zt.shape[1], len(zt) - 1)
    pca = PCA(n_components=n_pc, random_state=0).fit(zt)
    reg = RidgeCV(alphas=np.logspace(-2, 4, 25)).fit(pca.transform(zt), train_values)
    return np.asarray(reg.predict(pca.transform(zq)))
