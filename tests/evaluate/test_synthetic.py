"""Synthetic latent-truth protocol: known sub-spot expression, maps scored against it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histosge.evaluate.synthetic import SyntheticConfig, score_synthetic, synthetic_slide


@pytest.fixture(scope="module")
def small():
    return synthetic_slide(SyntheticConfig(size_px=600, n_genes=30, seed=3))


def test_slide_is_seeded_and_counts_follow_the_truth(small):
    again = synthetic_slide(SyntheticConfig(size_px=600, n_genes=30, seed=3))
    a, b = small.sdata.tables["table"].X, again.sdata.tables["table"].X
    np.testing.assert_array_equal(a.toarray(), b.toarray())
    other = synthetic_slide(SyntheticConfig(size_px=600, n_genes=30, seed=4))
    assert not np.array_equal(a.toarray(), other.sdata.tables["table"].X.toarray())
    np.testing.assert_allclose(small.fractions.sum(0), 1.0, atol=1e-5)
    # The spots' measured expression tracks the truth under their footprints (a box of the
    # same area as the 55 µm disk): gene by gene over spots.
    from napari_histosge.metrics import pearson_per_gene
    from napari_histosge.workflows.pipeline import Slide

    slide = Slide.open(small.sdata)
    assert slide.geometry.um_per_px == pytest.approx(1.0)
    truth = small.truth(slide.geometry.centers_px, 55.0 * np.sqrt(np.pi) / 2)
    measured = slide.targets(genes=small.genes).values
    assert np.nanmedian(pearson_per_gene(measured, truth)) > 0.6


def test_image_driven_truth_is_recovered_better_than_copying_the_spot(small):
    from napari_histosge.models.superres import SuperResConfig

    res = score_synthetic(
        small,
        configs={"superres": SuperResConfig(), "no_image": SuperResConfig(image_weight=0.0)},
    )
    r, s = res["mean_r"], res["mean_ssim"]
    assert set(r) == {"superres", "no_image", "own_unit", "knn", "smooth_lowrank", "linear"}
    assert res["n_superpixels_off_image"] == 0
    assert res["resolution_um"] == pytest.approx(8.0)
    # The image explains the truth here: the model must beat copying the spot and the
    # same model without its image term.
    assert r["superres"] > r["own_unit"] + 0.03
    assert r["superres"] > r["no_image"] + 0.03
    assert s["superres"] > s["own_unit"]
    assert all(np.isfinite(list(s.values())))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="Expected `hidden` in"):
        SyntheticConfig(hidden=1.5)
    with pytest.raises(ValueError, match="Expected 2 to 6 types"):
        SyntheticConfig(n_types=9)
    with pytest.raises(ValueError, match="at least 300 µm"):
        SyntheticConfig(size_px=100)
