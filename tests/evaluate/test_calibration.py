"""Predictive intervals of counts: exact for a calibrated model, however sparse the counts."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histosge.evaluate.calibration import count_coverage, count_pit, coverage

TS = 1e4


def _draw(rng, n_units=3000, field_sd=0.6, depth=None):
    """Counts drawn from the measurement model: sparse genes (mean 0.2–3 counts) and deep ones."""
    depth = rng.uniform(500, 4000, n_units) if depth is None else np.full(n_units, depth)
    mean_counts = np.array([0.2, 0.6, 1.5, 3.0, 8.0, 20.0, 200.0])
    rate = mean_counts[None, :] / 2000.0 * np.ones((n_units, 1))
    var = np.full(rate.shape, field_sd**2)
    z = np.log1p(TS * rate) + rng.normal(size=rate.shape) * field_sd
    counts = rng.poisson(depth[:, None] * np.clip(np.expm1(z), 0, None) / TS)
    return counts.astype(float), depth, rate, var


def test_count_intervals_cover_their_nominal_share_of_sparse_counts():
    rng = np.random.default_rng(0)
    counts, depth, rate, var = _draw(rng)
    assert (counts == 0).mean() > 0.2  # many values are 0, as in legacy-ST spots
    below, upto = count_pit(counts, depth, rate, var)
    for key, nominal in (("coverage_50", 0.5), ("coverage_80", 0.8), ("coverage_95", 0.95)):
        got = count_coverage(below, upto)[key]
        assert abs(got - nominal) < 0.015, (key, got)
        per_gene = [count_coverage(below[:, [g]], upto[:, [g]])[key] for g in range(7)]
        assert max(abs(np.array(per_gene) - nominal)) < 0.04, (key, per_gene)


def test_count_intervals_show_a_too_narrow_or_too_wide_field():
    rng = np.random.default_rng(1)
    counts, depth, rate, var = _draw(rng)
    narrow = count_coverage(*count_pit(counts, depth, rate, var * 0.1))
    wide = count_coverage(*count_pit(counts, depth, rate, var * 4.0))
    assert narrow["coverage_50"] < 0.45
    assert narrow["coverage_80"] < 0.75
    assert wide["coverage_50"] > 0.55
    assert wide["coverage_80"] > 0.85


def test_gaussian_intervals_miss_sparse_counts_that_count_intervals_cover():
    rng = np.random.default_rng(2)
    counts, depth, rate, var = _draw(rng, n_units=20000, field_sd=0.3, depth=2000.0)
    truth = np.log1p(TS * counts / depth[:, None])
    # the measurement's own mean and sd: the best a Gaussian interval can be
    gauss = coverage(truth, truth.mean(0) * np.ones_like(truth), truth.std(0) * np.ones_like(truth))
    counted = count_coverage(*count_pit(counts, depth, rate, var))
    assert abs(counted["coverage_50"] - 0.5) < 0.015
    per_gene = [
        coverage(truth[:, [g]], truth[:, [g]].mean(0), truth[:, [g]].std(0))["coverage_50"]
        for g in range(2)
    ]
    assert min(abs(np.array(per_gene) - 0.5)) > 0.25, per_gene  # 0.2 and 0.6 counts: far off
    counted_sparse = count_coverage(*count_pit(counts[:, :3], depth, rate[:, :3], var[:, :3]))
    assert abs(counted_sparse["coverage_50"] - 0.5) < 0.015
    assert abs(gauss["coverage_95"] - 0.95) > abs(counted["coverage_95"] - 0.95)


def test_count_pit_matches_poisson_without_field_variance():
    from scipy.stats import poisson

    k = np.array([[0.0, 1.0, 5.0, 40.0]])
    mean = np.array([[0.3, 2.0, 7.0, 35.0]])
    below, upto = count_pit(k, np.array([TS]), mean / TS, np.zeros_like(mean))
    np.testing.assert_allclose(below, np.where(k > 0, poisson.cdf(k - 1, mean), 0.0), atol=1e-12)
    np.testing.assert_allclose(upto, poisson.cdf(k, mean), atol=1e-12)


@pytest.mark.parametrize("levels", [(0.5,), (0.1, 0.9)])
def test_count_coverage_splits_a_count_on_the_interval_end(levels):
    below = np.array([0.0, 0.2, 0.97])
    upto = np.array([0.6, 0.3, 1.0])
    got = count_coverage(below, upto, levels)
    for q in levels:
        lo, hi = (1 - q) / 2, (1 + q) / 2
        want = np.mean(
            [max(0.0, min(u, hi) - max(b, lo)) / (u - b) for b, u in zip(below, upto, strict=True)]
        )
        assert got[f"coverage_{round(100 * q)}"] == pytest.approx(want)
