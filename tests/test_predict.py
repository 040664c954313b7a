from __future__ import annotations

import numpy as np
import pytest

from napari_histosge.maps import GeneMaps, rasterize, sample_map
from napari_histosge.predict import Predictions


def _hex_predictions(n_genes: int = 3, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(6), np.arange(5))
    xy = np.stack([xs.ravel() * 100.0 + (ys.ravel() % 2) * 50.0 + 40, ys.ravel() * 86.6 + 40], 1)
    vals = rng.random((len(xy), n_genes)).astype(np.float32)
    return Predictions(
        genes=[f"g{i}" for i in range(n_genes)],
        positions_px=xy,
        values=vals,
        kind=np.array(["spot"] * len(xy)),
        ids=np.array([f"s{i}" for i in range(len(xy))]),
        spot_diameter_px=55.0,
    )


def test_rasterize_reproduces_predictions_at_positions():
    preds = _hex_predictions()
    maps = rasterize(preds, pitch_px=7.0)
    assert maps.data.dtype == np.float32
    assert maps.data.shape[0] == 3
    for gi, gene in enumerate(preds.genes):
        sampled = sample_map(maps, gene, preds.positions_px)
        np.testing.assert_array_equal(sampled, preds.values[:, gi])


def test_rasterize_nan_off_tissue_and_gene_subset():
    preds = _hex_predictions()
    maps = rasterize(preds, genes=["g2"], pitch_px=10.0)
    assert maps.genes == ["g2"]
    far = sample_map(maps, "g2", np.array([[-1000.0, -1000.0]]))
    assert np.isnan(far).all()
    assert np.isnan(maps.data).any()  # corners of the bounding box are off tissue
    assert np.isfinite(maps.data).mean() > 0.5


def test_rasterize_gaussian_is_smooth_and_bounded():
    preds = _hex_predictions()
    maps = rasterize(preds, method="gaussian")
    finite = maps.data[np.isfinite(maps.data)]
    assert finite.min() >= preds.values.min() - 1e-6
    assert finite.max() <= preds.values.max() + 1e-6


def test_rasterize_rejects_bad_input():
    preds = _hex_predictions()
    with pytest.raises(KeyError, match="unknown"):
        rasterize(preds, genes=["nope"])
    with pytest.raises(ValueError, match="method"):
        rasterize(preds, method="cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pitch"):
        rasterize(preds, pitch_px=-1)


def test_gene_maps_napari_placement():
    maps = GeneMaps(np.zeros((1, 3, 3), np.float32), ["a"], 4.0, (10.0, 20.0))
    assert maps.scale == (4.0, 4.0)
    assert maps.translate == (20.0, 10.0)
    assert maps.pixel_of(np.array([[14.0, 28.0]])).tolist() == [[2, 1]]


def test_lazy_maps_match_eager_and_compute_by_blocks():
    from napari_histosge.lazy_maps import rasterize_lazy

    rng = np.random.default_rng(3)
    xy = np.stack(np.meshgrid(np.arange(8.0), np.arange(6.0)), -1).reshape(-1, 2) * 20 + 5
    genes = [f"g{i}" for i in range(21)]
    preds = Predictions(
        genes,
        xy,
        rng.random((len(xy), 21)).astype("float32"),
        np.array(["spot"] * len(xy)),
        np.array([f"s{i}" for i in range(len(xy))]),
        10.0,
    )
    eager = rasterize(preds, pitch_px=4.0)
    lazy = rasterize_lazy(preds, pitch_px=4.0, genes_per_block=5)
    assert lazy.data.chunks[0] == (5, 5, 5, 5, 1)
    assert np.array_equal(np.asarray(lazy.data), eager.data, equal_nan=True)
    assert (lazy.pitch_px, lazy.origin_px) == (eager.pitch_px, eager.origin_px)
    sub = rasterize_lazy(preds, genes=["g7", "g2"], pitch_px=4.0)
    assert np.array_equal(sub.gene("g2"), eager.gene("g2"), equal_nan=True)
    assert isinstance(sub.gene("g2"), np.ndarray)
