"""Uncertainty, reliability, tissue domains and the resolution range of the superres maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import spatialdata as sd

from napari_histosge.cli import main
from napari_histosge.geometry.footprints import circle_membership, superpixel_grid
from napari_histosge.models._superres_uncertainty import footprint_variance, var_log1p
from napari_histosge.models.superres import SuperResConfig, fit_superres
from napari_histosge.store import (
    DOMAIN_GENES_KEY,
    DOMAINS_KEY,
    EXPRESSION_KEY,
    PREDICTIONS_KEY,
    UNCERTAINTY_KEY,
    write_sdata,
)


def _scale0(element):
    return element["scale0"]["image"] if hasattr(element, "keys") else element


def _affine(element):
    from spatialdata.transformations import get_transformation

    return {
        cs: tf.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
        for cs, tf in get_transformation(element, get_all=True).items()
    }


def _toy_model(seed: int = 0, depth: bool = True):
    """Units on a lattice with counts, a superpixel grid over them, a fitted model."""
    rng = np.random.default_rng(seed)
    grid = superpixel_grid((0, 0, 400, 400), 8.0)
    centres = np.array([[x, y] for x in range(50, 400, 100) for y in range(50, 400, 100)], float)
    member = circle_membership(grid.positions, centres, 27.5)
    rate = np.exp(rng.normal(size=(len(centres), 6))) * 1e-3
    dep = rng.uniform(500, 5000, size=len(centres))
    counts = rng.poisson(rate * dep[:, None])
    values = np.log1p(counts / dep[:, None] * 1e4)
    feats = rng.normal(size=(grid.n, 5)).astype(np.float32)
    model = fit_superres(
        feats, grid.positions, member, values, config=SuperResConfig(), depth=dep if depth else None
    )
    return model, member, grid


def test_var_log1p_matches_monte_carlo():
    rng = np.random.default_rng(0)
    rate = np.array([[2e-4, 3e-3, 5e-2]])
    depth = np.array([1500.0])
    k = rng.poisson(rate * depth, size=(200_000, 3))
    mc = np.log1p(k / depth * 1e4).var(0)
    np.testing.assert_allclose(var_log1p(rate, depth)[0], mc, rtol=0.03)


def test_sd_is_smaller_inside_footprints_and_reproducible():
    model, member, _grid = _toy_model()
    sd1 = model.predict_sd()
    inside = np.asarray(member.sum(0)).ravel() > 0
    assert sd1.shape == (model.n_superpixels, len(model.genes))
    assert np.isfinite(sd1).all()
    assert (sd1 >= 0).all()
    # Every gene: the map is more certain under the measured footprints than between them.
    assert (sd1[inside].mean(0) < sd1[~inside].mean(0)).all()
    sd2 = _toy_model()[0].predict_sd()
    np.testing.assert_array_equal(sd1, sd2)  # same data, same numbers


def test_footprint_variance_is_below_the_mean_of_its_superpixels():
    model, member, _grid = _toy_model()
    fv = footprint_variance(model, model.uncertainty, member)
    point = np.asarray(member @ model.predict_sd() ** 2)
    assert fv.shape == point.shape
    assert (fv >= 0).all()
    # Averaging over a footprint cancels part of the field's variance.
    assert (fv <= point + 1e-9).all()


@pytest.mark.parametrize(
    ("length", "shape"), [(60.0, "gaussian"), (60.0, "exponential"), (None, "exponential")]
)
def test_covariance_in_um_or_rough_keeps_the_contract(length, shape):
    from dataclasses import replace

    from napari_histosge.models._superres_uncertainty import fit_uncertainty

    model, member, _grid = _toy_model()
    pitch_sd = model.predict_sd()
    model.config = replace(model.config, uncertainty_length_um=length, uncertainty_shape=shape)
    model.uncertainty = fit_uncertainty(model, amplitude="moments")
    unc = model.uncertainty
    assert unc.shape == shape
    assert unc.length == pytest.approx(length or model.config.bandwidth * model.pitch)
    sd = model.predict_sd()
    inside = np.asarray(member.sum(0)).ravel() > 0
    assert np.isfinite(sd).all()
    assert (sd >= 0).all()
    assert (sd[inside].mean(0) < sd[~inside].mean(0)).all()
    assert not np.allclose(sd, pitch_sd)
    fv = footprint_variance(model, unc, member)
    assert (fv >= 0).all()
    assert (fv <= np.asarray(member @ sd**2) + 1e-9).all()


def test_covariance_settings_are_checked():
    with pytest.raises(ValueError, match="uncertainty_length_um"):
        SuperResConfig(uncertainty_length_um=0.0)
    with pytest.raises(ValueError, match="uncertainty_shape"):
        SuperResConfig(uncertainty_shape="matern52")


def test_reliability_columns_and_no_uncertainty_option():
    model, _m, _g = _toy_model()
    rel = model.reliability()
    assert list(rel.columns) == ["reliability_r2", "image_share"]
    assert rel["reliability_r2"].le(1).all()
    assert rel["image_share"].between(0, 1).all()
    rng = np.random.default_rng(0)
    grid = superpixel_grid((0, 0, 200, 200), 10.0)
    centres = rng.uniform(20, 180, size=(12, 2))
    member = circle_membership(grid.positions, centres, 15.0)
    cfg = SuperResConfig(uncertainty=False)
    bare = fit_superres(None, grid.positions, member, rng.random((12, 2)), config=cfg)
    assert bare.uncertainty is None
    assert bare.reliability()["reliability_r2"].isna().all()
    with pytest.raises(ValueError, match="uncertainty"):
        bare.predict_sd()


def test_sample_resolution_range_works_at_both_ends_and_refuses_outside(
    tmp_path, sample_sdata, capsys
):
    """Every resolution in the range gives maps; outside it one line names the range."""
    from napari_histosge.base.progress import run_generator
    from napari_histosge.geometry.footprints import unit_footprints
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import (
        SuperResOptions,
        iter_superres,
        resolution_range,
        superres_maps,
    )

    slide = Slide.open(sample_sdata)
    k = slide.keys
    _kind, _f, diam = unit_footprints(
        slide.sdata, image_key=k.image_key, spots_key=k.spots_key, table_key=k.table_key
    )
    um = slide.geometry.um_per_px
    finest, coarsest = resolution_range(slide.geometry.centers_px, diam, um)
    assert finest == pytest.approx(um)
    assert coarsest == pytest.approx(diam.min() * um)
    genes = list(slide.table.var_names[:2])
    for res in (2 * finest, 8.0, coarsest / 2, coarsest):
        result = run_generator(
            iter_superres(slide, genes=genes, options=SuperResOptions(resolution_um=res))
        )
        maps = superres_maps(result)
        assert np.isfinite(maps.data).any(axis=(1, 2)).all(), res
        assert np.isfinite(result.model.predict_sd()).all(), res
    store = tmp_path / "s.zarr"
    write_sdata(sample_sdata, store)
    for bad in ("200", "1000", "5000", "100000", str(finest / 2), "0"):
        out = tmp_path / f"o{bad}.zarr"
        code = main(["run", str(store), "--out", str(out), "--resolution-um", bad, "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2, bad
        assert len(err.splitlines()) == 1, err
        assert "between" in err or "positive" in err, err
        assert not out.exists()


@pytest.fixture(scope="module")
def c2_run(tmp_path_factory, her2st_c2_zarr):
    """`histosge run C2 --domains 6 --seed 0` once for the module (read only).

    It runs on a copy of the session's C2 store, into which it caches its features.
    """
    import shutil

    root = tmp_path_factory.mktemp("unc")
    src, out = root / "C2.zarr", root / "out.zarr"
    shutil.copytree(her2st_c2_zarr, src)
    args = ["run", str(src), "--out", str(out), "--seed", "0", "--domains", "6"]
    assert main([*args, "--n-top-genes", "200", "--quiet"]) == 0
    return out, src


@pytest.mark.shared_data
def test_run_writes_uncertainty_twin_of_the_maps(c2_run):
    out, src = c2_run
    back = sd.read_zarr(out)
    expr, unc = back.images[EXPRESSION_KEY], back.images[UNCERTAINTY_KEY]
    e0, u0 = _scale0(expr), _scale0(unc)
    assert e0.shape == u0.shape
    assert list(e0.c.values) == list(u0.c.values)
    assert _affine(expr).keys() == _affine(unc).keys()
    for cs, m in _affine(expr).items():
        np.testing.assert_allclose(_affine(unc)[cs], m)
    if hasattr(expr, "keys"):
        assert list(expr.keys()) == list(unc.keys())
    e, u = e0.values, u0.values
    assert np.array_equal(np.isfinite(e), np.isfinite(u))
    # Written beside the maps with their metadata, in Blosc lz4 (byte shuffle), every scale.
    folder = out / "images" / UNCERTAINTY_KEY
    meta = json.loads((folder / "zarr.json").read_text())["attributes"]["ome"]
    twin = json.loads((out / "images" / EXPRESSION_KEY / "zarr.json").read_text())
    assert meta["omero"] == twin["attributes"]["ome"]["omero"]
    assert meta["multiscales"][0]["name"].endswith(UNCERTAINTY_KEY)
    for d in meta["multiscales"][0]["datasets"]:
        codecs = json.loads((folder / d["path"] / "zarr.json").read_text())["codecs"]
        assert codecs[-1]["name"] == "blosc"
        assert codecs[-1]["configuration"]["cname"] == "lz4"
    assert (u[np.isfinite(u)] >= 0).all()
    # Larger between the measured spots than inside them, for most genes.
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import SuperResOptions, units_superpixel_grid

    slide = Slide.open(sd.read_zarr(src))
    g = slide.geometry
    step = SuperResOptions().resolution_um or 8.0
    grid, _ = units_superpixel_grid(g.centers_px, g.diameter_px, step / g.um_per_px)
    rows, cols = grid.rows_cols
    member = circle_membership(grid.positions, g.centers_px, g.diameter_px / 2)
    inside = np.asarray(member.sum(0)).ravel() > 0
    assert inside.any()
    assert (~inside).any()
    vals = u[:, rows, cols]  # (genes, superpixels)
    assert np.isfinite(vals).all()
    larger = vals[:, ~inside].mean(1) > vals[:, inside].mean(1)
    assert larger.mean() > 0.9, larger.mean()
    var = back.tables[PREDICTIONS_KEY].var
    assert {"reliability_r2", "image_share"} <= set(var.columns)
    assert var["image_share"].between(0, 1).all()


@pytest.mark.shared_data
def test_run_writes_six_domains_with_their_top_genes(c2_run):
    out, _ = c2_run
    back = sd.read_zarr(out)
    dom = back.labels[DOMAINS_KEY]
    values = np.unique(_scale0(dom).values)
    assert set(values.tolist()) == {0, 1, 2, 3, 4, 5, 6}
    for cs, m in _affine(back.images[EXPRESSION_KEY]).items():
        np.testing.assert_allclose(_affine(dom)[cs], m)
    table = back.tables[DOMAIN_GENES_KEY]
    assert table.obs["label"].tolist() == [1, 2, 3, 4, 5, 6]
    assert table.uns["spatialdata_attrs"]["region"] == DOMAINS_KEY
    assert all(len(t.split(", ")) == 10 for t in table.obs["top_genes"])
    assert table.n_vars == back.tables[PREDICTIONS_KEY].n_vars


@pytest.mark.shared_data
def test_evaluate_superres_pool_reports_accuracy_and_coverage(tmp_path, her2st_c2_copy):
    metrics = tmp_path / "m.json"
    args = ["evaluate", str(her2st_c2_copy), "--superres-pool", "2"]
    assert main([*args, "--metrics-out", str(metrics), "--quiet"]) == 0
    m = json.loads(metrics.read_text())
    for key in ("r_map", "r_own_unit", "r_knn", "r_smooth_lowrank"):
        assert -1 <= m[key] <= 1
    for key, nominal in (("coverage_50", 0.5), ("coverage_80", 0.8), ("coverage_95", 0.95)):
        assert abs(m[key] - nominal) < 0.1, (key, m[key])
        gaussian = m[key.replace("coverage_", "coverage_gaussian_")]
        assert abs(gaussian - nominal) < 0.1, (key, gaussian)
    assert m["error_sd_ratio"] >= 1.5
    assert m["n_units"] == 187
    assert m["n_genes"] == 250
    assert main([*args, "--metrics-out", str(metrics), "--quiet"]) == 2  # no silent overwrite


def test_evaluate_superres_pool_refuses_bad_input(tmp_path, sample_zarr, capsys):
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(sample_zarr, store)  # the bundled sample, as write_sdata writes it
    m = str(tmp_path / "m.json")
    assert main(["evaluate", str(store), "--superres-pool", "2", "--metrics-out", m]) == 2
    assert "raw counts" in capsys.readouterr().err  # the sample holds log-normalised values
    assert main(["evaluate", str(store), "--superres-pool", "1", "--metrics-out", m]) == 2
    assert "2 or more" in capsys.readouterr().err
    assert main(["run", str(store), "--out", str(tmp_path / "o.zarr"), "--domains", "1"]) == 2
    assert "--domains" in capsys.readouterr().err
