"""Nuclei segmentation in tiles, the per-cell table and ``histosge run --cells``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_histosge.cells.metrics import match_nuclei
from napari_histosge.cells.segment import NucleiOptions, segment_nuclei


@pytest.fixture(scope="module")
def synthetic():
    from napari_histosge.evaluate.synthetic import SyntheticConfig, synthetic_slide

    return synthetic_slide(SyntheticConfig(size_px=600, n_genes=6, seed=0))


def _labels(nuc) -> np.ndarray:
    try:
        return np.asarray(nuc.labels.compute())
    finally:
        nuc.close()


def test_synthetic_slide_keeps_its_nuclei(synthetic):
    t = synthetic.nuclei
    assert t.shape == synthetic.fractions.shape[1:]
    assert t.dtype == np.int32
    assert t.max() > 20
    image = np.asarray(synthetic.sdata.images["he"].data)
    # drawn nuclei are dark: far below the mean brightness of the slide
    assert image[:, t > 0].mean() < image[:, t == 0].mean() - 40


def test_segmentation_finds_the_drawn_nuclei(synthetic):
    nuc = segment_nuclei(synthetic.sdata.images["he"], 1.0)
    assert nuc.n == len(nuc.table)
    assert set(nuc.table.columns) >= {"x", "y", "area_um2"}
    score = match_nuclei(synthetic.nuclei, _labels(nuc))
    assert score["f1"] >= 0.9, score
    assert abs(score["count_error"]) <= 0.1


def test_tiles_do_not_cut_or_double_nuclei(synthetic):
    image = synthetic.sdata.images["he"]
    whole = segment_nuclei(image, 1.0, options=NucleiOptions(tile_px=2048))
    table = whole.table.copy()
    one = _labels(whole)
    small = segment_nuclei(image, 1.0, options=NucleiOptions(tile_px=128, threshold=None))
    assert small.meta["n_tiles"] == 25
    assert small.meta["n_unmatched_parts"] == 0
    many = _labels(small)
    assert small.n == len(table)
    same = match_nuclei(one, many, iou=0.99)
    assert same["tp"] == same["n_true"] == same["n_pred"]
    ids = np.unique(many)
    assert np.array_equal(ids[ids > 0], np.arange(1, small.n + 1))


def test_a_nucleus_across_tile_corners_is_one_label():
    import xarray as xr

    rgb = np.stack([np.full((400, 400), v, np.uint8) for v in (236, 168, 196)])
    yy, xx = np.mgrid[0:400, 0:400]
    centres = [(128, 128), (256, 130), (60, 256), (300, 300)]  # on tile borders and corners
    for cx, cy in centres:
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= 5**2
        rgb[:, disc] = np.array((78, 46, 128), np.uint8)[:, None]
    image = xr.DataArray(rgb, dims=("c", "y", "x"))
    nuc = segment_nuclei(image, 1.0, options=NucleiOptions(tile_px=128))
    lab = _labels(nuc)
    assert nuc.n == len(centres)
    for cx, cy in centres:
        assert lab[cy, cx] > 0
        assert (lab == lab[cy, cx]).sum() == pytest.approx(np.pi * 25, rel=0.25)


def test_extent_and_keep_restrict_the_nuclei(synthetic):
    image = synthetic.sdata.images["he"]
    nuc = segment_nuclei(image, 1.0, extent=(100, 50, 400, 300), keep=lambda xy: xy[:, 0] < 250)
    lab = _labels(nuc)
    assert lab.shape == (250, 300)
    assert nuc.offset_px == (100, 50)
    assert (nuc.table["x"] < 250).all()
    assert (nuc.table["x"] >= 100).all()
    assert len(np.unique(lab)) - 1 == nuc.n


def test_options_are_checked():
    with pytest.raises(ValueError, match="min_diameter_um"):
        NucleiOptions(min_diameter_um=20.0)
    with pytest.raises(ValueError, match="nucleus method"):
        NucleiOptions(method="cellpose")  # type: ignore[arg-type]


def _check_contract(out: Path) -> None:
    import spatialdata as sd
    from spatialdata.models import get_table_keys
    from spatialdata.transformations import get_transformation

    s = sd.read_zarr(out)
    for key in ("histosge_expression", "histosge_positions", "histosge_predictions"):
        assert key in s
    labels = s.labels["histosge_nuclei"]
    image_cs = set(get_transformation(s.images[next(iter(s.images))], get_all=True))
    assert set(get_transformation(labels, get_all=True)) >= image_cs
    table = s.tables["histosge_cells"]
    region, _, instance_key = get_table_keys(table)
    assert region == "histosge_nuclei"
    assert "scale1" in labels.children  # multiscale
    ids = np.unique(np.asarray(labels["scale0"]["image"].data.compute()))
    assert np.array_equal(np.sort(table.obs[instance_key].to_numpy()), ids[ids > 0])
    maps = s.images["histosge_expression"]
    maps = maps["scale0"]["image"] if "scale0" in getattr(maps, "children", {}) else maps
    channels = [str(c) for c in maps.c.values]
    assert set(channels) <= set(table.var_names)
    assert {"area_um2", "x_um", "y_um", "unit", "morph_class"} <= set(table.obs.columns)
    assert np.isfinite(np.asarray(table.X)).all()


@pytest.mark.slow
def test_run_cells_writes_nuclei_and_cells(tmp_path, synthetic):
    from napari_histosge.cli import main
    from napari_histosge.store import write_sdata

    store = tmp_path / "syn.zarr"
    write_sdata(synthetic.sdata, store)
    out = tmp_path / "out.zarr"
    assert main(["run", str(store), "--out", str(out), "--cells", "--seed", "0", "--quiet"]) == 0
    _check_contract(out)


@pytest.mark.slow
def test_run_cells_on_a_slide_without_nuclei_says_so_and_writes_the_maps(
    tmp_path, synthetic, capsys
):
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import get_transformation

    from napari_histosge.cli import main
    from napari_histosge.store import CELLS_KEY, EXPRESSION_KEY, NUCLEI_KEY, write_sdata

    he = synthetic.sdata.images["he"]
    blank = Image2DModel.parse(
        np.full(he.shape, 235, np.uint8),
        dims=("c", "y", "x"),
        transformations=get_transformation(he, get_all=True),
    )
    tables = {"table": synthetic.sdata.tables["table"]}
    shapes = dict(synthetic.sdata.shapes)
    store = tmp_path / "blank.zarr"
    write_sdata(sd.SpatialData(images={"he": blank}, shapes=shapes, tables=tables), store)
    out = tmp_path / "out.zarr"
    assert main(["run", str(store), "--out", str(out), "--cells", "--seed", "0", "--quiet"]) == 0
    assert "found no nuclei" in capsys.readouterr().out
    back = sd.read_zarr(out)
    assert EXPRESSION_KEY in back.images
    assert NUCLEI_KEY not in back.labels
    assert CELLS_KEY not in back.tables


def test_cells_need_the_superres_mode(tmp_path, synthetic):
    from napari_histosge.cli import main
    from napari_histosge.store import write_sdata

    store = tmp_path / "syn.zarr"
    write_sdata(synthetic.sdata, store)
    argv = ["run", str(store), "--out", str(tmp_path / "o.zarr"), "--mode", "improved"]
    assert main([*argv, "--cells", "--quiet"]) == 2


@pytest.mark.slow
@pytest.mark.her2st
def test_run_cells_on_a_legacy_st_section(tmp_path, her2st_c2_copy):
    from napari_histosge.cli import main

    # A copy: the run caches its features and nuclei in its input store, and the session's C2
    # store is shared read only with the other tests (and the other pytest-xdist worker).
    out = tmp_path / "c2_cells.zarr"
    argv = ["run", str(her2st_c2_copy), "--out", str(out), "--cells", "--seed", "0"]
    assert main([*argv, "--n-top-genes", "50", "--quiet"]) == 0
    _check_contract(out)


def test_cell_features_option_of_the_superres_step(synthetic):
    from napari_histosge.base.progress import run_generator
    from napari_histosge.cells.features import cell_feature_names
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import SuperResOptions, iter_superres

    slide = Slide.open(synthetic.sdata)
    plain = run_generator(iter_superres(slide, genes=synthetic.genes[:3]))
    opts = SuperResOptions(cell_features=True)
    res = run_generator(iter_superres(slide, genes=synthetic.genes[:3], options=opts))
    info = res.meta["features"]["cells"]
    assert info["n_nuclei"] > 20
    assert res.meta["features"]["dim"] == plain.meta["features"]["dim"] + len(cell_feature_names())
    assert np.isfinite(res.model.predict(synthetic.genes[:3])).all()


def test_stardist_needs_a_model_folder(tmp_path):
    from napari_histosge.cells._deep import stardist_segmenter

    with pytest.raises(ValueError, match="StarDist model folder"):
        NucleiOptions(method="stardist")
    with pytest.raises(ValueError, match="config.json"):
        stardist_segmenter(tmp_path)


def test_stardist_missing_package_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util
    import sys

    from napari_histosge.cells._deep import stardist_segmenter

    if importlib.util.find_spec("stardist") is not None:
        pytest.skip("stardist is installed here")
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "csbdeep", None)
    monkeypatch.setitem(sys.modules, "csbdeep.utils", None)
    with pytest.raises(ImportError, match="pip install stardist"):
        stardist_segmenter(tmp_path)


def test_a_deep_segmenter_runs_in_the_tiles(synthetic, monkeypatch):
    """The tiling, stitching and sizes around a deep segmenter (a stand-in for StarDist)."""
    from napari_histosge.cells import _deep
    from napari_histosge.cells._classical import nuclear_signal, segment_window

    calls = []

    def fake(weights, model_um_per_px=0.25):
        def segment(rgb, um):
            calls.append(rgb.shape)
            sig, _ = nuclear_signal(rgb, um, 0.5, 15.0)
            return segment_window(sig, 0.03, min_diameter_px=4 / um, max_diameter_px=15 / um)

        return segment

    monkeypatch.setattr(_deep, "stardist_segmenter", fake)
    opts = NucleiOptions(method="stardist", weights="model", tile_px=256)
    nuc = segment_nuclei(synthetic.sdata.images["he"], 1.0, options=opts)
    assert len(calls) == nuc.meta["n_tiles"] == 9
    assert nuc.meta["threshold_from"] == "none (stardist)"
    score = match_nuclei(synthetic.nuclei, _labels(nuc))
    assert score["f1"] >= 0.9


def test_stardist_model_from_a_local_folder(tmp_path, synthetic):
    pytest.importorskip("stardist", reason="the optional package stardist is not installed")
    from stardist.models import Config2D, StarDist2D

    StarDist2D(Config2D(n_rays=8, n_channel_in=3, grid=(2, 2)), name="tiny", basedir=str(tmp_path))
    opts = NucleiOptions(method="stardist", weights=str(tmp_path / "tiny"), tile_px=512)
    nuc = segment_nuclei(synthetic.sdata.images["he"], 1.0, options=opts)
    lab = _labels(nuc)
    assert lab.shape == synthetic.nuclei.shape
    assert len(np.unique(lab)) - 1 == nuc.n


def test_tiles_in_worker_processes_give_the_same_nuclei(synthetic):
    image = synthetic.sdata.images["he"]
    one = segment_nuclei(image, 1.0, options=NucleiOptions(tile_px=256))
    two = segment_nuclei(image, 1.0, options=NucleiOptions(tile_px=256, workers=2))
    assert two.n == one.n
    assert np.array_equal(_labels(one), _labels(two))


def _stored_slide(path: Path):
    import spatialdata as sd

    from napari_histosge.workflows.pipeline import Slide

    return Slide.open(sd.read_zarr(path))


def _no_segmentation(monkeypatch) -> None:
    from napari_histosge.cells import cache

    def refuse(*_a, **_k):
        raise AssertionError("segmented again instead of reading the store's cache")

    monkeypatch.setattr(cache, "iter_segment_nuclei", refuse)


def test_nuclei_are_cached_in_the_store(tmp_path, synthetic, monkeypatch):
    import dask.array as da

    from napari_histosge.base.progress import run_generator
    from napari_histosge.cells.cache import MAX_ENTRIES, cache_names
    from napari_histosge.cells.table import grid_nuclei_key, iter_grid_nuclei
    from napari_histosge.store import write_sdata
    from napari_histosge.workflows.superres import slide_grid

    store = tmp_path / "syn.zarr"
    write_sdata(synthetic.sdata, store)
    slide = _stored_slide(store)
    grid = slide_grid(slide).grid
    first = run_generator(iter_grid_nuclei(slide, grid))
    assert first.meta["from_cache"] is False
    labels_name, table_name = cache_names(grid_nuclei_key(slide, grid, NucleiOptions())[0])
    assert (store / "labels" / labels_name).is_dir()
    assert (store / "tables" / table_name).is_dir()
    labels, table = np.asarray(first.labels.compute()), first.table.copy()
    first.close()

    again = _stored_slide(store)  # a later run: the store read afresh
    with monkeypatch.context() as m:
        _no_segmentation(m)
        hit = run_generator(iter_grid_nuclei(again, grid))
    assert hit.meta["from_cache"] is True
    assert (hit.factor, hit.offset_px, hit.um_per_px) == (
        first.factor,
        first.offset_px,
        first.um_per_px,
    )
    assert np.array_equal(np.asarray(hit.labels.compute()), labels)
    assert np.allclose(hit.table.to_numpy(), table.to_numpy())
    assert list(hit.table.index) == list(table.index)

    # another parameter, another grid or another image: segmented again, and kept beside
    other = run_generator(iter_grid_nuclei(again, grid, NucleiOptions(sigma_um=1.0)))
    assert other.meta["from_cache"] is False
    coarser = slide_grid(again, 2 * slide_grid(again).resolution_um).grid
    assert run_generator(iter_grid_nuclei(again, coarser)).meta["from_cache"] is False
    assert run_generator(iter_grid_nuclei(again, coarser)).meta["from_cache"] is True
    assert MAX_ENTRIES == 3
    with monkeypatch.context() as m:  # the first grid's entry is still there
        _no_segmentation(m)
        assert run_generator(iter_grid_nuclei(_stored_slide(store), grid)).meta["from_cache"]
    # a fourth segmentation replaces the one unused longest (sigma 1.0), not the others
    run_generator(iter_grid_nuclei(again, grid, NucleiOptions(sigma_um=1.5))).close()
    cached = sorted(p.name for p in (store / "labels").iterdir() if "nuclei" in p.name)
    assert len(cached) == MAX_ENTRIES
    assert labels_name in cached
    gone = cache_names(grid_nuclei_key(again, grid, NucleiOptions(sigma_um=1.0))[0])
    assert gone[0] not in cached
    assert not (store / "tables" / gone[1]).exists()
    image = again.sdata.images[again.keys.image_key]
    brighter = image.copy(data=da.minimum(image.data.astype(np.int16) + 1, 255).astype(np.uint8))
    again.sdata.images[again.keys.image_key] = brighter
    assert run_generator(iter_grid_nuclei(again, coarser)).meta["from_cache"] is False
    # no cache asked: neither read nor written
    again.sdata.images[again.keys.image_key] = image
    nuc = run_generator(iter_grid_nuclei(again, grid, cache=False))
    assert nuc.meta["from_cache"] is False
    assert nuc.temporary
    nuc.close()


def test_workers_do_not_change_the_nuclei_key(synthetic):
    from napari_histosge.cells.table import grid_nuclei_key
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import slide_grid

    slide = Slide.open(synthetic.sdata)
    grid = slide_grid(slide).grid
    key, prov = grid_nuclei_key(slide, grid, NucleiOptions())
    assert grid_nuclei_key(slide, grid, NucleiOptions(workers=2))[0] == key
    assert grid_nuclei_key(slide, grid, NucleiOptions(max_diameter_um=12.0))[0] != key
    assert prov["options"]["method"] == "classical"
    assert "workers" not in prov["options"]


def test_a_half_written_nuclei_cache_is_a_miss(tmp_path, synthetic):
    from napari_histosge.base.progress import run_generator
    from napari_histosge.cells.cache import cache_names
    from napari_histosge.cells.table import grid_nuclei_key, iter_grid_nuclei
    from napari_histosge.store import write_element_atomic, write_sdata
    from napari_histosge.workflows.superres import slide_grid

    store = tmp_path / "syn.zarr"
    write_sdata(synthetic.sdata, store)
    slide = _stored_slide(store)
    grid = slide_grid(slide).grid
    run_generator(iter_grid_nuclei(slide, grid)).close()
    _, table_name = cache_names(grid_nuclei_key(slide, grid, NucleiOptions())[0])
    # a write interrupted after the labels: their table is gone
    write_element_atomic(store, "tables", table_name, None)
    again = _stored_slide(store)
    nuc = run_generator(iter_grid_nuclei(again, grid))
    assert nuc.meta["from_cache"] is False
    assert _stored_slide(store).sdata.tables[table_name].n_obs == nuc.n


def test_a_store_that_cannot_be_written_segments_with_a_warning(tmp_path, synthetic, monkeypatch):
    from napari_histosge import store as store_module
    from napari_histosge.base.progress import run_generator
    from napari_histosge.cells.table import iter_grid_nuclei
    from napari_histosge.store import write_sdata
    from napari_histosge.workflows.superres import slide_grid

    store = tmp_path / "syn.zarr"
    write_sdata(synthetic.sdata, store)
    slide = _stored_slide(store)
    grid = slide_grid(slide).grid

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store_module, "write_element_atomic", refuse)
    with pytest.warns(UserWarning, match="nuclei not cached .*Permission denied"):
        nuc = run_generator(iter_grid_nuclei(slide, grid))
    assert nuc.n > 20
    assert nuc.meta["from_cache"] is False
    assert np.asarray(nuc.labels.compute()).max() == nuc.n
    nuc.close()
    assert not (store / "labels").exists()


@pytest.mark.slow
def test_a_second_run_cells_reads_the_nuclei_from_the_store(
    tmp_path, synthetic, monkeypatch, capsys
):
    import spatialdata as sd

    from napari_histosge.cli import main
    from napari_histosge.store import write_sdata

    store = tmp_path / "syn.zarr"
    write_sdata(synthetic.sdata, store)
    argv = ["run", str(store), "--cells", "--seed", "0", "--n-top-genes", "4"]
    assert main([*argv, "--out", str(tmp_path / "a.zarr")]) == 0
    assert "nuclei segmented" in capsys.readouterr().out
    with monkeypatch.context() as m:
        _no_segmentation(m)
        assert main([*argv, "--out", str(tmp_path / "b.zarr")]) == 0
    assert "nuclei from the store's cache" in capsys.readouterr().out
    _check_contract(tmp_path / "b.zarr")
    a, b = (sd.read_zarr(tmp_path / f"{n}.zarr") for n in "ab")
    for name in ("histosge_nuclei",):
        la, lb = (np.asarray(s.labels[name]["scale0"]["image"].data) for s in (a, b))
        assert np.array_equal(la, lb)
    assert np.allclose(
        np.asarray(a.tables["histosge_cells"].X), np.asarray(b.tables["histosge_cells"].X)
    )
    # --no-cache segments again
    assert main([*argv, "--out", str(tmp_path / "c.zarr"), "--no-cache"]) == 0
    assert "nuclei segmented" in capsys.readouterr().out


def test_cell_features_option_of_the_attention_models_spot_features(synthetic):
    from types import SimpleNamespace

    from napari_histosge.base.progress import run_generator
    from napari_histosge.cells.features import cell_feature_names, spot_cell_features
    from napari_histosge.models.checkpoints import check_features
    from napari_histosge.workflows.batch_predict import prediction_options
    from napari_histosge.workflows.pipeline import ExtractOptions, Slide, iter_extract

    slide = Slide.open(synthetic.sdata)
    plain = run_generator(iter_extract(slide, options=ExtractOptions(cache=False)))
    opts = ExtractOptions(cache=False, cell_features=True)
    feats = run_generator(iter_extract(slide, options=opts))
    d = plain.spots.features.shape[1]
    names = feats.spots.meta["cells"]["names"]
    assert len(names) == len(cell_feature_names()) == 20
    for with_cells, without in ((feats.spots, plain.spots), (feats.positions, plain.positions)):
        assert with_cells.features.shape == (len(without.features), d + len(names))
        assert with_cells.meta["dim"] == d + len(names)
        np.testing.assert_array_equal(with_cells.features[:, :d], without.features)
    # the appended columns are the nuclei statistics in each spot and twice its width
    assert feats.spots.meta["cells"]["n_nuclei"] > 20
    g = slide.geometry
    spot_density = feats.spots.features[:, d]  # nuclei per 1,000 µm² of the spot's disk
    assert spot_density.max() > 0
    nuc = segment_nuclei(synthetic.sdata.images["he"], g.um_per_px)
    direct = spot_cell_features(nuc.table, g.centers_px, g.um_per_px, g.diameter_px * g.um_per_px)
    nuc.close()
    assert np.corrcoef(direct[:, 0], spot_density)[0, 1] > 0.95
    # a model trained with them predicts with them, and refuses features without them
    model = SimpleNamespace(feature_meta=feats.spots.meta)
    assert prediction_options(model).cell_features is True
    assert prediction_options(SimpleNamespace(feature_meta=plain.spots.meta)).cell_features is False
    with pytest.raises(ValueError, match="feature width"):
        check_features(model, plain.spots.meta)


def test_cell_features_of_a_slide_embedded_in_blocks_match_one_block(synthetic):
    from napari_histosge.base.progress import run_generator
    from napari_histosge.workflows.pipeline import ExtractOptions, Slide
    from napari_histosge.workflows.whole_slide import iter_extract_blocked

    slide = Slide.open(synthetic.sdata)
    opts = ExtractOptions(cache=False, cell_features=True)
    side_um = float(max(synthetic.sdata.images["he"].shape[1:])) * slide.geometry.um_per_px
    one = run_generator(iter_extract_blocked(slide, options=opts, block_um=2 * side_um))
    blocked = run_generator(iter_extract_blocked(slide, options=opts, block_um=side_um / 3))
    assert blocked.spots.meta["blocks"]["count"] > 3
    assert "blocks" not in one.spots.meta
    assert blocked.spots.meta["cells"]["n_nuclei"] == one.spots.meta["cells"]["n_nuclei"] > 20
    for a, b in ((blocked.spots, one.spots), (blocked.positions, one.positions)):
        assert a.features.shape == b.features.shape
        n_cells = len(a.meta["cells"]["names"])
        np.testing.assert_allclose(a.features[:, -n_cells:], b.features[:, -n_cells:])
        np.testing.assert_allclose(a.features[:, :-n_cells], b.features[:, :-n_cells], atol=1e-5)


@pytest.mark.slow
def test_cli_trains_and_predicts_with_cell_features(tmp_path, synthetic):
    from napari_histosge.cli import main
    from napari_histosge.models.checkpoints import load_checkpoint
    from napari_histosge.store import write_sdata

    store = tmp_path / "syn.zarr"
    write_sdata(synthetic.sdata, store)
    ckpt = tmp_path / "model"
    argv = ["run", str(store), "--out", str(tmp_path / "o.zarr"), "--mode", "improved"]
    assert main([*argv, "--epochs", "3", "--cell-features", "--checkpoint-out", str(ckpt)]) == 0
    model = load_checkpoint(ckpt)
    assert model.feature_meta["cells"]["n_nuclei"] > 20
    out = tmp_path / "p.zarr"
    assert main(["predict", str(store), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert (out / "tables" / "histosge_predictions").is_dir()
