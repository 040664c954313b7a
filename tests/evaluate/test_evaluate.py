from __future__ import annotations

import warnings

import numpy as np
import pytest
import spatialdata as sd

from napari_histosge import run_generator
from napari_histosge.evaluate import (
    checkerboard_mask,
    evaluate_holdout,
    knn_interpolate,
    metrics,
    pearson_per_gene,
    pool_pseudospots,
    random_mask,
    recovery,
    smooth_lowrank,
    spatial_shuffle,
    superresolution,
)
from napari_histosge.expression import prepare_targets
from napari_histosge.workflows.pipeline import Slide


def test_metrics_known_values():
    pred = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    true = np.array([[1.0, 1.0], [2.0, 2.0], [4.0, 3.0]])
    r = pearson_per_gene(pred, true)
    assert r[0] == pytest.approx(np.corrcoef(pred[:, 0], true[:, 0])[0, 1])
    assert np.isnan(r[1])
    m = metrics(pred, true, ["a", "b"])
    assert m["mean_r"] == pytest.approx(r[0])
    assert m["n_genes_scored"] == 1
    assert m["mse"] == pytest.approx(((pred - true) ** 2).mean())


def test_splits():
    xs, ys = np.meshgrid(np.arange(6.0), np.arange(6.0))
    mask = checkerboard_mask(np.c_[xs.ravel(), ys.ravel()] * 200)
    assert mask.sum() == 18
    assert (mask.reshape(6, 6)[0] == [True, False] * 3).all()
    a, b = random_mask(100, 0.5, 1), random_mask(100, 0.5, 1)
    assert (a == b).all()
    assert a.sum() == 50


def test_baselines_recover_smooth_field():
    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(12.0), np.arange(12.0))
    xy = np.c_[xs.ravel(), ys.ravel()] * 100
    field = np.sin(xy[:, :1] / 300) * np.cos(xy[:, 1:] / 400)
    y = field @ rng.random((1, 8)) + 0.05 * rng.normal(size=(len(xy), 8))
    tr = checkerboard_mask(xy)
    knn = knn_interpolate(xy[tr], y[tr], xy[~tr])
    slr = smooth_lowrank(xy[tr], y[tr])
    assert metrics(knn, y[~tr])["mean_r"] > 0.7
    assert metrics(slr.predict(xy[~tr]), y[~tr])["mean_r"] > metrics(knn, y[~tr])["mean_r"]
    assert slr.rank <= 8


def test_pool_pseudospots_sums_counts():
    xs, ys = np.meshgrid(np.arange(6.0), np.arange(6.0))
    xy = np.c_[xs.ravel(), ys.ravel()] * 200
    counts = np.ones((36, 3))
    centres, pooled, labels = pool_pseudospots(xy, counts, 2)
    assert centres.shape == (9, 2)
    assert np.allclose(np.asarray(pooled), 4)
    assert labels.max() == 8


def test_targets_normalise_and_select_on_training_spots(her2st_c2_zarr):
    sdata = sd.read_zarr(her2st_c2_zarr)
    table = sdata.tables["table"]
    before = table.X.copy()
    tg = prepare_targets(table, n_top_genes=50)
    assert tg.values.shape == (187, 50)
    assert not tg.log_normalized_input
    assert (before != table.X).nnz == 0  # the user's table is untouched
    raw = np.asarray(table[:, tg.genes[0]].X.todense()).ravel()
    lib = np.asarray(table.X.sum(1)).ravel()
    np.testing.assert_allclose(tg.values[:, 0], np.log1p(raw / lib * 1e4), rtol=1e-4)
    with pytest.raises(ValueError, match="unknown"):
        prepare_targets(table, genes=["ERBB2", "NOT_A_GENE"])


def test_recovery_on_her2st_beats_knn_and_shuffle(her2st_c2_copy):
    slide = Slide.open(sd.read_zarr(her2st_c2_copy))
    obs = slide.table.obs
    held = ((obs["array_x"] + obs["array_y"]) % 2 == 1).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_generator(
            evaluate_holdout(slide, holdout=list(slide.table.obs_names[held]), n_top_genes=250)
        )
    m = res.metrics["methods"]
    assert res.predictions.shape == (held.sum(), 250)
    assert set(res.predictions.index) == set(slide.table.obs_names[held])
    assert m["model"]["mean_r"] > m["knn"]["mean_r"]
    assert m["model"]["mean_r"] > m["spatial_shuffle"]["mean_r"] + 0.1
    # The array-level protocol on the same split, with the cached built-in histology features.
    from napari_histosge.features import extract_features

    geom = slide.geometry
    fs = extract_features(
        slide.sdata, geom.centers_px, image_key=slide.keys.image_key, geometry=geom
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = recovery(
            slide.table,
            fs.features,
            geom.centers_um,
            ~held,
            n_top_genes=250,
            flavor="variance",
            feature_meta=fs.meta,
        )
    r = {k: v["mean_r"] for k, v in rec["methods"].items()}
    assert rec["n_heldout"] == held.sum()
    assert rec["predictions"].shape == (held.sum(), 250)
    assert r["model"] > r["knn"]
    assert r["model"] > r["smooth_lowrank"]
    assert r["model"] > r["spatial_shuffle"] + 0.2
    with pytest.raises(ValueError, match="unknown"):
        run_generator(evaluate_holdout(slide, holdout=["nope"]))
    with pytest.raises(ValueError, match="at least 10 training"):
        run_generator(evaluate_holdout(slide, holdout=list(slide.table.obs_names[5:])))


def test_spatial_shuffle_is_a_permutation_of_positions():
    v = np.arange(20.0).reshape(10, 2)
    s = spatial_shuffle(v, seed=0)
    assert sorted(s[:, 0]) == sorted(v[:, 0])
    assert (s[:, 1] - s[:, 0] == 1).all()
    assert not np.array_equal(s, v)
    assert np.array_equal(s, spatial_shuffle(v, seed=0))


def test_superresolution_protocol_on_a_synthetic_lattice():
    import anndata as ad

    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(14.0), np.arange(14.0))
    xy = np.c_[xs.ravel(), ys.ravel()] * 200.0
    field = np.sin(xy[:, :1] / 500) + np.cos(xy[:, 1:] / 700)
    lam = np.exp(field @ rng.normal(size=(1, 30)) + 2)
    a = ad.AnnData(rng.poisson(lam).astype(np.float32))
    feats = np.c_[field + 0.1 * rng.normal(size=field.shape), rng.normal(size=(len(xy), 3))].astype(
        np.float32
    )
    from napari_histosge.train import TrainConfig

    res = superresolution(a, feats, xy, n_top_genes=20, config=TrainConfig(epochs=10, ensemble=1))
    r = {k: v["mean_r"] for k, v in res["methods"].items()}
    assert res["n_pseudo"] == 49
    assert res["predictions"].shape == (196, 20)
    assert r["model"] > 0.5
    assert r["model"] > r["spatial_shuffle"] + 0.3
