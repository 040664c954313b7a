"""`histosge run` on units with (Multi)Polygon footprints writes super-resolved maps."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import spatialdata as sd

from napari_histosge.cli import main
from napari_histosge.store import EXPRESSION_KEY, PREDICTIONS_KEY, write_sdata


def _pooled_store(sample_sdata, path, *, with_meta: bool):
    """The bundled sample with 2x2 blocks of spots pooled into MultiPolygon pseudo-spots."""
    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    import scipy.sparse as sp
    from shapely.geometry import MultiPolygon, Point
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import get_transformation

    from napari_histosge.evaluate import pool_pseudospots
    from napari_histosge.io import resolve_keys

    keys = resolve_keys(sample_sdata)
    circles = sample_sdata.shapes[keys.spots_key]
    table = sample_sdata.tables[keys.table_key]
    sel = circles.loc[table.obs["instance_id"].to_numpy()]
    xy = np.c_[sel.geometry.x.to_numpy(), sel.geometry.y.to_numpy()]
    radius = float(sel["radius"].iloc[0])
    counts = table.layers.get("counts", table.X)
    _, pooled, labels = pool_pseudospots(xy, counts, 2)
    geoms = [
        MultiPolygon([Point(*xy[i]).buffer(radius, 32) for i in np.flatnonzero(labels == u)])
        for u in range(labels.max() + 1)
    ]
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=geoms, index=pd.RangeIndex(len(geoms), name="instance_id")),
        transformations=dict(get_transformation(circles, get_all=True)),
    )
    obs = pd.DataFrame(
        {"region": pd.Categorical(["units"] * len(geoms)), "instance_id": np.arange(len(geoms))},
        index=pd.Index([f"u{i}" for i in range(len(geoms))]),
    )
    adata = ad.AnnData(
        X=sp.csr_matrix(np.rint(np.asarray(pooled.todense())).astype(np.int32)),
        obs=obs,
        var=pd.DataFrame(index=table.var_names.copy()),
    )
    if with_meta:
        adata.uns["histosge_slide"] = dict(table.uns["histosge_slide"])
    out = sd.SpatialData(
        images={keys.image_key: sample_sdata.images[keys.image_key]},
        shapes={"units": shapes},
        tables={
            "table": TableModel.parse(
                adata, region="units", region_key="region", instance_key="instance_id"
            )
        },
    )
    write_sdata(out, path)
    return path, keys.image_key, 2 * radius


@pytest.mark.parametrize("with_meta", [False, True])
def test_run_on_multipolygon_units_writes_superpixel_maps(tmp_path, sample_sdata, with_meta):
    store, image_key, spot_diam = _pooled_store(
        sample_sdata, tmp_path / "pooled.zarr", with_meta=with_meta
    )
    genes = ["Gfap", "Nrgn", "Camk2n1"]
    gene_file = tmp_path / "genes.txt"
    gene_file.write_text("\n".join(genes) + "\n")
    out = tmp_path / "out.zarr"
    args = ["run", str(store), "--out", str(out), "--genes", str(gene_file), "--seed", "0"]
    code = main([*args, "--quiet"])
    assert code == 0
    back = sd.read_zarr(out)
    img = back.images[EXPRESSION_KEY]
    levels = list(img.keys()) if hasattr(img, "keys") else [None]
    scale0 = img["scale0"]["image"] if levels[0] is not None else img
    assert list(scale0.coords["c"].values) == genes
    # Default resolution: 8 µm, finer than a quarter of the smallest unit.
    from spatialdata.transformations import get_transformation

    tf = get_transformation(scale0, to_coordinate_system="global")
    he_tf = get_transformation(back.images[image_key], to_coordinate_system="global")
    px = tf.to_affine_matrix(("x", "y"), ("x", "y"))[0, 0]
    he = he_tf.to_affine_matrix(("x", "y"), ("x", "y"))[0, 0]
    map_px = px / he  # map pixel in H&E pixels
    um_per_px = 0.727  # the sample's resolution (see the geometry docs)
    assert map_px * um_per_px == pytest.approx(8.0, rel=0.05)
    assert map_px <= spot_diam / 4
    data = np.asarray(scale0.data)
    assert np.isfinite(data).any()
    assert np.nanstd(data[0]) > 0
    table = back.tables[PREDICTIONS_KEY]
    assert list(table.var_names) == genes
    assert table.n_obs == back.tables["table"].n_obs
    # Raw counts: the units' depths fit the count-density map of the measurement model.
    import json

    meta = json.loads(table.uns["histosge"]["meta_json"])
    assert meta["model"]["measurement"] == "poisson"
    assert np.isfinite(meta["model"]["depth_r2"])

    # --resolution-um overrides the default.
    out2 = tmp_path / "out2.zarr"
    args2 = ["run", str(store), "--out", str(out2), "--genes", str(gene_file), "--quiet"]
    assert main([*args2, "--resolution-um", "16"]) == 0
    img2 = sd.read_zarr(out2).images[EXPRESSION_KEY]
    s0 = img2["scale0"]["image"] if hasattr(img2, "keys") else img2
    assert s0.sizes["x"] < scale0.sizes["x"] * 0.6


def test_superres_refuses_a_checkpoint(tmp_path, sample_zarr, capsys):
    store = tmp_path / "s.zarr"
    shutil.copytree(sample_zarr, store)  # the bundled sample, as write_sdata writes it
    code = main(["run", str(store), "--out", str(tmp_path / "o.zarr"), "--mode", "superres",
                 "--checkpoint-out", str(tmp_path / "ck"), "--quiet"])  # fmt: skip
    assert code != 0
    assert "not saved" in capsys.readouterr().err


def test_superres_step_with_vit_tokens(sample_sdata):
    from napari_histosge.base.progress import run_generator
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import SuperResOptions, iter_superres, superres_maps

    slide = Slide.open(sample_sdata)
    opts = SuperResOptions(
        resolution_um=16.0, encoder="timm:test_vit", weights="random", device="cpu"
    )
    res = run_generator(iter_superres(slide, genes=["Gfap", "Nrgn"], options=opts))
    assert res.meta["features"]["encoder"].startswith("timm:test_vit")
    maps = superres_maps(res)
    assert maps.data.shape[0] == 2
    assert maps.pitch_px * slide.geometry.um_per_px == pytest.approx(16.0)
    inside = np.asarray(res.model.membership @ res.model.predict())
    truth = np.asarray(slide.targets(genes=["Gfap", "Nrgn"]).values)
    np.testing.assert_allclose(inside, truth, atol=1e-4)


def test_superres_maps_lazy_equal_eager_and_export(tmp_path, sample_sdata):
    from napari_histosge.base.progress import run_generator
    from napari_histosge.workflows.pipeline import Slide, export_slide
    from napari_histosge.workflows.superres import (
        SuperResOptions,
        iter_superres,
        superres_maps,
        superres_predictions,
    )

    slide = Slide.open(sample_sdata)
    opts = SuperResOptions(resolution_um=4.0)
    res = run_generator(iter_superres(slide, genes=["Gfap", "Nrgn", "Camk2n1"], options=opts))
    eager = superres_maps(res, chunk=2)
    lazy = superres_maps(res, chunk=2, max_bytes=0)
    assert hasattr(lazy.data, "dask")
    assert not hasattr(eager.data, "dask")
    np.testing.assert_array_equal(np.asarray(lazy.data), eager.data)
    assert lazy.scale_factors  # 4 µm over the crop: more than 256 px on the long side
    out = export_slide(
        slide, predictions=superres_predictions(slide, res), maps=lazy, out=tmp_path / "o.zarr"
    )
    img = sd.read_zarr(out).images[EXPRESSION_KEY]
    assert len(img.keys()) == len(lazy.scale_factors) + 1
    np.testing.assert_array_equal(np.asarray(img["scale0"]["image"].data), eager.data)


def test_improved_run_and_predict_render_smooth_maps_at_resolution(tmp_path, sample_zarr):
    store = tmp_path / "s.zarr"
    shutil.copytree(sample_zarr, store)  # the bundled sample, as write_sdata writes it
    ckpt = tmp_path / "model"
    out = tmp_path / "run.zarr"
    base = ["--epochs", "3", "--n-top-genes", "20", "--quiet", "--resolution-um", "20"]
    assert main(["run", str(store), "--out", str(out), "--checkpoint-out", str(ckpt), *base]) == 0
    pred = tmp_path / "pred.zarr"
    args = ["predict", str(store), "--checkpoint", str(ckpt), "--out", str(pred)]
    assert main([*args, "--resolution-um", "10", "--quiet"]) == 0
    for path, um in ((out, 20.0), (pred, 10.0)):
        back = sd.read_zarr(path)
        img = back.images[EXPRESSION_KEY]
        from spatialdata.transformations import get_transformation

        tf = get_transformation(img, to_coordinate_system="global")
        px = tf.to_affine_matrix(("x", "y"), ("x", "y"))[0, 0]
        assert px * 0.727 == pytest.approx(um, rel=0.02)
        plane = np.asarray(img.data[0])
        vals = plane[np.isfinite(plane)]
        # Smooth interpolation: many distinct values, not one per position.
        assert len(np.unique(vals)) > 0.5 * vals.size


def test_evaluate_refuses_superres_mode(tmp_path, sample_zarr, capsys):
    store = tmp_path / "s.zarr"
    shutil.copytree(sample_zarr, store)  # the bundled sample, as write_sdata writes it
    ids = tmp_path / "ids.txt"
    ids.write_text("x\n")
    args = ["evaluate", str(store), "--holdout-spots", str(ids), "--mode", "superres"]
    out = ["--predictions-out", str(tmp_path / "p.csv"), "--metrics-out", str(tmp_path / "m.json")]
    assert main([*args, *out, "--quiet"]) != 0
    assert "--superres-pool" in capsys.readouterr().err


def test_superpixel_features_are_cached_in_the_store(tmp_path, sample_zarr):
    from napari_histosge.base.progress import run_generator
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import SuperResOptions, iter_superres

    store = tmp_path / "s.zarr"
    shutil.copytree(sample_zarr, store)  # the bundled sample, as write_sdata writes it
    opts = SuperResOptions(resolution_um=12.0)
    genes = ["Gfap", "Nrgn"]
    first = run_generator(iter_superres(Slide.open(store), genes=genes, options=opts))
    assert first.meta["features"]["from_cache"] is False
    back = sd.read_zarr(store)
    assert "histosge_features_superpixels_12um" in back.tables
    second = run_generator(iter_superres(Slide.open(back), genes=genes, options=opts))
    assert second.meta["features"]["from_cache"] is True
    assert second.meta["features"]["encoder_id"] == "histology@v2"
    np.testing.assert_array_equal(first.model.predict(), second.model.predict())


def test_vit_superpixel_features_of_another_tiling_are_recomputed(tmp_path, sample_zarr):
    import json

    from napari_histosge.base.progress import run_generator
    from napari_histosge.features.cache import write_cache_table
    from napari_histosge.features.vit_tiles import TILES_VERSION
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import SuperResOptions, iter_superres

    store = tmp_path / "s.zarr"
    shutil.copytree(sample_zarr, store)  # the bundled sample, as write_sdata writes it
    opts = SuperResOptions(
        resolution_um=24.0, encoder="timm:test_vit", weights="random", device="cpu"
    )
    name = "histosge_features_superpixels_24um"

    def features() -> dict:
        slide = Slide.open(sd.read_zarr(store))
        return run_generator(iter_superres(slide, genes=["Gfap", "Nrgn"], options=opts)).meta[
            "features"
        ]

    first = features()
    assert first["from_cache"] is False
    assert (first["pooling"], first["tiles_version"]) == ("tiles", TILES_VERSION)
    assert features()["from_cache"] is True  # same settings: reused
    # An entry cached before the tile lattice was image-anchored records no tiling.
    tiling = ("pooling", "tiles_version", "token_um", "tile_tokens", "tile_context_tokens")
    table = sd.read_zarr(store).tables[name]
    entries = dict(table.uns["histosge_features"])
    (key,) = entries
    entries[key] = json.dumps(
        {k: v for k, v in json.loads(entries[key]).items() if k not in tiling}
    )
    table.uns["histosge_features"] = entries
    assert write_cache_table(store, name, table)
    again = features()
    assert again["from_cache"] is False
    assert again["tiles_version"] == TILES_VERSION
    assert features()["from_cache"] is True  # the recomputed entry replaced the old one
