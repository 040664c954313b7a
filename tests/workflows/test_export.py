from __future__ import annotations

import numpy as np
import pytest
import spatialdata as sd
from spatialdata.models import Image2DModel
from spatialdata.transformations import Scale, get_transformation
from store_helpers import spots_sdata

from napari_histosge.maps import rasterize
from napari_histosge.predict import Predictions
from napari_histosge.store import EXPRESSION_KEY, POSITIONS_KEY, PREDICTIONS_KEY, write_sdata
from napari_histosge.workflows.export import write_predictions


def _sdata(scale: float = 1.0) -> sd.SpatialData:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 120, 160), dtype=np.uint8)
    tf = {"global": Scale([scale, scale], axes=("x", "y"))}
    xs, ys = np.meshgrid(np.arange(20, 160, 30), np.arange(20, 120, 30))
    xy = np.stack([xs.ravel(), ys.ravel()], 1).astype(float) * scale
    image = Image2DModel.parse(img, dims=("c", "y", "x"), transformations=tf)
    return spots_sdata(image, xy, 6.0 * scale, rng, 4, instance_key="instance_id")


def _predictions(n_genes: int = 2) -> Predictions:
    xs, ys = np.meshgrid(np.arange(20, 160, 15), np.arange(20, 120, 15))
    xy = np.stack([xs.ravel(), ys.ravel()], 1).astype(float)
    vals = np.arange(len(xy) * n_genes, dtype=np.float32).reshape(len(xy), n_genes)
    kind = np.array(["spot"] * 10 + ["4x"] * (len(xy) - 10))
    return Predictions(
        [f"G{i}" for i in range(n_genes)],
        xy,
        vals,
        kind,
        np.array([f"p{i}" for i in range(len(xy))]),
        12.0,
        {"epochs": 3},
    )


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_write_and_reopen_aligned(tmp_path, scale):
    sdata = _sdata(scale)
    preds = _predictions()
    maps = rasterize(preds, pitch_px=5.0)
    out = write_predictions(
        sdata, tmp_path / "out.zarr", image_key="he", predictions=preds, maps=maps
    )
    back = sd.read_zarr(out)
    for key in ("he", "spots", "table", EXPRESSION_KEY, POSITIONS_KEY, PREDICTIONS_KEY):
        assert key in back
    img = back.images[EXPRESSION_KEY]
    assert list(img.coords["c"].values) == preds.genes
    assert img.dtype == np.float32
    table = back.tables[PREDICTIONS_KEY]
    assert list(table.var_names) == preds.genes
    np.testing.assert_allclose(table.X, preds.values)
    assert "meta_json" in table.uns["histosge"]
    # Each position lies, through the stored transformations, inside its map pixel.
    t_map = get_transformation(img, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    t_he = get_transformation(back.images["he"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    rc = maps.pixel_of(preds.positions_px)
    centres = np.c_[rc[:, 1], rc[:, 0], np.ones(len(rc))] @ t_map.T
    expected = np.c_[preds.positions_px, np.ones(len(rc))] @ t_he.T
    assert np.abs(centres[:, :2] - expected[:, :2]).max() <= maps.pitch_px * scale / 2 + 1e-9
    values = img.values[0][rc[:, 0], rc[:, 1]]
    np.testing.assert_array_equal(values, preds.values[:, 0])
    # Positions as circles in the same frame as the image.
    circles = back.shapes[POSITIONS_KEY]
    t_pos = get_transformation(circles, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(t_pos, t_he)
    # Input untouched.
    np.testing.assert_array_equal(back.images["he"].values, sdata.images["he"].values)


def test_refuses_existing_and_earlier_outputs(tmp_path):
    sdata = _sdata()
    preds = _predictions()
    target = tmp_path / "exists.zarr"
    target.mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_predictions(sdata, target, image_key="he", predictions=preds)
    store = tmp_path / "in.zarr"
    write_sdata(sdata, store)
    backed = sd.read_zarr(store)
    write_predictions(backed, store, image_key="he", predictions=preds)  # into the input store
    again = sd.read_zarr(store)
    assert PREDICTIONS_KEY in again
    assert "he" in again
    with pytest.raises(FileExistsError, match="earlier outputs"):
        write_predictions(again, store, image_key="he", predictions=preds)
    write_predictions(again, store, image_key="he", predictions=_predictions(3), overwrite=True)
    assert sd.read_zarr(store).tables[PREDICTIONS_KEY].n_vars == 3


def test_failure_mid_write_leaves_old_store(tmp_path, monkeypatch):
    sdata = _sdata()
    store = tmp_path / "in.zarr"
    write_sdata(sdata, store)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    original = sd.SpatialData.write

    def broken(self, file_path, **kwargs):
        original(self, file_path, **kwargs)  # writes most of the store, then fails
        raise OSError("disk full")

    monkeypatch.setattr(sd.SpatialData, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        write_predictions(sd.read_zarr(store), store, image_key="he", predictions=_predictions())
    monkeypatch.undo()
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["in.zarr"]
    assert PREDICTIONS_KEY not in sd.read_zarr(store)


def test_a_twin_image_is_written_with_its_twins_metadata_and_a_faster_codec(tmp_path):
    import json

    from napari_histosge.store import write_element_atomic

    rng = np.random.default_rng(0)
    tf = {"global": Scale([2.0, 2.0], axes=("x", "y"))}

    def image(shape):
        data = rng.random(shape).astype(np.float32)
        data[:, :3] = np.nan
        return Image2DModel.parse(
            data, dims=("c", "y", "x"), c_coords=["A", "B"], transformations=tf,
            scale_factors=[2], chunks=(1, 64, 64),
        )  # fmt: skip

    maps, sd_maps = image((2, 64, 80)), image((2, 64, 80))
    out = tmp_path / "s.zarr"
    twins = {"histosge_uncertainty": "histosge_expression"}
    both = sd.SpatialData(images={"histosge_expression": maps, "histosge_uncertainty": sd_maps})
    write_sdata(both, out, twins=twins)
    back = sd.read_zarr(out)
    written = back.images["histosge_uncertainty"]
    for scale in ("scale0", "scale1"):
        np.testing.assert_array_equal(
            written[scale]["image"].values, sd_maps[scale]["image"].values
        )
    assert list(written["scale0"]["image"].c.values) == ["A", "B"]
    axes = {"input_axes": ("x", "y"), "output_axes": ("x", "y")}
    for element in (written, back.images["histosge_expression"]):
        got = get_transformation(element, get_all=True)
        assert list(got) == ["global"]
        np.testing.assert_array_equal(got["global"].to_affine_matrix(**axes), np.diag([2, 2, 1]))
    codecs = json.loads((out / "images/histosge_uncertainty/s1/zarr.json").read_text())["codecs"]
    assert codecs[-1]["configuration"]["cname"] == "lz4"
    # In place: staged beside the twin already in the store, listed in its metadata.
    write_element_atomic(out, "images", "histosge_uncertainty", image((2, 64, 80)))
    assert (
        "images/histosge_uncertainty/s1"
        in json.loads((out / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    )
    # Not the twin's grid: refused, the store unchanged.
    before = sorted(p.name for p in (out / "images").iterdir())
    with pytest.raises(ValueError, match="on the grid and channels of `histosge_expression`"):
        write_element_atomic(out, "images", "histosge_uncertainty", image((2, 64, 64)))
    assert sorted(p.name for p in (out / "images").iterdir()) == before
    assert sd.read_zarr(out).images["histosge_uncertainty"]["scale0"]["image"].shape == (2, 64, 80)
