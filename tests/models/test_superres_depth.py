"""Count depth of the superres model: density map, expected measurement, predict_units."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from napari_histosge.evaluate.superres import superres_footprints
from napari_histosge.geometry.footprints import circle_membership, superpixel_grid
from napari_histosge.models._superres_depth import effective_sizes, expected_log1p, fit_depth
from napari_histosge.models.superres import SuperResConfig, fit_superres


def test_expected_log1p_matches_a_direct_sum():
    from scipy.stats import poisson

    depth = np.array([200.0, 5000.0])
    rate = np.array([[1e-3, 2e-2, 0.2], [1e-4, 1e-3, 3e-2]])
    got = expected_log1p(rate, depth, 1e4)
    k = np.arange(20000)[:, None]
    for i, d in enumerate(depth):
        mu = rate[i] * d
        pmf = poisson.pmf(k, mu[None, :])
        want = (pmf * np.log1p(1e4 * k / d)).sum(0)
        np.testing.assert_allclose(got[i], want, rtol=2e-3, atol=1e-6)


def test_sparse_counts_read_lower_at_low_depth():
    # Same expression, a quarter of the counts: the log of a sparse count is lower on average.
    rate = np.full((2, 1), 1e-3)
    low, high = expected_log1p(rate, np.array([500.0, 8000.0]))[:, 0]
    assert low < high - 0.5
    # Abundant genes hardly.
    rich = expected_log1p(np.full((2, 1), 0.05), np.array([500.0, 8000.0]))[:, 0]
    assert abs(rich[0] - rich[1]) < 0.05 * (high - low)


def test_fit_depth_matches_every_footprint_and_follows_the_image():
    rng = np.random.default_rng(0)
    grid = superpixel_grid((0, 0, 400, 400), 8.0)
    pos = grid.positions
    centres = np.array([[x, y] for x in (60.0, 200, 340) for y in (60.0, 200, 340)])
    a = circle_membership(pos, centres, 60.0)
    signal = np.sin(pos[:, 0] / 50.0)
    true_density = np.exp(0.8 * signal)
    depth = effective_sizes(a) * np.asarray(a @ true_density) * 50.0
    comps = np.c_[signal, rng.normal(size=len(pos))]
    comps -= comps.mean(0)
    d = fit_depth(comps, a, depth, np.logspace(-2, 5, 15))
    np.testing.assert_allclose(d.footprint_depth(a), depth, rtol=1e-8)
    inside = np.asarray(a.sum(0)).ravel() > 0
    r = np.corrcoef(d.log_density[inside], np.log(true_density[inside]))[0, 1]
    assert r > 0.8
    flat = fit_depth(None, a, depth, np.logspace(-2, 5, 15))
    np.testing.assert_allclose(flat.footprint_depth(a), depth, rtol=1e-8)
    assert np.ptp(flat.log_density[a[0].indices]) < 1e-9
    with pytest.raises(ValueError, match="positive finite unit depths"):
        fit_depth(None, a, np.r_[depth[:-1], 0.0], np.logspace(-2, 5, 15))
    with pytest.raises(ValueError, match="one depth per unit"):
        fit_depth(None, a, depth[:3], np.logspace(-2, 5, 15))


def test_predict_units_mean_and_poisson():
    grid = superpixel_grid((0, 0, 300, 300), 10.0)
    pos = grid.positions
    centres = np.array([[x, y] for x in (50.0, 150, 250) for y in (50.0, 150, 250)])
    a = circle_membership(pos, centres, 45.0)
    y = np.log1p(np.random.default_rng(1).poisson(5.0, size=(9, 3)).astype(float))
    mean_model = fit_superres(None, pos, a, y, config=SuperResConfig(measurement="mean"))
    np.testing.assert_allclose(mean_model.predict_units(a), a @ mean_model.predict(), atol=1e-6)
    with pytest.raises(ValueError, match="fitted with unit depths"):
        fit_superres(None, pos, a, y).predict_units(a)
    with pytest.raises(ValueError, match="footprints over the"):
        mean_model.predict_units(a[:, :10])
    with pytest.raises(ValueError, match="`measurement` 'mean' or 'poisson'"):
        SuperResConfig(measurement="max")  # type: ignore[arg-type]


def test_depth_aware_prediction_beats_the_map_mean_on_sparse_counts():
    """Spots whose depth follows the tissue: the expected measurement beats the map's mean."""
    n_side, pitch = 10, 100.0
    xs, ys = np.meshgrid(np.arange(n_side) * pitch, np.arange(n_side) * pitch)
    centres = np.c_[xs.ravel(), ys.ravel()] + pitch
    lo, hi = centres.min(0) - pitch, centres.max(0) + pitch
    pos = superpixel_grid((lo[0], lo[1], hi[0], hi[1]), 8.0).positions
    rng = np.random.default_rng(0)
    fine = np.sin(pos[:, 0] / 90.0 * np.pi) * np.cos(pos[:, 1] / 70.0 * np.pi)
    feats = np.c_[fine + 0.05 * rng.normal(size=len(pos)), rng.normal(size=(len(pos), 3))]
    spots = circle_membership(pos, centres, 40.0)
    density = np.exp(2.0 * fine)  # counts follow the tissue seen by the features
    depth = 300.0 * np.asarray(spots @ density)
    trend = (centres[:, 0] - centres[:, 0].mean()) / 600.0
    base = np.geomspace(2e-4, 2e-2, 20)
    rate = base[None, :] * np.exp(trend[:, None] * np.linspace(-1, 1, 20)[None, :])
    counts = sp.csr_matrix(rng.poisson(rate * depth[:, None]))
    res = superres_footprints(
        feats, pos, centres, spots, counts, factor=2, n_genes=20,
        configs={"mean": SuperResConfig(measurement="mean"), "poisson": SuperResConfig()},
    )  # fmt: skip
    r = res["mean_r"]
    assert r["poisson"] > r["mean"] + 0.03
    assert r["poisson"] > r["own_unit_depth"] + 0.01
    assert res["consistency"]["poisson"] < 1e-4
