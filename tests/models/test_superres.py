"""Super-resolution: footprints, dense features, the footprint-consistent model and its protocol."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from napari_histosge.evaluate.superres import (
    BASELINES,
    loso_choice,
    pooled_units,
    superres_footprints,
)
from napari_histosge.geometry.footprints import (
    SuperpixelGrid,
    circle_membership,
    default_resolution,
    geometry_membership,
    pool_membership,
    superpixel_grid,
)
from napari_histosge.models.superres import SuperResConfig, fit_superres


def _square_slide(n_side: int = 8, pitch: float = 100.0, radius: float = 40.0, step: float = 8.0):
    """Square lattice of disks, a superpixel grid over them, a planted field and its features."""
    xs, ys = np.meshgrid(np.arange(n_side) * pitch, np.arange(n_side) * pitch)
    centres = np.c_[xs.ravel(), ys.ravel()] + pitch
    lo, hi = centres.min(0) - pitch, centres.max(0) + pitch
    grid = superpixel_grid((lo[0], lo[1], hi[0], hi[1]), step)
    pos = grid.positions
    rng = np.random.default_rng(0)
    # A field with structure finer than the units (90 and 70 µm) that the features see.
    fine = np.sin(pos[:, 0] / 90.0 * np.pi) * np.cos(pos[:, 1] / 70.0 * np.pi)
    trend = (pos[:, 0] - pos[:, 0].mean()) / 400.0
    feats = np.c_[fine + 0.05 * rng.normal(size=len(pos)), rng.normal(size=(len(pos), 3))]
    truth = np.c_[2.0 + fine + trend, 2.0 - 0.5 * fine + 0.3 * trend]
    return grid, pos, centres, radius, feats, truth


def test_grid_and_circle_membership():
    grid = superpixel_grid((0, 0, 40, 20), 4.0)
    assert grid.shape == (5, 10)
    assert grid.n == 50
    m = circle_membership(grid.positions, np.array([[10.0, 10.0], [30.0, 10.0]]), 6.0)
    assert m.shape == (2, 50)
    np.testing.assert_allclose(np.asarray(m.sum(1)).ravel(), 1.0)
    # A circle smaller than a superpixel still gets one superpixel.
    tiny = circle_membership(grid.positions, np.array([[1.0, 1.0]]), 0.1)
    assert tiny.nnz == 1
    raster = grid.to_raster(np.arange(50.0))
    assert raster.shape == (1, 5, 10)
    assert raster[0, 1, 0] == 10.0


def test_multipolygon_footprints_match_union_of_disks():
    from shapely.geometry import MultiPolygon, Point

    grid = superpixel_grid((0, 0, 200, 200), 4.0)
    pos = grid.positions
    centres = np.array([[50.0, 50.0], [150.0, 50.0], [50.0, 150.0], [150.0, 150.0]])
    disks = circle_membership(pos, centres, 30.0)
    pooled = pool_membership(disks, np.array([0, 0, 1, 1]))
    shapes = [
        MultiPolygon([Point(*c).buffer(30.0, 64) for c in centres[:2]]),
        MultiPolygon([Point(*c).buffer(30.0, 64) for c in centres[2:]]),
    ]
    poly = geometry_membership(pos, shapes)
    same = (pooled.toarray() > 0) == (poly.toarray() > 0)
    assert same.mean() > 0.998
    np.testing.assert_allclose(np.asarray(poly.sum(1)).ravel(), 1.0)


def test_footprint_input_errors():
    from shapely.geometry import LineString

    pos = np.zeros((3, 2))
    with pytest.raises(ValueError, match="Expected Polygon or MultiPolygon"):
        geometry_membership(pos, [LineString([(0, 0), (1, 1)])])
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        circle_membership(np.zeros(3), np.zeros((1, 2)), 1.0)
    with pytest.raises(ValueError, match="positive finite circle radii"):
        circle_membership(pos, np.zeros((1, 2)), -1.0)
    with pytest.raises(ValueError, match="positive superpixel step"):
        superpixel_grid((0, 0, 1, 1), 0.0)
    assert default_resolution(np.array([16.0, 55.0]), 8.0) == 4.0


@pytest.mark.parametrize("aggregate", ["log", "counts"])
def test_model_matches_every_footprint(aggregate):
    grid, pos, centres, radius, feats, truth = _square_slide()
    a = circle_membership(pos, centres, radius)
    y = np.asarray(a @ truth)
    # R² (not its square root) scales the image term: in count space a stronger image term
    # leaves larger mismatches, whose exact projection can push superpixels below 0, where
    # the map is clipped and the footprint match is no longer exact.
    cfg = SuperResConfig(aggregate=aggregate, image_weight=1.0, shrink_power=1.0)
    model = fit_superres(feats, pos, a, y, genes=["g0", "g1"], config=cfg)
    pred = model.predict()
    assert pred.shape == (len(pos), 2)
    assert pred.dtype == np.float32
    if aggregate == "log":
        np.testing.assert_allclose(a @ pred, y, atol=1e-4)
    else:
        np.testing.assert_allclose(a @ np.expm1(pred.astype(float)), np.expm1(y), rtol=1e-3)
    # Gene subsets give the same columns.
    np.testing.assert_allclose(model.predict(["g1"])[:, 0], pred[:, 1], atol=1e-5)


def test_model_is_deterministic_and_uses_the_image():
    grid, pos, centres, radius, feats, truth = _square_slide()
    a = circle_membership(pos, centres, radius)
    y = np.asarray(a @ truth)
    cfg = SuperResConfig(image_weight=1.0, nugget=1.0, gene_shrink=False)
    p1 = fit_superres(feats, pos, a, y, config=cfg).predict()
    p2 = fit_superres(feats, pos, a, y, config=cfg).predict()
    np.testing.assert_array_equal(p1, p2)
    smooth = fit_superres(None, pos, a, y, config=cfg).predict()
    default = fit_superres(feats, pos, a, y).predict()
    inside = np.asarray(a.sum(0)).ravel() > 0
    own = np.asarray(a.T @ y)[inside] / np.asarray(a.T.sum(1))[inside]  # own-unit copy

    def r(p):
        return np.corrcoef(p[inside, 0], truth[inside, 0])[0, 1]

    r_own = np.corrcoef(own[:, 0], truth[inside, 0])[0, 1]
    # The planted structure finer than the units is only visible through the features.
    assert r(p1) > r(smooth) + 0.1
    assert r(p1) > r_own + 0.1
    # The default shrinks the image term (chosen on real data) but still uses it.
    assert r(default) > r_own + 0.005


def test_model_input_errors():
    pos = np.random.default_rng(0).random((50, 2)) * 100
    a = circle_membership(pos, np.array([[20.0, 20], [50, 50], [80, 80]]), 20.0)
    y = np.ones((3, 2))
    with pytest.raises(ValueError, match="membership matrix over the 40 superpixels"):
        fit_superres(None, pos[:40], a, y)
    with pytest.raises(ValueError, match=r"values of shape \(3, genes\)"):
        fit_superres(None, pos, a, np.ones((4, 2)))
    with pytest.raises(ValueError, match="rows that sum to 1"):
        fit_superres(None, pos, a * 2, y)
    with pytest.raises(ValueError, match="finite unit values"):
        fit_superres(None, pos, a, np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match=r"features of shape \(50, d\)"):
        fit_superres(np.ones((10, 3)), pos, a, y)
    with pytest.raises(ValueError, match="positive `bandwidth`"):
        SuperResConfig(bandwidth=0)
    with pytest.raises(ValueError, match="`aggregate` 'log' or 'counts'"):
        SuperResConfig(aggregate="sum")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="unknown"):
        fit_superres(None, pos, a, y).predict(["nope"])


def test_protocol_on_a_synthetic_section():
    grid, pos, centres, radius, feats, truth = _square_slide(n_side=10)
    a = circle_membership(pos, centres, radius)
    rng = np.random.default_rng(1)
    rate = np.exp(np.asarray(a @ truth))
    counts = sp.csr_matrix(rng.poisson(np.c_[rate * 20, rate * 10, np.full(len(rate), 300.0)]))
    centres_p, pooled, labels, unit_m = pooled_units(centres, a, counts, 2)
    assert unit_m.shape == (25, len(pos))
    assert len(np.unique(labels)) == 25
    res = superres_footprints(
        feats, pos, centres, a, counts, factor=2, n_genes=3,
        configs={"m": SuperResConfig(image_weight=1.0, nugget=1.0)},
    )  # fmt: skip
    assert set(res["mean_r"]) == {*BASELINES, "m"}
    assert res["consistency"]["m"] < 1e-4
    assert res["mean_r"]["m"] > res["mean_r"]["own_unit"]
    assert loso_choice({"a": {"x": 1.0, "y": 0.5}, "b": {"x": 0.0, "y": 0.9}}, "a") == "y"


def test_dense_histology_and_vit_token_maps():
    import xarray as xr

    from napari_histosge.base.progress import run_generator
    from napari_histosge.features import get_encoder
    from napari_histosge.features.dense import (
        histology_dense_maps,
        pool_maps,
        superpixel_features,
        vit_token_maps,
    )

    rng = np.random.default_rng(0)
    rgb = np.full((3, 256, 256), 230, np.uint8)
    rgb[:, 64:192, 64:192] = rng.integers(60, 160, size=(3, 128, 128), dtype=np.uint8)
    img = xr.DataArray(rgb, dims=("c", "y", "x"))
    maps = run_generator(histology_dense_maps(img, 1.0, (0, 0, 256, 256)))
    grid = SuperpixelGrid((4.0, 4.0), 8.0, np.ones((32, 32), bool))
    f = superpixel_features(maps, grid.positions, scales_um=(8, 32))
    assert f.shape == (1024, 44)
    assert np.isfinite(f).all()
    # Spot features pooled from the same maps equal the superpixel features of the same box.
    np.testing.assert_allclose(
        superpixel_features(maps, grid.positions[:1], scales_um=(8,)), f[:1, :22], rtol=1e-5
    )
    enc = get_encoder("timm:test_vit", weights="random", device="cpu")
    tok = vit_token_maps(enc, img, 0.5, (0, 0, 256, 256), context=1)
    assert tok.cells.shape[0] == 64
    assert tok.cell_px == pytest.approx(16.0)
    vals = pool_maps(tok, np.array([[128.0, 128.0], [8.0, 8.0]]), 16.0)
    assert vals.shape == (2, 64)
    assert not np.allclose(vals[0], vals[1])
    skipped = vit_token_maps(enc, img, 0.5, (0, 0, 256, 256), keep=lambda c: np.zeros(len(c), bool))
    assert not skipped.cells.any()


@pytest.mark.her2st
def test_her2st_c2_beats_copying_the_pseudo_unit(her2st_c2_zarr):
    import spatialdata as sd
    from scipy.spatial import cKDTree

    from napari_histosge.base.progress import run_generator
    from napari_histosge.features.dense import histology_dense_maps, superpixel_features
    from napari_histosge.workflows.pipeline import Slide

    slide = Slide.open(sd.read_zarr(her2st_c2_zarr))
    g = slide.geometry
    rad = g.diameter_px / 2
    step = 8.0 / g.um_per_px
    lo, hi = g.centers_px.min(0) - rad - step, g.centers_px.max(0) + rad + step
    tree = cKDTree(g.centers_px)
    grid = superpixel_grid((*lo, *hi), step, keep=lambda p: tree.query(p)[0] <= rad)
    ctx = 150.0 / g.um_per_px
    image = slide.sdata.images[slide.keys.image_key]
    maps = run_generator(
        histology_dense_maps(
            image, g.um_per_px, (lo[0] - ctx, lo[1] - ctx, hi[0] + ctx, hi[1] + ctx)
        )
    )
    feats = superpixel_features(maps, grid.positions)
    spots = circle_membership(grid.positions, g.centers_px, rad)
    res = superres_footprints(
        feats, grid.positions, g.centers_px, spots, slide.table.X, factor=2,
        configs={"default": SuperResConfig()},
    )  # fmt: skip
    r = res["mean_r"]
    assert r["default"] >= r["own_unit"]
    assert r["default"] > max(r["knn"], r["linear"], r["smooth_lowrank"])
    assert res["consistency"]["default"] < 1e-4


def test_fill_uses_the_grid_spacing_on_large_grids():
    # The spacing is measured against all superpixels: within a subsample it would be several
    # times the grid's, and the fill's neighbourhoods and unit radii as many times too large.
    from napari_histosge.geometry.lattice import lattice_pitch
    from napari_histosge.models._superres_fill import outside_fill

    yy, xx = np.mgrid[0:260, 0:260]
    pos = 8.0 * np.c_[yy.ravel(), xx.ravel()].astype(float)
    assert lattice_pitch(pos, max_queries=20000) == pytest.approx(8.0)
    centroids = np.array([[400.0, 400.0], [1600.0, 1600.0]])
    inside = [np.linalg.norm(pos - c, axis=1) < 60.0 for c in centroids]
    a = sp.csr_matrix(np.stack(inside) / np.sum(inside, axis=1, keepdims=True))  # means
    fill = outside_fill(pos, a, centroids, pitch=1200.0)
    corrections = fill.apply(np.array([[1.0], [-1.0]])).ravel()
    # Next to a footprint the fill continues that unit's correction, far away it blends.
    near = np.linalg.norm(pos[fill.off] - centroids[0], axis=1) < 75.0
    assert near.any()
    assert np.all(corrections[near] > 0.8)
    assert np.all(np.abs(corrections) <= 1.0 + 1e-6)
